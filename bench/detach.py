"""How long detaching uprobes takes, which sizes the agent pod's terminationGracePeriodSeconds.

1. perf-event uprobes (BCC's attach_uprobe; what the agent uses where the kernel has no
   uprobe_multi links): N attached to the functions of a generated binary, detached one after the other, then again
   closed from T threads at once.
2. The agent's way (uprobe_links.py): 1,000 uprobe_multi links, one per function (the agent's
   probe budget), released by UprobeLinks.close_all() (all at once from threads).

  chrt -f 50 .venv/bin/python bench/detach.py [--n 300] [--threads 16] [--links 1000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import common  # noqa: F401  (sys.path for a checkout)

PROGRAM = "int f(void *ctx) { return 0; }"
TARGET = common.BUILD / "many_functions"


def build_target(n: int = 1200) -> str:
    """A binary with n trivial functions to probe (not libc: probing every libc function would
    also probe signal trampolines and the like in running processes, this one included)."""
    import subprocess
    common.BUILD.mkdir(exist_ok=True)
    src = common.BUILD / "many_functions.c"
    src.write_text("".join(f"__attribute__((noinline)) int fn_{i}(int x) {{ return x + {i}; }}\n" for i in range(n))
                   + "int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-O1", "-o", str(TARGET), str(src)], check=True)
    return str(TARGET)


def functions(n: int):
    from probeset_agent.host import elf_functions
    return elf_functions(str(TARGET), "fn_*")[:n]


def perf_attach(n: int):
    from bcc import BPF
    bpf = BPF(text=PROGRAM)
    for _, addr in functions(n):
        bpf.attach_uprobe(name=str(TARGET).encode(), addr=addr, fn_name=b"f")
    return bpf


def perf_serial(n: int) -> float:
    bpf = perf_attach(n)
    t = time.monotonic()
    for event in list(bpf.uprobe_fds):
        bpf.detach_uprobe_event(event)
    elapsed = time.monotonic() - t
    bpf.cleanup()
    return elapsed


def perf_threads(n: int, threads: int) -> float:
    from bcc import lib
    bpf = perf_attach(n)
    events = list(bpf.uprobe_fds)
    t = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lib.bpf_close_perf_event_fd, [bpf.uprobe_fds[e] for e in events]))
    elapsed = time.monotonic() - t
    for event in events:
        bpf.uprobe_fds.pop(event)
    bpf.cleanup()
    return elapsed


def links(n: int) -> tuple[int, float]:
    """(links placed, seconds to release them all), through the agent's UprobeLinks."""
    from bcc import BPF
    from probeset_agent.uprobe_links import UprobeLinks
    bpf = BPF(text=PROGRAM)
    placements = UprobeLinks(bpf)
    point = SimpleNamespace(fn_name="f", mechanism="uprobe")
    for _, addr in functions(n):
        placements.place(point, str(TARGET), addr)
    placed = placements.count()
    if not placements.usable:
        raise SystemExit("this kernel has no uprobe_multi links (Linux >= 6.6)")
    t = time.monotonic()
    placements.close_all()
    elapsed = time.monotonic() - t
    bpf.cleanup()
    return placed, elapsed


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--links", type=int, default=1000)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    build_target()
    print(f"kernel {platform.release()}, uprobes on the functions of {TARGET}")
    result = {"kernel": platform.release(), "n": args.n, "threads": args.threads}
    result["perf_serial_s"] = perf_serial(args.n)
    result["perf_threaded_s"] = perf_threads(args.n, args.threads)
    result["links"], result["links_release_s"] = links(args.links)
    per = result["perf_serial_s"] / args.n
    print(f"  perf events, one after the other: {args.n} in {result['perf_serial_s']:.1f} s "
          f"({per * 1000:.0f} ms each; 1,000 would take ~{per * 1000:.0f} s)")
    print(f"  perf events, {args.threads} threads at once: {args.n} in {result['perf_threaded_s']:.1f} s")
    print(f"  uprobe_multi links (the agent's way): {result['links']} released in {result['links_release_s']:.2f} s "
          "(target: 1,000 in < 10 s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
