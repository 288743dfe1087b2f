"""The shipped examples, on this host: what this kernel allows attaches, and counts exactly."""

import dataclasses
import glob
import subprocess

import pytest
import yaml

from probeset_agent.features import detect
from probeset_api.spec import parse_probeset
from tests.support import counts, status

LOOKUPS_C = r"""
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

/* Drives libc calls on command: "lookup N", "malloc N", "open N PATH". */
int main(void) {
    char cmd[16], path[256];
    long n;
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    while (scanf("%15s %ld", cmd, &n) == 2) {
        if (!strcmp(cmd, "open") && scanf("%255s", path) != 1) return 1;
        for (long i = 0; i < n; i++) {
            if (!strcmp(cmd, "lookup")) {
                struct addrinfo *res = NULL;
                if (getaddrinfo("localhost", NULL, NULL, &res) == 0) freeaddrinfo(res);
                gethostbyname("localhost");
                gethostbyname2("localhost", AF_INET);
            } else if (!strcmp(cmd, "malloc")) {
                void *volatile p = malloc(64);   /* volatile: the compiler may not elide the pair */
                free(p);
            } else if (!strcmp(cmd, "open")) {
                close(open(path, O_RDONLY));
            }
        }
        printf("done\n");
    }
    return 0;
}
"""

COMM = "pslookups"     # the driver's name: the examples' events are told apart by comm


@pytest.fixture(scope="module")
def driver_binary(build_c):
    return build_c(COMM, LOOKUPS_C)


class Driver:
    def __init__(self, path):
        self.proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def driver(driver_binary):
    d = Driver(driver_binary)
    yield d
    d.close()


def load(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    return [parse_probeset(d) for d in docs]


@pytest.mark.parametrize("path", sorted(glob.glob("examples/*.yaml")))
def test_example_attaches_what_this_kernel_allows(path, start_program):
    features = detect()
    for pset in load(path):
        prog = start_program(pset)
        for st in prog.probe_statuses():
            kernel_probe = st.kind in ("kprobe", "kretprobe")
            if kernel_probe and not (features.kprobe.ok or features.fentry.ok):
                assert any(reason in st.error for reason in (
                    "supports neither kprobes", "kprobes are not supported", "no traceable kernel function"))
            elif kernel_probe:
                continue   # kprobe examples are proven in tests/vm
            else:
                assert st.error is None, f"{path}: {st.name}: {st.error}"
                assert st.functions and all(st.functions.values())


def test_gethostlatency_counts_each_lookup(driver, start_program):
    (pset,) = load("examples/gethostlatency.yaml")
    prog = start_program(pset)
    driver.run("lookup 25")
    for probe in ("getaddrinfo", "gethostbyname", "gethostbyname2"):
        assert counts(prog, probe, by="comm").get(COMM) == 25, probe
        series = [s for s in prog.read_series()[status(prog, probe).index] if s.labels["comm"] == COMM]
        assert sum(sum(s.buckets.values()) for s in series) == 25
        assert series[0].sum_ns > 0


def test_malloc_count_with_comm_filter(driver, start_program):
    (pset,) = load("examples/malloc-count.yaml")
    pset.probes[0] = dataclasses.replace(pset.probes[0], comm=COMM)   # the example filters on curl
    prog = start_program(pset)
    driver.run("malloc 1")          # first call may allocate stdio buffers: measure from here
    before = counts(prog, "malloc", by="comm")[COMM]
    driver.run("malloc 500")
    assert counts(prog, "malloc", by="comm") == {COMM: before + 500}   # no other process counted


def test_syscalls_glob_grouped_by_comm(driver, start_program, tmp_path):
    (pset,) = load("examples/syscalls.yaml")
    prog = start_program(pset)
    assert "syscalls:sys_enter_openat" in status(prog, "open").functions
    target = tmp_path / "f"
    target.write_text("x")
    driver.run(f"open 1 {target}")
    before = sum(s.count for s in prog.read_series()[0] if s.labels["comm"] == COMM)
    driver.run(f"open 300 {target}")
    series = [s for s in prog.read_series()[0] if s.labels["comm"] == COMM]
    assert sum(s.count for s in series) - before == 300
    assert {s.labels["function"] for s in series} == {"syscalls:sys_enter_openat"}
