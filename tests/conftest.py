"""Shared test helpers. Tiers: unit/ (no privileges), bpf/ (root + BCC on this host's kernel),
vm/ (kprobes/fentry in a QEMU guest), e2e/ (a real Prometheus)."""

import os
import shutil
import subprocess

import pytest

from tests.support import bcc_missing_reason


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


@pytest.fixture
def run_probeset():
    """Start a ProbeSet from a spec dict; stops it (detaching everything) after the test."""
    from probeset_agent.program import ProbeSetProgram
    from probeset_agent.spec import parse_probeset
    started = []

    def start(probes, name="test", **spec):
        doc = {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": name},
               "spec": {"probes": probes, "labels": ["node"], **spec}}
        prog = ProbeSetProgram(parse_probeset(doc), node="testnode")
        started.append(prog)
        prog.start()
        return prog
    yield start
    for prog in started:
        prog.stop()
