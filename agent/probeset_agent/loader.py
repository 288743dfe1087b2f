"""Compiling BPF C with BCC, with its errors captured and without BCC's name-based auto-attach,
and what the compiles cost (CompileCost)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass


@contextlib.contextmanager
def captured_stderr():
    """Collect what libbcc/clang print on fd 2 (compile and load errors) so the reason can be
    reported with the probe instead of scrolling past on the console."""
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        box: list[str] = []
        try:
            yield box
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box.append(tmp.read().decode(errors="replace"))


def _bpf_class():
    from bcc import BPF

    class ExplicitBPF(BPF):
        """BPF() attaches functions named kfunc__*, kprobe__*, ... while compiling, and fails whole
        when one of them cannot load. fentry programs must carry that prefix (it names their BTF
        target), so attaching is left to the caller, one attach point at a time."""

        def _trace_autoload(self):
            pass

    return ExplicitBPF


class CompileError(Exception):
    """The program did not compile or load; the message has clang's or the verifier's first errors."""


@dataclass
class CompileCost:
    """What a program's compiles took: how many times clang ran (failed compiles included) and
    their wall time."""

    compiles: int = 0
    seconds: float = 0.0


def compile_program(text: str, cost: CompileCost | None = None):
    """The loaded BPF object; CompileError with the reason when it fails. `cost` adds this compile."""
    t0 = time.monotonic()
    with captured_stderr() as err:
        try:
            return _bpf_class()(text=text.encode())
        except Exception as e:  # bcc raises bare Exception
            failure = e
        finally:
            if cost is not None:
                cost.compiles += 1
                cost.seconds += time.monotonic() - t0
    lines = [ln.strip() for ln in err[0].splitlines() if "error" in ln.lower()] or err[0].splitlines()[-3:]
    raise CompileError("BPF compile failed: " + ("; ".join(lines[:3]) or str(failure)))
