"""Pod attribution and pod-targeted probes on this kernel, with fake pods: cgroup v2 directories
named as the kubelet names them (systemd driver, containerd), processes started inside them, and
pod objects fed to the agent's pod index as the API watch would."""

import os
import shutil
import subprocess
import time

import pytest

from probeset_agent.attribution import UNKNOWN, Attribution, CgroupTree, workload_of_path
from probeset_agent.pods import PodIndex, PodSelection
from tests.support import wait_for


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
    # Anchored to the kubelet's layout: a cgroup nested in a container that names another pod is
    # the container's; kubepods below the root is not the kubelet's.
    victim = "2c5f39cb-3fb2-22e3-994f-1127e4ddb538"
    assert workload_of_path(f"/kubepods/besteffort/pod{uid}/{cid}/pod{victim}") == {"pod": uid, "container": cid}
    assert workload_of_path(f"/kubepods/besteffort/pod{uid}/{cid}/kubepods/pod{victim}/{'b' * 64}") == {
        "pod": uid, "container": cid}
    assert workload_of_path(f"{systemd}/kubepods-pod{victim.replace('-', '_')}.slice") == {"pod": uid, "container": cid}
    assert workload_of_path(f"/user.slice/kubepods/pod{victim}/{cid}") == {}
    assert workload_of_path(f"/kubepods/besteffort/x-pod{victim}") == {}


def by_labels(prog, probe_id=0, keys=("namespace", "pod", "container")) -> dict[tuple, int]:
    out = {}
    for s in prog.read_series().get(probe_id, []):
        k = tuple(s.labels[name] for name in keys)
        out[k] = out.get(k, 0) + s.count
    return out


WORKLOAD = ["node", "namespace", "pod", "container"]


def test_standalone_labels_are_pod_uid_and_container_id(fake_pods, targets, target_binary, run_probeset):
    a, b = fake_pods.add(), fake_pods.add()
    ta, tb, host = targets(target_binary, a.cgroup()), targets(target_binary, b.cgroup()), targets(target_binary)
    prog = run_probeset([{"name": "work", "uprobe": f"{target_binary}:probeset_target_work"}], labels=WORKLOAD,
                        program={"attribution": Attribution(CgroupTree(fake_pods.root))})
    ta.run("work 7")
    tb.run("work 11")
    host.run("work 3")
    counts = by_labels(prog)
    assert counts[("", a.uid, a.containers["app"][0])] == 7
    assert counts[("", b.uid, b.containers["app"][0])] == 11
    assert counts[("", "", "")] == 3          # host processes: empty workload labels


def test_names_come_from_the_pod_index(fake_pods, targets, target_binary, run_probeset):
    pods = PodIndex()
    a = fake_pods.add("shop", "checkout-1", containers=("app", "sidecar"))
    ta, ts = targets(target_binary, a.cgroup("app")), targets(target_binary, a.cgroup("sidecar"))
    prog = run_probeset([{"name": "work", "uprobe": f"{target_binary}:probeset_target_work"}], labels=WORKLOAD,
                        program={"attribution": Attribution(CgroupTree(fake_pods.root), pods)})
    ta.run("work 5")
    ts.run("work 2")
    # Not in the index yet: UID and container ID meanwhile, looked up again at every scrape.
    assert by_labels(prog)[("", a.uid, a.containers["app"][0])] == 5
    pods.update(a.info())
    assert by_labels(prog) == {("shop", "checkout-1", "app"): 5, ("shop", "checkout-1", "sidecar"): 2}


