"""The node's pod index (names, selectors, retention) and file lookups inside a container's root."""

import pytest

from probeset_agent import host
from probeset_agent.pods import PodIndex, pod_info, selector_matches

CID_APP, CID_INIT, CID_SANDBOX = "a" * 64, "b" * 64, "c" * 64


def pod(uid="u-1", name="web-1", namespace="shop", labels=None, annotations=None):
    return {"metadata": {"uid": uid, "name": name, "namespace": namespace, "labels": labels or {"app": "web"},
                         "annotations": annotations or {}},
            "status": {"containerStatuses": [{"name": "app", "containerID": f"containerd://{CID_APP}"},
                                             {"name": "starting"}],          # no ID yet
                       "initContainerStatuses": [{"name": "init", "containerID": f"cri-o://{CID_INIT}"}]}}


def test_pod_info_maps_container_ids_to_names():
    info = pod_info(pod())
    assert (info.uid, info.namespace, info.name, info.labels) == ("u-1", "shop", "web-1", {"app": "web"})
    assert info.containers == {CID_APP: "app", CID_INIT: "init"}


KUBELET_MIRROR = {"kubernetes.io/config.mirror": "hash123", "kubernetes.io/config.source": "file"}
NODE_OWNER = [{"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "n-1", "controller": True}]


def mirror_pod(uid="m-1", annotations=KUBELET_MIRROR, owners=NODE_OWNER, **kw):
    p = pod(uid=uid, annotations=dict(annotations), **kw)
    p["metadata"]["ownerReferences"] = owners
    return p


def test_static_pods_are_found_by_their_mirror_annotation():
    # The kubelet names a static pod's cgroups after its config hash, which the mirror pod carries.
    info = pod_info(mirror_pod())
    assert (info.uid, info.api_uid, info.mirrored) == ("hash123", "m-1", True)


@pytest.mark.parametrize("annotations,owners", [
    ({"kubernetes.io/config.mirror": "hash123"}, NODE_OWNER),                                   # no source
    ({**KUBELET_MIRROR, "kubernetes.io/config.source": "api"}, NODE_OWNER),                     # from the API
    (KUBELET_MIRROR, []),                                                                        # no Node owner
    (KUBELET_MIRROR, [{**NODE_OWNER[0], "controller": False}]),
    (KUBELET_MIRROR, [{**NODE_OWNER[0], "kind": "ReplicaSet", "apiVersion": "apps/v1"}]),
])
def test_a_mirror_annotation_alone_names_nothing(annotations, owners):
    """Anyone who may create a pod can write annotations: only the kubelet's mirror pods are trusted."""
    info = pod_info(mirror_pod(annotations=annotations, owners=owners))
    assert (info.uid, info.mirrored) == ("m-1", False)


def test_a_claim_of_another_pods_uid_is_refused():
    """An attacker's pod that passes for a mirror pod naming a victim pod's UID: the victim keeps
    its cgroups; the attacker is indexed by its own UID, whichever arrives first."""
    victim = pod_info(pod(uid="victim-uid", name="db-0", namespace="bank"))
    attacker = pod_info(mirror_pod(uid="attacker-uid", name="evil", namespace="team-x",
                                   annotations={**KUBELET_MIRROR, "kubernetes.io/config.mirror": "victim-uid"}))
    assert attacker.uid == "victim-uid"                 # it looks like a kubelet mirror pod...
    for order in ([victim, attacker], [attacker, victim]):
        index = PodIndex()
        for p in order:
            index.update(p)
        assert index.names("victim-uid", None)[0]["namespace"] == "bank"
        assert index.names("attacker-uid", None)[0]["namespace"] == "team-x"
        assert index.selected("team-x", None) == ["attacker-uid"]
        listed = PodIndex()
        listed.replace(order)
        assert listed.selected("team-x", None) == ["attacker-uid"] and listed.selected("bank", None) == ["victim-uid"]
    index.delete("attacker-uid")                        # deleted by its own metadata.uid
    index.expire()
    assert index.selected("bank", None) == ["victim-uid"] and index.selected("team-x", None) == []


@pytest.mark.parametrize("selector, labels, matches", [
    (None, {}, True),
    ({}, {"a": "1"}, True),
    ({"matchLabels": {"app": "web"}}, {"app": "web", "x": "y"}, True),
    ({"matchLabels": {"app": "web"}}, {"app": "db"}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}, {"tier": "b"}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}, {}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}, {"tier": "a"}, False),
    ({"matchExpressions": [{"key": "canary", "operator": "Exists"}]}, {"canary": ""}, True),
    ({"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}, {"canary": ""}, False),
    ({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]},
     {"app": "web"}, True),
])
def test_label_selectors(selector, labels, matches):
    assert selector_matches(selector, labels) is matches


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_names_selection_and_retention():
    clock = FakeClock()
    index = PodIndex(retention=300, clock=clock)
    index.update(pod_info(pod()))
    index.update(pod_info(pod("u-2", "db-1", labels={"app": "db"})))
    index.update(pod_info(pod("u-3", "web-1", namespace="other")))
    assert index.names("u-1", CID_APP) == ({"namespace": "shop", "pod": "web-1", "container": "app"}, True)
    assert index.names("u-1", None) == ({"namespace": "shop", "pod": "web-1", "container": ""}, True)
    # The sandbox (or a container whose status has not arrived): named pod, empty container, asked again.
    assert index.names("u-1", CID_SANDBOX) == ({"namespace": "shop", "pod": "web-1", "container": ""}, False)
    assert index.names("u-9", None) is None
    assert sorted(index.selected("shop", None)) == ["u-1", "u-2"]
    assert index.selected("shop", {"matchLabels": {"app": "web"}}) == ["u-1"]
    assert sorted(index.selected(None, {"matchLabels": {"app": "web"}})) == ["u-1", "u-3"]

    version = index.version
    index.delete("u-1")
    assert index.version > version
    assert index.selected("shop", None) == ["u-2"]          # no longer selected at once...
    assert index.names("u-1", CID_APP)[0]["pod"] == "web-1"  # ...but still named within the retention
    clock.advance(299)
    index.expire()
    assert index.names("u-1", CID_APP)[0]["pod"] == "web-1"  # not yet past the retention
    clock.advance(2)
    index.expire()
    assert index.names("u-1", CID_APP) is None and len(index) == 2

    # A full listing: pods missing from it count as deleted.
    index.replace([pod_info(pod("u-2", "db-1"))])
    assert index.selected(None, None) == ["u-2"] and len(index) == 2


