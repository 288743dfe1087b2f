"""Helpers shared by the test tiers."""

import os
import subprocess
import time
import uuid
from dataclasses import dataclass

import pytest

from probeset_agent.pods import PodInfo


def resolved_uprobe(probe, function: str, address: int, **site_fields):
    """A ResolvedProbe of a uprobe-kind `probe` at one site of /bin/true, as resolve.py makes it:
    with latency an entry (start) and a return (finish) site, else one counting site."""
    from probeset_agent.resolve import ResolvedProbe, Site
    rp = ResolvedProbe(probe, via="uprobe", functions=[function])
    common = dict(function=function, path="/bin/true", address=address, **site_fields)
    if probe.latency:
        rp.sites = [Site(0, mechanism="uprobe", role="start", **common),
                    Site(0, mechanism="uretprobe", role="finish", **common)]
    else:
        rp.sites = [Site(0, mechanism=probe.kind, role="count", **common)]
    return rp


def symbols(path: str) -> dict[str, int]:
    """A binary's symbols and their addresses, as nm(1) lists them."""
    return {line.split()[2]: int(line.split()[0], 16)
            for line in subprocess.run(["nm", path], capture_output=True, text=True, check=True).stdout.splitlines()
            if len(line.split()) == 3}


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll until ``predicate()`` returns something truthy; return it, or fail saying ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def namespace_with_token(api, prefix: str, grace_period_seconds: int | None = None):
    """A fresh namespace whose default ServiceAccount has its token Secret (v1.20's ServiceAccount
    admission rejects pods before that, and controllers back off); deleted afterwards, its pods with
    it. A generator for fixtures: `yield from namespace_with_token(api, "t")`."""
    from kubernetes import client
    core = client.CoreV1Api(api)
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})

    def default_sa_has_token():
        try:
            return core.read_namespaced_service_account("default", name).secrets
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise
    wait_for(default_sa_has_token, 30, f"the default ServiceAccount's token in {name}")
    yield name
    core.delete_namespace(name, grace_period_seconds=grace_period_seconds)


def wait_stable(value, seconds: float, timeout: float, what: str, interval: float = 0.2):
    """Poll ``value()`` until it has returned the same truthy value for ``seconds`` in a row (a
    state that has settled, not just passed through); return it, or fail saying ``what``."""
    deadline = time.monotonic() + timeout
    last, since = None, None
    while True:
        now, current = time.monotonic(), value()
        if not current or current != last:
            last, since = current, now
        elif now - since >= seconds:
            return current
        if now > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def holds_for(predicate, seconds: float, what: str, interval: float = 0.2) -> None:
    """Check ``predicate()`` again and again for ``seconds``: a "nothing happens" check, which only
    time can show; fails at the first poll where it does not hold."""
    end = time.monotonic() + seconds
    while True:
        if not predicate():
            pytest.fail(f"no longer true: {what}")
        if time.monotonic() >= end:
            return
        time.sleep(interval)


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


TARGET_C = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Functions the tests probe. noinline + an asm barrier keep each a real call. */
__attribute__((noinline)) int probeset_target_work(int i) { asm volatile(""); return i % 3 == 0; }
__attribute__((noinline)) int probeset_target_alpha(int i) { asm volatile(""); return i; }
__attribute__((noinline)) int probeset_target_beta(int i) { asm volatile(""); return i; }
__attribute__((noinline)) int probeset_target_sleep(int us) { usleep(us); return 0; }
__attribute__((noinline)) long probeset_target_arg(long a, long b) { asm volatile(""); return a + b; }

/* Reads commands from stdin ("work N", "alpha N", "beta N", "sleep N US", "arg N DISTINCT"),
 * runs them, answers "done" so the test knows exactly when its events happened. */
