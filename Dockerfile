# One image for the node agent and the operator. The install steps are scripts/setup's, the
# same the README and CI use, so CI exercises them even though no container engine runs there.
# Build: docker build -t probeset .
# The agent runs privileged on the node; it needs from the host (mounted by the DaemonSet):
#   /lib/modules and /usr/src   kernel headers for BCC (linux-headers-$(uname -r) installed on the node;
#                               without them every probe reports "kernel headers for <release> not
#                               found at ...: install linux-headers-<release> ..." and the agent keeps
#                               serving metrics and status, instead of crash-looping)
#   /sys/kernel/tracing          tracefs;  /sys/fs/cgroup  for attribution;  /proc  with hostPID
FROM debian:bookworm-slim
WORKDIR /opt/probeset
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY agent/ agent/
COPY operator/ operator/
RUN scripts/setup --image \
 && useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin probeset
ENV PATH=/opt/probeset/.venv/bin:$PATH
# Non-root by default (the operator); the agent DaemonSet sets runAsUser: 0 and privileged.
USER 65532
ENTRYPOINT ["probeset"]
# The operator's one agent DaemonSet runs `probeset agent ...` (every ProbeSet that selects the node;
# no environment names a set); the operator's Deployment runs `probeset operator`.
CMD ["agent"]