def test_paths_resolve_inside_the_containers_root(tmp_path):
    root = tmp_path / "root"
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    lib = root / "usr/lib/x86_64-linux-gnu/libdemo.so.1"
    lib.write_bytes(b"\x7fELF" + b"\0" * 60)
    (root / "lib").symlink_to("usr/lib")                                  # relative, as usrmerge
    (root / "usr/lib/x86_64-linux-gnu/libdemo.so").symlink_to("/usr/lib/x86_64-linux-gnu/libdemo.so.1")  # absolute
    # An absolute link target means the container's /, not ours.
    assert host.path_in_root(str(root), "/usr/lib/x86_64-linux-gnu/libdemo.so") == str(lib)
    assert host.path_in_root(str(root), "/lib/x86_64-linux-gnu/libdemo.so.1") == str(lib)
    assert host.find_binary("libdemo", str(root)) == str(lib)       # found through both links
    assert host.find_binary("/lib/x86_64-linux-gnu/libdemo.so.1", str(root)) == str(lib)
    # libc6-dev's libc.so is a linker script that sorts before libc.so.6 (found on a node by the
    # cluster tier: a node-wide set's uprobes on libc failed with "no function symbol")
    (root / "usr/lib/x86_64-linux-gnu/libdemo.so").unlink()
    (root / "usr/lib/x86_64-linux-gnu/libdemo.so").write_text("/* GNU ld script */\nGROUP ( libdemo.so.1 )\n")
    assert host.find_binary("libdemo", str(root)) == str(lib)
    with pytest.raises(host.HostError, match="not found under"):
        host.find_binary("libnothere", str(root))
    with pytest.raises(host.HostError, match="no such file"):
        host.find_binary("/opt/app/server", str(root))


def test_node_root_is_our_root_or_a_readable_other_one(tmp_path):
    assert host.node_root("/proc/self/root") == ("/", None)             # our own root: "/" itself
    assert host.node_root(str(tmp_path)) == (str(tmp_path), None)       # another root we can read
    root, warning = host.node_root(str(tmp_path / "missing"))           # unreadable: none, said so
    assert root is None and warning.startswith(f"cannot read the node's file system at {tmp_path / 'missing'} "
                                               "(No such file or directory): uprobes for the node's own processes "
                                               "cannot be placed")


def test_without_the_nodes_files_a_node_wide_uprobe_fails_rather_than_probe_the_agents_own_copy():
    from probeset_agent.resolve import UserTargets, resolve
    from probeset_api.spec import parse_probeset
    pset = parse_probeset({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": "s"},
                           "spec": {"probes": [{"name": "dns", "uprobe": "libc:getaddrinfo"}]}})
    (rp,) = resolve(pset, None, UserTargets(host_root=None))
    assert rp.error == ("libc: the node's file system is not readable by this agent (see its log), so the node's "
                        "own processes cannot be probed") and not rp.sites
