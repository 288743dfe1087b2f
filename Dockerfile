# One image for the node agent and the operator. The install steps are scripts/setup's, the
# same the README and CI use, so CI exercises them even though no container engine runs there.
# Build: docker build -t probeset .   (tests/cluster/build-images builds it with podman: docs/cluster-tier.md)
# The agent runs privileged on the node; it needs from the host (mounted by the DaemonSet):
#   /lib/modules and /usr/src   kernel headers for BCC (linux-headers-$(uname -r) installed on the node;
#                               without them every probe reports "kernel headers for <release> not
#                               found at ...: install linux-headers-<release> ..." and the agent keeps
#                               serving metrics and status, instead of crash-looping)
#   /sys/kernel/tracing          tracefs;  /sys/fs/cgroup  for attribution;  /proc  with hostPID
FROM debian:bookworm-slim
# A CA bundle pip should trust, for builders that reach PyPI through a TLS-inspecting proxy: the
# builder mounts the file and names it, e.g. `podman build -v /etc/ssl/certs/ca-certificates.crt:
# /run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt` (tests/cluster/build-images does).
# Used by pip during the build only (an ARG is not in the image's environment; the file is not in
# any layer). Empty: pip's own trust store.
ARG PIP_CERT
WORKDIR /opt/probeset
# Every source root pyproject.toml names (api, agent, operator, cli), and the set-up script.
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY api/ api/
COPY agent/ agent/
COPY operator/ operator/
COPY cli/ cli/
# pip and setuptools are left out of the image once the package is in (23 MB; nothing runs them).
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
 && PIP_NO_CACHE_DIR=1 scripts/setup --image \
 && groupadd --system --gid 65532 probeset \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin probeset \
 && .venv/bin/probeset --help >/dev/null \
 && .venv/bin/python -m pip uninstall -q -y pip setuptools
ENV PATH=/opt/probeset/.venv/bin:$PATH
# Non-root by default (the operator; the chart's runAsUser/runAsGroup 65532); the agent DaemonSet
# sets runAsUser: 0 and privileged.
USER 65532:65532
ENTRYPOINT ["probeset"]
# The operator's one agent DaemonSet runs `probeset agent ...` (every ProbeSet that selects the node;
# no environment names a set); the operator's Deployment runs `probeset operator`.
CMD ["agent"]