int main(void) {
    char cmd[32];
    long n, extra;
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    while (scanf("%31s %ld", cmd, &n) == 2) {
        extra = 0;
        if (!strcmp(cmd, "sleep") || !strcmp(cmd, "arg")) scanf("%ld", &extra);
        for (long i = 0; i < n; i++) {
            if (!strcmp(cmd, "work")) probeset_target_work(i);
            else if (!strcmp(cmd, "alpha")) probeset_target_alpha(i);
            else if (!strcmp(cmd, "beta")) probeset_target_beta(i);
            else if (!strcmp(cmd, "sleep")) probeset_target_sleep(extra);
            else if (!strcmp(cmd, "arg")) probeset_target_arg(i % extra, i);
        }
        printf("done\n");
    }
    return 0;
}
"""


class Target:
    """The compiled target program, running, driven line by line. `argv` is its path, or a command
    line that ends up running it (e.g. inside a chroot); `cgroup` a cgroup v2 directory the
    process starts in (so every process it forks is there too)."""

    def __init__(self, argv: str | list[str], cgroup: str | None = None):
        argv = [argv] if isinstance(argv, str) else list(argv)
        self.path = argv[0]

        def enter_cgroup():
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     preexec_fn=enter_cgroup if cgroup else None)
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def run(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def counts(prog, probe: str, by: str = "function") -> dict[str, int]:
    """{label value: events} for one probe."""
    rp = next(r for r in prog.resolved if r.probe.name == probe)
    out: dict[str, int] = {}
    for s in prog.read_series().get(rp.id, []):
        out[s.labels[by]] = out.get(s.labels[by], 0) + s.count
    return out


def status(prog, probe: str):
    return next(st for st in prog.probe_statuses() if st.name == probe)


def remove_cgroup(root: str, path: str) -> None:
    """rmdir a cgroup v2 directory; a process still in it (a failed test) goes back to the root first."""
    if not os.path.isdir(path):
        return
    with open(os.path.join(path, "cgroup.procs")) as f:
        left = [line.strip() for line in f if line.strip()]
    for pid in left:
        with open(os.path.join(root, "cgroup.procs"), "w") as f:
            f.write(pid)
    os.rmdir(path)


def remove_empty_cgroup_parents(*paths: str) -> None:
    """rmdir these cgroup directories, innermost first, where no child cgroup is left in them."""
    for d in paths:
        if os.path.isdir(d) and not [e for e in os.listdir(d) if os.path.isdir(os.path.join(d, e))]:
            os.rmdir(d)


# --- fake pods: cgroup v2 directories named as the kubelet names them (systemd driver, containerd) ---

@dataclass
class FakePod:
    uid: str
    namespace: str
    name: str
    labels: dict
    path: str                        # the pod's cgroup directory
    containers: dict                 # container name -> (container ID, cgroup directory)

    def cgroup(self, container: str = "app") -> str:
        return self.containers[container][1]

    def info(self) -> PodInfo:
        return PodInfo(self.uid, self.namespace, self.name, dict(self.labels),
                       {cid: name for name, (cid, _) in self.containers.items()})


class FakePods:
    """Creates kubelet-named cgroups; removes them (and anything left in them) at the end."""

    def __init__(self, root: str):
        self.root = root
        self.base = os.path.join(root, "kubepods.slice", "kubepods-besteffort.slice")
        self.pods: list[FakePod] = []

    def add(self, namespace="default", name=None, labels=None, containers=("app",)) -> FakePod:
        uid = str(uuid.uuid4())
        path = os.path.join(self.base, f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice")
        made = {}
        for container in containers:
            cid = uuid.uuid4().hex * 2
            made[container] = (cid, os.path.join(path, f"cri-containerd-{cid}.scope"))
            os.makedirs(made[container][1])
        pod = FakePod(uid, namespace, name or f"pod-{uid[:8]}", labels or {}, path, made)
        self.pods.append(pod)
        return pod

    def remove_container(self, pod: FakePod, container: str) -> None:
        _, path = pod.containers.pop(container)
        self._rmdir(path)

    def remove(self, pod: FakePod) -> None:
        for container in list(pod.containers):
            self.remove_container(pod, container)
        self._rmdir(pod.path)
        self.pods.remove(pod)

    def _rmdir(self, path: str) -> None:
        remove_cgroup(self.root, path)

    def cleanup(self) -> None:
        for pod in list(self.pods):
            self.remove(pod)
        remove_empty_cgroup_parents(self.base, os.path.dirname(self.base))


class Caller:
    """Runs `command` in a Target over and over from a thread (`with Caller(...) as c:`), counting
    the calls made (`per_call` each); wait_for(n) returns once n calls are made."""

    def __init__(self, target, command: str, per_call: int):
        import threading
        self.target, self.command, self.per_call = target, command, per_call
        self.calls, self.done = 0, threading.Event()
        self.progress = threading.Condition()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        while not self.done.is_set():
            self.target.run(self.command)
            with self.progress:
                self.calls += self.per_call
                self.progress.notify_all()

    def wait_for(self, calls: int, timeout: float = 30) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: self.calls >= calls, timeout=timeout), self.calls

    def __enter__(self) -> "Caller":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def uprobe_links(pid: int | str = "self") -> int:
    """uprobe_multi BPF links a process holds (its fdinfo): how the tests see that uprobes left."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                n += "link_type:\tuprobe_multi" in f.read()
        except OSError:
            continue
    return n
