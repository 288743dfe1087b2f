"""Where uprobes land on real files: for every exported function of each file, the class of the
instruction a hand-written uprobe is on (the function's first byte) and of the one the agent puts a
probe that reads no register on (uprobe_entry.entry_offset), and whether the function's entry block
holds a 5-byte NOP (0f 1f 44 00 00) that every call runs exactly once.

That last column sizes an idea: since Linux 6.18 the kernel rewrites a uprobe on a 5-byte NOP into a
call of a trampoline and a `uprobe` syscall (arch_uprobe_optimize), cheaper than the int3 trap
(docs/benchmarks.md 1e). Placing probes on such a NOP pays only if entry blocks have one. The walk is
the agent's (insn_length over known instructions, within --walk bytes, no direct branch into the
bytes walked over: uprobe_entry.branches_into). No BPF, no root; reads the files only.

  .venv/bin/python bench/uprobe_sites.py [FILE ...] [--walk 64]
"""

from __future__ import annotations

import argparse
import subprocess

from probeset_agent import elf
from probeset_agent.uprobe_cost import ENDBR64, NOP5, NOT_STEPPED, classify
from probeset_agent.uprobe_entry import MAX_FUNCTION_BYTES, MAX_WALK, branches_into, entry_offset, walk_entry_block

COLUMNS = ("functions", "emulated at the first byte", "single-stepped there, emulated where the agent puts it",
           "single-stepped either way", "5-byte NOP in the entry block", "5-byte NOP anywhere in the function",
           "unreadable")
DEFAULT_FILES = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/python3.11"]


def nop5_in_entry_block(code: bytes, walk: int) -> int | None:
    """The offset of a 5-byte NOP that every call runs once (module docstring), or None."""
    start = len(ENDBR64) if code.startswith(ENDBR64) else 0
    at = walk_entry_block(code, start, lambda i: code.startswith(NOP5, i), walk)
    return None if at is None or branches_into(code, 1, at) else at


def exported_functions(path: str) -> list[tuple[str, int]]:
    """(name, address) of the file's defined dynamic text symbols, one per address."""
    out = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    seen: dict[int, str] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "Tt":
            seen.setdefault(int(parts[0], 16), parts[2])
    return [(name, address) for address, name in seen.items()]


def survey(path: str, walk: int) -> dict:
    stats = dict.fromkeys(COLUMNS, 0)
    examples: list[str] = []
    for name, address in exported_functions(path):
        code = elf.function_bytes(path, address, MAX_FUNCTION_BYTES)
        if not code:
            stats["unreadable"] += 1
            continue
        stats["functions"] += 1
        first = classify(code[:16] + bytes(16)).kind in NOT_STEPPED
        moved = entry_offset(code, movable=True)
        placed = classify(code[moved:moved + 16] + bytes(16)).kind in NOT_STEPPED
        stats["emulated at the first byte" if first else
              "single-stepped there, emulated where the agent puts it" if placed else "single-stepped either way"] += 1
        at = nop5_in_entry_block(code, walk)
        if at is not None:
            stats["5-byte NOP in the entry block"] += 1
            examples.append(f"{name}+{at}")
        if NOP5 in code:
            stats["5-byte NOP anywhere in the function"] += 1
    return {"file": path, **stats, "examples": examples[:10]}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", default=DEFAULT_FILES)
    ap.add_argument("--walk", type=int, default=MAX_WALK, help="bytes of the entry block walked (the agent's: %(default)s)")
    args = ap.parse_args(argv)
    results = [survey(path, args.walk) for path in args.files]
    for r in results:
        print(r["file"])
        for key, value in r.items():
            if key not in ("file", "examples"):
                print(f"  {key:58} {value:6}")
        if r["examples"]:
            print("  e.g.", ", ".join(r["examples"]))
    return results


if __name__ == "__main__":
    main()
