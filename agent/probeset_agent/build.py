"""A set's probes to one loaded BPF object: the kernel headers BCC needs, the program generated
(codegen.py) and compiled (loader.py), and the probes that break the compile found by halves
(isolation.py) and reported, while the others compile. Nothing is attached here (program.py)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable

from . import codegen, isolation
from .loader import CompileCost, CompileError, compile_program
from .resolve import ResolvedProbe

log = logging.getLogger(__name__)


def missing_kernel_headers() -> str | None:
    """Why BCC cannot compile here, said plainly, or None. BCC compiles against the running kernel's
    headers at /lib/modules/$(uname -r)/build (or $BCC_KERNEL_SOURCE); in a pod they come from the
    node through the /lib/modules and /usr/src host mounts."""
    release = os.uname().release
    source = os.environ.get("BCC_KERNEL_SOURCE") or f"/lib/modules/{release}/build"
    if os.path.isdir(os.path.join(source, "include")):
        return None
    return (f"kernel headers for {release} not found at {source}: install linux-headers-{release} "
            "(or the distribution's equivalent) on the node")


@dataclass
class Built:
    """What compiled: the program's C and layouts, the BCC object (None when nothing compiled) and
    the probes in it."""

    program: codegen.Program | None = None
    bpf: object = None
    compiled: list[ResolvedProbe] = field(default_factory=list)


def build(usable: Callable[[], list[ResolvedProbe]], generate: Callable[[list[ResolvedProbe]], codegen.Program],
          fail: Callable[[ResolvedProbe, str], None], cost: CompileCost, name: str) -> Built:
    """Compile the probes `usable()` returns (asked again after each failure: `fail(rp, why)`
    takes a probe out). A failing compile is bisected; each probe that fails alone gets its own
    error; if the rest still fails, every remaining probe gets that error. `cost` counts each compile."""

    def compile_all() -> Built:
        probes = usable()
        if not probes:
            return Built()
        program = generate(probes)
        return Built(program, compile_program(program.text, cost), probes)

    def compile_error(probes) -> str | None:
        """None if these probes compile together (the trial is unloaded), else the error."""
        try:
            compile_program(generate(list(probes)).text, cost).cleanup()
        except CompileError as e:
            return str(e)
        return None

    try:
        return compile_all()
    except CompileError as e:
        log.warning("probeset %s: %s; isolating the failing probe(s)", name, e)
    for rp, error in isolation.failing(usable(), compile_error):
        fail(rp, error)
    try:
        return compile_all()
    except CompileError as again:
        for rp in usable():
            fail(rp, str(again))
    return Built()
