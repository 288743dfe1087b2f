"""Shared test helpers. Tiers: unit/ (no privileges), bpf/ (root + BCC on this host's kernel),
vm/ (kprobes/fentry in a QEMU guest), e2e/ (a real Prometheus)."""

import os
import shutil
import subprocess

import pytest


def bcc_missing_reason() -> str | None:
    """Why BPF tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (BPF programs, tracefs)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC's Python module is not importable (apt-get install python3-bpfcc; scripts/setup)"
    if not os.path.isdir(f"/lib/modules/{os.uname().release}/build"):
        return f"kernel headers missing at /lib/modules/{os.uname().release}/build (scripts/setup links them)"
    if not os.path.isdir("/sys/kernel/tracing/events"):
        return "tracefs is not mounted at /sys/kernel/tracing (scripts/setup mounts it)"
    return None


requires_bcc = pytest.mark.skipif(bcc_missing_reason() is not None, reason=bcc_missing_reason() or "")


@pytest.fixture(scope="session")
def build_c(tmp_path_factory):
    """Compile a C source text with gcc into an executable; returns its absolute path."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (apt-get install gcc)")
    out_dir = tmp_path_factory.mktemp("cbin")

    def build(name: str, source: str, *flags: str) -> str:
        src = out_dir / f"{name}.c"
        src.write_text(source)
        exe = out_dir / name
        subprocess.run(["gcc", "-O1", "-g", "-o", str(exe), str(src), *flags], check=True)
        return str(exe)
    return build