def test_namespaced_probeset_counts_only_its_namespace(fake_pods, targets, target_binary, run_probeset):
    """Kernel-side filter: a tracepoint (which fires for every process on the node) and a uprobe
    count only the events of the namespace's pods, not of other namespaces' pods or the host."""
    pods = PodIndex()
    mine, other = fake_pods.add("team-a"), fake_pods.add("team-b")
    for pod in (mine, other):
        pods.update(pod.info())
    t_mine, t_other = targets(target_binary, mine.cgroup()), targets(target_binary, other.cgroup())
    host = targets(target_binary)
    attribution = Attribution(CgroupTree(fake_pods.root), pods, rescan_interval=0)
    prog = run_probeset(
        [{"name": "sleeps", "tracepoint": "syscalls:sys_enter_clock_nanosleep"},
         {"name": "work", "uprobe": f"{target_binary}:probeset_target_work"}],
        namespace="team-a", labels=WORKLOAD,
        program={"attribution": attribution, "selection": PodSelection(pods, "team-a", None)})
    assert prog.allowed_cgroups == 2                       # the pod's cgroup and its container's
    for t in (t_mine, t_other, host):
        t.run("sleep 4 1")
        t.run("work 9")
    name = mine.info().name
    assert by_labels(prog, 0) == {("team-a", name, "app"): 4}
    assert by_labels(prog, 1) == {("team-a", name, "app"): 9}

    # A new pod of the namespace is followed; a deleted one is dropped from the filter.
    late = fake_pods.add("team-a")
    pods.update(late.info())
    t_late = targets(target_binary, late.cgroup())
    prog.refresh()
    assert prog.allowed_cgroups == 4
    t_late.run("work 6")
    pods.delete(mine.uid)
    prog.refresh()
    t_mine.run("work 100")                                 # no longer selected: not counted
    assert by_labels(prog, 1) == {("team-a", name, "app"): 9, ("team-a", late.info().name, "app"): 6}


