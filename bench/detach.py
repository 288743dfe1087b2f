"""How long detaching uprobes takes, which sizes the agent pod's terminationGracePeriodSeconds.

Attaches N uprobes (functions of libc, one BPF program), then detaches them the way the agent
does at SIGTERM (one after the other), and again closing the perf event fds from T threads at
once, to see whether the kernel lets detaches overlap.

  chrt -f 50 .venv/bin/python bench/detach.py [--n 300] [--threads 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import common  # noqa: F401  (sys.path for a checkout)

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def attach(n: int):
    from bcc import BPF
    from probeset_agent.host import elf_functions
    bpf = BPF(text="int f(void *ctx) { return 0; }")
    for _, addr in elf_functions(LIBC, "*")[:n]:
        bpf.attach_uprobe(name=LIBC.encode(), addr=addr, fn_name=b"f")
    return bpf


def detach_serially(bpf) -> float:
    t = time.monotonic()
    for event in list(bpf.uprobe_fds):
        bpf.detach_uprobe_event(event)
    return time.monotonic() - t


def detach_in_threads(bpf, threads: int) -> float:
    from bcc import lib
    events = list(bpf.uprobe_fds)
    t = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lib.bpf_close_perf_event_fd, [bpf.uprobe_fds[e] for e in events]))
    elapsed = time.monotonic() - t
    for event in events:
        bpf.uprobe_fds.pop(event)
    return elapsed


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    print(f"kernel {platform.release()}, {args.n} uprobes on {LIBC}")
    result = {"kernel": platform.release(), "n": args.n}
    bpf = attach(args.n)
    result["serial_s"] = detach_serially(bpf)
    bpf.cleanup()
    bpf = attach(args.n)
    result["threads"] = args.threads
    result["threaded_s"] = detach_in_threads(bpf, args.threads)
    bpf.cleanup()
    per = result["serial_s"] / args.n
    print(f"  one after the other: {result['serial_s']:.1f} s ({per * 1000:.0f} ms per uprobe)")
    print(f"  {args.threads} threads at once: {result['threaded_s']:.1f} s")
    print(f"  1,000 uprobes (BCC's per-process limit): ~{per * 1000:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
