"""What pod attribution and pod selection cost the agent.

1. Housekeeping as a function of pods on the node: N fake pods (kubelet-named cgroup v2
   directories, one pod cgroup + one container cgroup each, in namespace "bench") and a
   namespaced ProbeSet selecting them all (a tracepoint probe). Timed, medians of --rounds:
     scan      CgroupTree.scan(): walking the whole cgroup v2 tree
     refresh   ProbeSetProgram.refresh() when nothing changed (scan + filter diff + ageing)
     first     the first refresh after the pods appear (2N ids into the in-kernel filter)
2. The filter's in-kernel cost per event: the same tracepoint (syscalls:sys_enter_getppid, the
   driver calling getppid()) in a program with workload labels and no filter, and one with the
   namespace filter (one hash lookup more); BPF program ns per run from kernel.bpf_stats_enabled,
   this process and the driver inside a selected pod's cgroup (so both count every event).

  chrt -f 50 .venv/bin/python bench/attribution.py [--pods 100 1000 3000] [--rounds 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

from common import bpf_stats_enabled, build_driver, loadavg, machine, median, run_driver, save_json

from probeset_agent.attribution import Attribution, CgroupTree, cgroup2_root
from probeset_agent.pods import PodIndex, PodInfo, PodSelection
from probeset_agent.program import ProbeSetProgram
from probeset_api.spec import parse_probeset

LABELS = ["node", "namespace", "pod", "container"]


class FakePods:
    def __init__(self, root: str):
        self.root = root
        self.base = os.path.join(root, "kubepods.slice", "kubepods-besteffort.slice")
        self.dirs: list[str] = []
        self.infos: list[PodInfo] = []

    def add(self, n: int) -> None:
        for _ in range(n):
            uid, cid = str(uuid.uuid4()), uuid.uuid4().hex * 2
            pod = os.path.join(self.base, f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice")
            container = os.path.join(pod, f"cri-containerd-{cid}.scope")
            os.makedirs(container)
            self.dirs += [container, pod]
            self.infos.append(PodInfo(uid, "bench", f"pod-{uid[:8]}", {}, {cid: "app"}))

    def remove(self) -> None:
        for d in self.dirs:
            os.rmdir(d)
        self.dirs, self.infos = [], []
        for d in (self.base, os.path.dirname(self.base)):
            if os.path.isdir(d) and not os.listdir(d):
                os.rmdir(d)


def program(pods: PodIndex | None, attribution: Attribution, name: str) -> ProbeSetProgram:
    doc = {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": name, "namespace": "bench"},
           "spec": {"labels": LABELS, "probes": [{"name": "p", "tracepoint": "syscalls:sys_enter_getppid"}]}}
    selection = PodSelection(pods, "bench", None) if pods is not None else None
    prog = ProbeSetProgram(parse_probeset(doc), "bench", attribution=attribution, selection=selection)
    prog.start()
    return prog


def housekeeping(root: str, sizes: list[int], rounds: int) -> list[dict]:
    out = []
    for n in sizes:
        fake = FakePods(root)
        try:
            index = PodIndex()
            attribution = Attribution(CgroupTree(root), index, rescan_interval=0)
            prog = program(index, attribution, "bench-housekeeping")
            try:
                fake.add(n)
                for info in fake.infos:
                    index.update(info)
                t0 = time.perf_counter()
                prog.refresh()
                first = time.perf_counter() - t0
                assert prog.allowed_cgroups == 2 * n, prog.allowed_cgroups
                scans, refreshes = [], []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    attribution.tree.scan()
                    scans.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    prog.refresh()
                    refreshes.append(time.perf_counter() - t0)
                cgroups = len(attribution.tree.live)
            finally:
                prog.stop()
        finally:
            fake.remove()
        row = {"pods": n, "cgroups_in_tree": cgroups, "scan_ms": median(scans) * 1e3,
               "refresh_ms": median(refreshes) * 1e3, "first_refresh_ms": first * 1e3}
        print(f"{n:6d} {cgroups:8d} {row['scan_ms']:10.1f} {row['refresh_ms']:11.1f} {row['first_refresh_ms']:14.1f}")
        out.append(row)
    return out


def filter_cost(root: str, calls: int, rounds: int) -> dict:
    fake = FakePods(root)
    fake.add(1)
    container = fake.dirs[0]
    index = PodIndex()
    index.update(fake.infos[0])
    attribution = Attribution(CgroupTree(root), index, rescan_interval=0)
    with open(os.path.join(container, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))           # the driver, our child, starts in the pod's cgroup
    progs = {}
    try:
        progs["labels, no filter"] = program(None, attribution, "bench-nofilter")
        progs["labels + namespace filter"] = program(index, attribution, "bench-filter")
        ns_per_run = {name: [] for name in progs}
        with bpf_stats_enabled():
            for _ in range(rounds):
                before = {name: p.read_program_stats()[0][1:] for name, p in progs.items()}
                run_driver("getppid", calls)
                for name, p in progs.items():
                    (ns0, cnt0), (_, ns1, cnt1) = before[name], p.read_program_stats()[0]
                    assert cnt1 - cnt0 >= calls, (name, cnt1 - cnt0)
                    ns_per_run[name].append((ns1 - ns0) / (cnt1 - cnt0))
        counted = {name: sum(s.count for ss in p.read_series().values() for s in ss) for name, p in progs.items()}
    finally:
        for p in progs.values():
            p.stop()
        with open(os.path.join(root, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        fake.remove()
    result = {name: median(v) for name, v in ns_per_run.items()}
    for name, ns in result.items():
        print(f"  {name:28s} {ns:6.1f} ns/run (events counted: {counted[name]})")
    return {"bpf_prog_ns_per_run": result, "events_counted": counted, "calls_per_round": calls, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, nargs="+", default=[100, 1000, 3000])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=300000)
    parser.add_argument("--json")
    args = parser.parse_args()
    root = cgroup2_root()
    if root is None:
        raise SystemExit("no cgroup v2 hierarchy mounted")
    build_driver()
    print(f"{machine()}, load average {loadavg()}")
    print("  pods  cgroups    scan ms  refresh ms  first refresh ms   (medians)")
    rows = housekeeping(root, args.pods, args.rounds)
    print("in-kernel cost of the namespace filter (syscalls:sys_enter_getppid):")
    cost = filter_cost(root, args.calls, args.rounds)
    save_json(args.json, {"machine": machine(), "housekeeping": rows, "filter": cost})


if __name__ == "__main__":
    main()
