"""Standalone attribution from cgroup paths: processes in cgroups named like the kubelet's get the
pod UID and container ID labels; host processes get empty ones."""

import os
import uuid

import pytest

from probeset_agent.attribution import CgroupAttribution, cgroup2_root, workload_of_path
from tests.support import Target


def test_kubelet_cgroup_names_are_parsed():
    uid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    cid = "a" * 64
    systemd = (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid.replace('-', '_')}.slice/"
               f"cri-containerd-{cid}.scope")
    assert workload_of_path(systemd) == {"pod": uid, "container": cid}
    assert workload_of_path(f"/kubepods/besteffort/pod{uid}/{cid}") == {"pod": uid, "container": cid}
    assert workload_of_path(f"/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/crio-{cid}.scope") == {
        "pod": uid, "container": cid}
    assert workload_of_path(f"/kubepods/pod{uid}") == {"pod": uid}
    assert workload_of_path("/system.slice/ssh.service") == {}


@pytest.fixture
def pod_cgroups():
    """Two fake pods' container cgroups in the cgroup v2 tree, named as the systemd driver does."""
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    made, pods = [], []
    base = os.path.join(root, "kubepods.slice", "kubepods-besteffort.slice")
    for _ in range(2):
        uid, cid = str(uuid.uuid4()), uuid.uuid4().hex * 2
        path = os.path.join(base, f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice",
                            f"cri-containerd-{cid}.scope")
        os.makedirs(path)
        made.append(path)
        pods.append((uid, cid, path))
    yield root, pods
    for path in made:
        for d in (path, os.path.dirname(path)):
            if os.path.isdir(d):
                os.rmdir(d)
    for d in (base, os.path.dirname(base)):
        if os.path.isdir(d) and not [e for e in os.listdir(d) if os.path.isdir(os.path.join(d, e))]:
            os.rmdir(d)


def test_events_are_labelled_with_pod_and_container(pod_cgroups, target_binary, run_probeset):
    root, pods = pod_cgroups
    targets = []
    try:
        for (uid, cid, path), n in zip(pods, (7, 11)):
            t = Target(target_binary)
            targets.append(t)
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(t.pid))
        host = Target(target_binary)
        targets.append(host)
        prog = run_probeset([{"name": "work", "uprobe": f"{target_binary}:probeset_target_work"}],
                            labels=["node", "namespace", "pod", "container"])
        prog.attribution = CgroupAttribution(root)
        targets[0].run("work 7")
        targets[1].run("work 11")
        host.run("work 3")
        mine = {(s.labels["pod"], s.labels["container"]): s.count for s in prog.read_series()[0]
                if s.labels["pod"] in {uid for uid, _, _ in pods} or s.labels["pod"] == ""}
        (uid0, cid0, _), (uid1, cid1, _) = pods
        assert mine[(uid0, cid0)] == 7 and mine[(uid1, cid1)] == 11
        assert mine[("", "")] == 3          # the host process: empty workload labels
        assert all(s.labels["namespace"] == "" for s in prog.read_series()[0])
    finally:
        for t in targets:
            with open(os.path.join(root, "cgroup.procs"), "w") as f:   # back to the root before rmdir
                f.write(str(t.pid))
            t.close()
