"""A uprobe hit's cost by the class of the probed instruction, two ways, to check one by the other:

  calibrate   what the agent measures at start and `probeset check` prints
              (agent/probeset_agent/uprobe_cost.py: machine code in a memfd, called in a loop)
  driver      the C driver's bench_target (push %rbp: emulated), bench_target_nop5 (a 5-byte NOP:
              emulated, and since Linux 6.18 rewritten by the kernel on its first hit into a call
              of a trampoline that makes the `uprobe` syscall: no int3 trap) and bench_target_xol
              (lea: single-stepped), `driver call[_nop5|_xol] N` with and without a counting uprobe
              perf event on every CPU (no BPF program: the trap and the emulation or single-step
              only); the event's count is checked against the calls

  chrt -f 50 .venv/bin/python bench/uprobe_classes.py [--calls 100000] [--reps 3]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import struct
import subprocess

from common import DRIVER, build_driver, loadavg, machine, median, run_driver


def perf_uprobe_all_cpus(path: str, offset: int) -> list[int]:
    pmu = int(open("/sys/bus/event_source/devices/uprobe/type").read())
    libc = ctypes.CDLL(None, use_errno=True)
    c_path = ctypes.create_string_buffer(path.encode())
    fds = []
    for cpu in range(os.cpu_count() or 1):
        attr = bytearray(128)
        struct.pack_into("<IIQ", attr, 0, pmu, len(attr), 0)
        struct.pack_into("<QQ", attr, 56, ctypes.addressof(c_path), offset)
        fd = libc.syscall(298, (ctypes.c_char * len(attr)).from_buffer(attr), -1, cpu, -1, 8)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "perf_event_open (uprobe)")
        fds.append(fd)
    return fds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    from probeset_agent.elf import file_offset as elf_file_offset
    from probeset_agent.uprobe_cost import calibrate, site_class
    build_driver()
    print(f"{machine()}, load average {loadavg()}")
    cost = [calibrate() for _ in range(args.reps)]
    print("calibrate: " + ", ".join(f"{k} {median([c[k] for c in cost]) * 1e9:.0f} ns" for k in cost[0]))
    symbols = {w[2]: int(w[0], 16) for w in (line.split() for line in subprocess.run(
        ["nm", str(DRIVER)], capture_output=True, text=True, check=True).stdout.splitlines()) if len(w) == 3}
    for mode, fn in (("call", "bench_target"), ("call_nop5", "bench_target_nop5"), ("call_xol", "bench_target_xol")):
        offset = elf_file_offset(str(DRIVER), symbols[fn])
        cls = site_class(str(DRIVER), offset)
        n = args.calls // 10 if mode == "call_xol" else args.calls
        plain = median([run_driver(mode, n) for _ in range(args.reps)])
        fds = perf_uprobe_all_cpus(str(DRIVER), offset)
        try:
            probed = median([run_driver(mode, n) for _ in range(args.reps)])
            hits = sum(struct.unpack("<Q", os.read(fd, 8))[0] for fd in fds)
        finally:
            for fd in fds:
                os.close(fd)
        assert hits == n * args.reps, (hits, n * args.reps)
        print(f"driver:    {fn} ({cls.insn}: {cls.kind}) {probed - plain:.0f} ns per hit ({hits} hits)")


if __name__ == "__main__":
    main()
