"""probeset: run ProbeSets on this host (standalone agent), check them, render their BPF C; in a
cluster, the node agent and the operator.

  probeset run FILE...      attach and serve Prometheus metrics (root)
  probeset check FILE...    what would attach on this host and how; exit 0 only if everything would
  probeset render FILE      print the generated BPF C program
  probeset agent            cluster mode: every ProbeSet that selects this node (one agent per node)
  probeset operator         the operator: the agents' DaemonSet, validation, status aggregated
  probeset schema           print the ProbeSet spec's OpenAPI schema (as used by the CRD)
  probeset crd [--out DIR]  print the CustomResourceDefinitions (ProbeSet, ProbeSetNode), or write crds/

This module only wires the commands: the agent (probeset_agent.commands), the operator
(probeset_operator) and the API (probeset_api) do the work, and none of them imports another's
commands.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from probeset_agent import commands as agent
from probeset_agent.budget import MemoryBudget
from probeset_agent.choice import Limits
from probeset_agent.histogram import BUCKET_MODES, DEFAULT_BUCKET_MODE

DEFAULT_RETENTION = agent.DEFAULT_RETENTION


def cmd_schema(args) -> int:
    from probeset_api.schema import crd_schema
    json.dump(crd_schema(), sys.stdout, indent=2)
    print()
    return 0


def cmd_crd(args) -> int:
    from probeset_api.crd import build_crds, crd_file, crd_yaml
    if args.out:
        for crd in build_crds():
            with open(os.path.join(args.out, crd_file(crd)), "w") as f:
                f.write(crd_yaml(crd))
    else:
        sys.stdout.write("---\n".join(crd_yaml(crd) for crd in build_crds()))
    return 0


def cmd_operator(args) -> int:
    from probeset_operator import handlers
    handlers.run(liveness=args.liveness)
    return 0


def add_map_memory(command) -> None:
    command.add_argument("--map-memory", type=int, default=MemoryBudget.DEFAULT_MIB, metavar="MIB",
                         help="kernel memory the sets' BPF maps may take, as upper bounds; a probe that does "
                              f"not fit fails with the reason (default {MemoryBudget.DEFAULT_MIB})")


def add_histogram_buckets(command) -> None:
    command.add_argument("--histogram-buckets", choices=BUCKET_MODES, default=DEFAULT_BUCKET_MODE,
                         help="latency buckets exported per series: from the bound below the lowest non-empty "
                              "one to +Inf (nonzero, the default: exact for sum by (le) across series), the "
                              "same but stopping at the highest non-empty one (sparse: only for queries that "
                              "never sum series by le), or every bound (all); see docs/metrics.md")


def add_tls(command) -> None:
    command.add_argument("--tls-cert", metavar="FILE", help="serve metrics over TLS with this certificate (PEM)")
    command.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    command.add_argument("--tls-client-ca", metavar="FILE",
                         help="require client certificates signed by this CA (PEM); needs --tls-cert")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probeset", description=__doc__.split("\n\nThis module")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="attach the ProbeSets of FILE(s) and serve metrics (root)")
    run.add_argument("files", nargs="+", metavar="FILE")
    run.add_argument("--listen", default=agent.DEFAULT_LISTEN, help=f"metrics address (default {agent.DEFAULT_LISTEN})")
    run.add_argument("--node", help="value of the node label (default $NODE_NAME or the hostname)")
    run.add_argument("--bpf-stats", action="store_true",
                     help="enable kernel BPF run-time stats while running (probeset_bpf_run_seconds_total)")
    run.add_argument("--retention", type=float, default=DEFAULT_RETENTION, metavar="SECONDS",
                     help=f"keep the series of a vanished cgroup this long (default {DEFAULT_RETENTION:g})")
    add_tls(run)
    add_histogram_buckets(run)
    add_map_memory(run)
    check = sub.add_parser("check", help="tell what would attach on this host, without attaching")
    check.add_argument("files", nargs="+", metavar="FILE")
    add_map_memory(check)
    render = sub.add_parser("render", help="print the generated BPF C program")
    render.add_argument("file", metavar="FILE")
    node_agent = sub.add_parser("agent", help="cluster mode: run every ProbeSet that selects this node, follow "
                                              "their changes, report their status (root)")
    node_agent.add_argument("--listen", default="0.0.0.0:9437", help="metrics address (default 0.0.0.0:9437)")
    node_agent.add_argument("--node", help="node name (default $NODE_NAME or the hostname)")
    node_agent.add_argument("--bpf-stats", action="store_true", help="enable kernel BPF run-time stats while running")
    node_agent.add_argument("--retention", type=float, default=DEFAULT_RETENTION, metavar="SECONDS",
                            help="keep the series of a vanished cgroup or deleted pod this long "
                                 f"(default {DEFAULT_RETENTION:g})")
    node_agent.add_argument("--host-root", default="/proc/1/root",
                            help="the node's root file system, for uprobes on the node's own files (the "
                                 "DaemonSet mounts it at /host; default /proc/1/root: the node's, with hostPID, "
                                 "where the runtime lets the agent read it)")
    limits = Limits()
    node_agent.add_argument("--max-probesets", type=int, default=limits.max_sets, metavar="N",
                            help=f"ProbeSets this node runs at most; the oldest first (default {limits.max_sets})")
    node_agent.add_argument("--max-probes", type=int, default=limits.max_probes, metavar="N",
                            help=f"probes of all ProbeSets this node runs at most (default {limits.max_probes})")
    node_agent.add_argument("--max-series", type=int, default=limits.max_series, metavar="N",
                            help="series all ProbeSets of this node may export at most, each counted at its worst "
                                 "(maxSeriesPerProbe + 1 per probe, times the histogram's buckets with latency); "
                                 "0: no limit (default)")
    add_tls(node_agent)
    add_histogram_buckets(node_agent)
    add_map_memory(node_agent)
    node_agent.add_argument("--metrics-auth", action="store_true",
                            help="serve /metrics only to bearer tokens whose user may get the non-resource URL "
                                 "/metrics (TokenReview + SubjectAccessReview, as kube-rbac-proxy)")
    operator = sub.add_parser("operator", help="run the operator (kopf): ProbeSets -> the agents' DaemonSet")
    operator.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                          help="liveness endpoint (default http://0.0.0.0:8080/healthz)")
    sub.add_parser("schema", help="print the ProbeSet spec schema (JSON)")
    crd = sub.add_parser("crd", help="print the CustomResourceDefinitions (YAML), or write them into a directory")
    crd.add_argument("--out", metavar="DIR", help="write <group>_<plural>.yaml files here (crds/)")
    return parser


COMMANDS = {"run": agent.cmd_run, "check": agent.cmd_check, "render": agent.cmd_render, "agent": agent.cmd_agent,
            "operator": cmd_operator, "schema": cmd_schema, "crd": cmd_crd}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if getattr(args, "map_memory", None) is not None:
        from probeset_agent.budget import MIB, PROCESS_MEMORY
        PROCESS_MEMORY.set_limit(args.map_memory * MIB)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