@pytest.fixture
def container_root(tmp_path, target_binary):
    """A root file system with its own copies of the target and the libraries it loads (libc, the
    dynamic linker): what a container image brings."""
    root = tmp_path / "rootfs"
    shutil.copy(target_binary, root / "target") if root.mkdir() is None else None
    out = subprocess.run(["ldd", target_binary], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        path = next((p for p in line.split() if p.startswith("/")), None)
        if path:
            dest = root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(os.path.realpath(path), dest)      # a file of its own: another inode
    return str(root)


def test_uprobe_attaches_to_the_containers_own_library(fake_pods, targets, target_binary, container_root,
                                                       run_probeset):
    libc = os.path.join(container_root, "lib/x86_64-linux-gnu/libc.so.6")
    assert os.path.isfile(libc), "ldd did not name /lib/x86_64-linux-gnu/libc.so.6"
    pods = PodIndex()
    ctr = fake_pods.add("team-a")
    pods.update(ctr.info())
    # The "container": its own mount namespace and root, in the pod's cgroup.
    inside = targets(["unshare", "--mount", "chroot", container_root, "/target"], ctr.cgroup())
    host = targets(target_binary)
    prog = run_probeset(
        [{"name": "usleep", "uprobe": "libc:usleep"}], namespace="team-a", labels=WORKLOAD,
        program={"attribution": Attribution(CgroupTree(fake_pods.root), pods, rescan_interval=0),
                 "selection": PodSelection(pods, "team-a", None)})
    (point,) = prog.user_points()
    assert prog.copies(point) == 1
    placed = os.stat(libc)
    assert prog.placement.attached_files(point) == [(placed.st_dev, placed.st_ino)]   # the copy, not the host's
    assert os.stat(os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")).st_ino != placed.st_ino
    inside.run("sleep 5 1")
    host.run("sleep 8 1")
    assert by_labels(prog) == {("team-a", ctr.name, "app"): 5}

    # The container ends: its copy is detached at the next refresh.
    inside.close()
    prog.refresh()
    assert prog.copies(point) == 0 and prog.placement.attached_files(point) == []


def test_a_container_directory_turned_into_a_symlink_does_not_lead_to_the_nodes_file(
        fake_pods, targets, target_binary, container_root, run_probeset, monkeypatch, tmp_path):
    """Between finding a container's file and attaching to it, the tenant turns a directory of its
    path into an absolute symlink to a directory of the node: walked again by the agent's own
    lookup, the path would lead to the node's file (and a uprobe at an offset read from it). The
    agent reads and attaches through the file it opened inside the container's root, or not at
    all: here the link leads nowhere inside the container, so nothing is attached."""
    from probeset_agent.placement import Placement
    from probeset_agent.program import ProbeSetProgram
    app, node_dir = os.path.join(container_root, "app"), tmp_path / "node-bin"
    os.mkdir(app)
    node_dir.mkdir()
    shutil.copy(target_binary, os.path.join(app, "target"))
    shutil.copy(target_binary, node_dir / "target")              # the node's file: another inode
    node_ino = os.stat(node_dir / "target").st_ino
    find = Placement._copy_in

    def find_then_swap(binary, pids):
        found = find(binary, pids)
        if found and os.path.isdir(app) and not os.path.islink(app):
            os.rename(app, app + ".moved")
            os.symlink(str(node_dir), app)                       # /app -> /tmp/.../node-bin
        return found
    attached_inodes = []
    place = ProbeSetProgram._place

    def recording_place(self, point, path, address):
        attached_inodes.append(os.stat(path).st_ino)             # what the kernel attaches to: the path's file
        return place(self, point, path, address)
    monkeypatch.setattr(Placement, "_copy_in", staticmethod(find_then_swap))
    monkeypatch.setattr(ProbeSetProgram, "_place", recording_place)
    pods = PodIndex()
    ctr = fake_pods.add("team-a")
    pods.update(ctr.info())
    targets(["unshare", "--mount", "chroot", container_root, "/target"], ctr.cgroup())
    prog = run_probeset(
        [{"name": "work", "uprobe": "/app/target:probeset_target_work"}], namespace="team-a", labels=WORKLOAD,
        program={"attribution": Attribution(CgroupTree(fake_pods.root), pods, rescan_interval=0),
                 "selection": PodSelection(pods, "team-a", None)})
    prog.refresh()
    assert os.path.islink(app)                                  # the swap happened after the file was found
    assert node_ino not in attached_inodes and attached_inodes == []
    (point,) = prog.user_points()
    assert prog.copies(point) == 0


def test_unknown_cgroups_fold_into_one_series_and_age_out(fake_pods, targets, target_binary, run_probeset):
    """Cgroups that vanish before the agent ever scans them: one __unknown__ series, counted."""
    prog = run_probeset([{"name": "work", "uprobe": f"{target_binary}:probeset_target_work"}], labels=WORKLOAD,
                        program={"attribution": Attribution(CgroupTree(fake_pods.root), rescan_interval=0)})
    for n in (3, 4):
        pod = fake_pods.add()
        t = targets(target_binary, pod.cgroup())
        t.run(f"work {n}")
        t.close()
        fake_pods.remove(pod)
    assert by_labels(prog) == {(UNKNOWN, UNKNOWN, UNKNOWN): 7}
    assert prog.unknown_cgroups == 2
    prog.refresh()   # first sighting as unknown
    prog.refresh()   # a later scan still does not find them: their rows leave the map
    assert by_labels(prog) == {}
    assert len(list(prog.bpf["counts_p0"].items())) == 1     # just the overflow slot


def test_vanished_container_keeps_its_series_until_retention(fake_pods, targets, target_binary, run_probeset):
    """A container's series keeps its labels after the cgroup goes; after the retention its rows
    are removed, and counts retired under labels other rows still have keep the series monotonic."""
    pods = PodIndex()
    pod = fake_pods.add("shop", "cart-1", containers=("app", "old"))
    pods.update(pod.info())
    tree = CgroupTree(fake_pods.root, retention=0.5)
    prog = run_probeset([{"name": "work", "uprobe": f"{target_binary}:probeset_target_work"}],
                        labels=["namespace", "pod"],
                        program={"attribution": Attribution(tree, pods, rescan_interval=0)})
    prog.attribution.rescan(force=True)
    t_app, t_old = targets(target_binary, pod.cgroup("app")), targets(target_binary, pod.cgroup("old"))
    t_app.run("work 5")
    t_old.run("work 7")
    t_old.close()
    removed_at = time.monotonic()
    fake_pods.remove_container(pod, "old")
    prog.refresh()                                         # gone, within retention: kept
    assert by_labels(prog, keys=("namespace", "pod")) == {("shop", "cart-1"): 12}
    rows_before = len(list(prog.bpf["counts_p0"].items()))

    def rows_after_refresh():
        prog.refresh()
        return len(list(prog.bpf["counts_p0"].items()))
    # CgroupTree measures its retention on the real clock: refresh until the row leaves, then check
    # that it did not leave before the retention had passed.
    wait_for(lambda: rows_after_refresh() < rows_before, 10, "the old container's row to be retired", 0.05)
    assert time.monotonic() - removed_at >= tree.retention
    assert len(list(prog.bpf["counts_p0"].items())) == rows_before - 1    # the old container's row left
    t_app.run("work 1")
    assert by_labels(prog, keys=("namespace", "pod")) == {("shop", "cart-1"): 13}   # never goes backwards


def test_container_uprobe_status_says_what_is_missing_where(fake_pods, targets, target_binary, run_probeset):
    """A pod-targeted uprobe is attached when some selected container's copy has it; a copy without
    the function, or no copy at all, is a probe error naming the binary and the pod."""
    pods = PodIndex()
    pod = fake_pods.add("team-a", "web-1")
    pods.update(pod.info())
    targets(target_binary, pod.cgroup())
    prog = run_probeset(
        [{"name": "ok", "uprobe": f"{target_binary}:probeset_target_work"},
         {"name": "typo", "uprobe": f"{target_binary}:probeset_target_wrok"},
         {"name": "absent", "uprobe": "/opt/no/such/server:handle"}],
        namespace="team-a", labels=WORKLOAD,
        program={"attribution": Attribution(CgroupTree(fake_pods.root), pods, rescan_interval=0),
                 "selection": PodSelection(pods, "team-a", None)})
    st = {s.name: s for s in prog.probe_statuses()}
    assert st["ok"].error is None and st["ok"].functions == {"probeset_target_work": True}
    assert st["typo"].error == f"no function probeset_target_wrok in {target_binary} in pod team-a/web-1"
    assert st["typo"].functions == {"probeset_target_wrok": False}
    assert st["absent"].error.startswith("no selected pod has /opt/no/such/server (yet)")
    assert not st["typo"].attached and not st["absent"].attached


def test_cluster_example_counts_the_selected_pods_lookups(fake_pods, targets, build_c, start_program):
    """examples/cluster/dns-latency-pods.yaml: the shop namespace's app=web pods, not its app=db pod
    nor another namespace's web pod."""
    from tests.bpf.test_examples import COMM, LOOKUPS_C, load
    driver = build_c(COMM, LOOKUPS_C)
    (pset,) = load("examples/cluster/dns-latency-pods.yaml")
    pods = PodIndex()
    web = fake_pods.add("shop", "web-1", {"app": "web"})
    db = fake_pods.add("shop", "db-1", {"app": "db"})
    elsewhere = fake_pods.add("other", "web-1", {"app": "web"})
    for pod in (web, db, elsewhere):
        pods.update(pod.info())
    drivers = [targets(driver, pod.cgroup()) for pod in (web, db, elsewhere)] + [targets(driver)]
    prog = start_program(pset, attribution=Attribution(CgroupTree(fake_pods.root), pods, rescan_interval=0),
                         selection=PodSelection(pods, pset.namespace, pset.pod_selector))
    st = {s.name: s for s in prog.probe_statuses()}
    assert st["getaddrinfo"].error is None and st["getaddrinfo"].attached
    assert prog.allowed_cgroups == 2                       # web-1's pod and container cgroups
    for d in drivers:
        d.run("lookup 3")
    assert by_labels(prog, 0) == {("shop", "web-1", "app"): 3}
    (series,) = prog.read_series()[0]
    assert sum(series.buckets.values()) == 3               # three latencies, one per lookup
