# One image for the node agent and the operator, in two stages: `build` installs the package with
# scripts/setup's steps (the same the README and CI use, so CI exercises them even though no
# container engine runs there); the final stage holds only what the agent and the operator run:
# Python, BCC's Python bindings and libraries (python3-bpfcc, libbpfcc: LLVM and clang, which
# compile the probes on the node) and the venv. No pip, setuptools, venv module, bpfcc-tools (its
# python3-netaddr pulls ieee-data and wget), bpftool or APT lists: nothing there runs them.
# Build: docker build -t probeset .   (tests/cluster/build-images builds it with podman and records
# its size: docs/cluster-tier.md, docs/benchmarks.md 6)
# The agent runs privileged on the node; it needs from the host (mounted by the DaemonSet):
#   /lib/modules and /usr/src   kernel headers for BCC (linux-headers-$(uname -r) installed on the node;
#                               without them every probe reports "kernel headers for <release> not
#                               found at ...: install linux-headers-<release> ..." and the agent keeps
#                               serving metrics and status, instead of crash-looping)
#   /sys/kernel/tracing          tracefs;  /sys/fs/cgroup  for attribution;  /proc  with hostPID
FROM debian:bookworm-slim AS build
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
# Then, out of the venv: pip and setuptools (23 MB); kubernetes.aio (68 MB: the client package's
# asyncio copy, which `import kubernetes` does not load; the operator uses kubernetes.client); and
# the kubernetes package's compiled files (24 MB: the client loads its APIs and models lazily, and
# compiling the ~320 modules the operator loads costs it 0.3 s at start-up, measured; the agent
# does not import kubernetes). Our own modules are compiled now: the operator runs as a user that
# cannot write __pycache__ here.
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi \
 && PIP_NO_CACHE_DIR=1 scripts/setup --image \
 && .venv/bin/probeset --help >/dev/null \
 && .venv/bin/python -m pip uninstall -q -y pip setuptools \
 && rm -rf .venv/lib/python3*/site-packages/kubernetes/aio \
 && find .venv/lib/python3*/site-packages/kubernetes -name __pycache__ -prune -exec rm -rf {} + \
 && .venv/bin/python -m compileall -q api agent operator cli

FROM debian:bookworm-slim
# python3-bpfcc depends on python3 and libbpfcc (which brings libLLVM, libclang-cpp, libbpf).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-bpfcc >/dev/null \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log /var/cache/debconf/*-old \
 && groupadd --system --gid 65532 probeset \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin probeset
# The venv (editable install: it points at the source roots beside it) at the path it was made in.
COPY --from=build /opt/probeset /opt/probeset
ENV PATH=/opt/probeset/.venv/bin:$PATH
# Checks that write nothing (no __pycache__ in this layer): both commands' imports resolve, and the
# agent's never load kubernetes.
RUN export PYTHONDONTWRITEBYTECODE=1 && probeset --help >/dev/null \
 && python -c 'import bcc, kopf, kubernetes, probeset_agent.commands, probeset_operator.handlers' \
 && python -c 'import sys, probeset_agent.cluster, probeset_agent.commands; assert "kubernetes" not in sys.modules'
# Non-root by default (the operator; the chart's runAsUser/runAsGroup 65532); the agent DaemonSet
# sets runAsUser: 0 and privileged.
USER 65532:65532
ENTRYPOINT ["probeset"]
# The operator's one agent DaemonSet runs `probeset agent ...` (every ProbeSet that selects the node;
# no environment names a set); the operator's Deployment runs `probeset operator`.
CMD ["agent"]
