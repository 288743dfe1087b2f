"""The one-node cluster works as the tier's tests need it to: the node is Ready at 127.0.0.1, a
hostNetwork pod from the workload image runs in the cgroup where the agent looks for it and makes
exactly the calls it is told to, the API server reaches the kubelet (pod logs), and the project
image built from the Dockerfile runs its CLI, the agent's `check` (privileged, the chart's host
mounts) and the operator's entrypoint (non-root, read-only root file system)."""

import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.cluster.node import cgroup2_root, pod_manifest
from tests.support import wait_for

client = pytest.importorskip("kubernetes.client", reason="the kubernetes Python client is not installed")

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples/gethostlatency.yaml"


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def exit_code(pod) -> int | None:
    state = pod.status.container_statuses[0].state
    return state.terminated.exit_code if state.terminated else None


def test_node_ready(node_cluster, cluster_api):
    node = client.CoreV1Api(cluster_api).read_node(node_cluster.node.name)
    conditions = {c.type: c.status for c in node.status.conditions}
    assert conditions["Ready"] == "True", node.status.conditions
    assert {(a.type, a.address) for a in node.status.addresses} == {("InternalIP", "127.0.0.1"),
                                                                     ("Hostname", "127.0.0.1")}
    info = node.status.node_info
    assert info.kubelet_version == "v1.20.2"
    assert info.container_runtime_version.startswith("containerd://1.6")
    assert info.kernel_version == os.uname().release
    nodes = node_cluster.kubectl("get", "nodes", "--no-headers").stdout.split()
    assert nodes[:2] == ["127.0.0.1", "Ready"] and nodes[-1] == "v1.20.2", nodes
    # The kubelet's sysctl changes were put back once it was Ready.
    assert Path("/proc/sys/kernel/panic_on_oops").read_text() == node_cluster.node._sysctls["kernel/panic_on_oops"]


def test_workload_pod_cgroup_and_exact_calls(node_cluster, cluster_api, run_pod):
    """A workload pod's container is in the cgroup the agent maps to a pod (kubepods/<qos>/pod<uid>/<id>
    in the v2 hierarchy), runs on the image's own libc, and makes exactly N calls per SIGUSR1."""
    from probeset_agent.attribution import workload_of_path
    node = node_cluster.node
    pod = run_pod(pod_manifest(name("workload"), node_cluster.images["workload"], ["250", "open"],
                               container="worker"))
    cgroup = node.container_cgroup(pod, "worker")
    print(f"\nworkload container cgroup: {cgroup}")
    assert cgroup.is_dir()
    cid = node.container_id(pod, "worker")
    relative = "/" + str(cgroup.relative_to(cgroup2_root()))
    assert relative == f"/kubepods/besteffort/pod{pod.metadata.uid}/{cid}"
    assert workload_of_path(relative) == {"pod": pod.metadata.uid, "container": cid}
    wait_for(lambda: "ready pid 1 " in node.pod_log(pod, "worker"), 10, "the workload's ready line")
    pid = node.signal_container(pod, "worker", signal.SIGUSR1)
    # The agent reads /proc/<pid>/cgroup: the same path on the v2 line ("0::").
    assert f"0::{relative}\n" in Path(f"/proc/{pid}/cgroup").read_text()
    wait_for(lambda: "done 1 250 open" in node.pod_log(pod, "worker"), 10, "round 1 of the workload")
    # Its libc is the image's copy (another inode than the host's): a uprobe on the host's libc
    # does not see these calls.
    libc = next(line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                if re.search(r"/libc\.so\.6$", line))
    inside = os.stat(f"/proc/{pid}/root{libc}")
    host = os.stat(libc)
    assert (inside.st_dev, inside.st_ino) != (host.st_dev, host.st_ino)
    node.signal_container(pod, "worker", signal.SIGUSR1)
    wait_for(lambda: "done 2 250 open" in node.pod_log(pod, "worker"), 10, "round 2 of the workload")
    # The API server reaches the kubelet (at the node's InternalIP, with its client certificate).
    log = client.CoreV1Api(cluster_api).read_namespaced_pod_log(pod.metadata.name, pod.metadata.namespace)
    assert log.splitlines() == ["ready pid 1 calls 250 function open", "done 1 250 open", "done 2 250 open"]
    assert node_cluster.kubectl("logs", "-n", pod.metadata.namespace, pod.metadata.name).stdout == log


def test_pod_cgroups_on_delete(node_cluster, cluster_api, run_pod):
    """When a pod is deleted its processes end, its container cgroups go and the kubelet removes
    its v1 pod cgroups. Its v2 pod directory stays, empty: kubelet v1.20 on a hybrid host does not
    remove it (runc made it). The agent sees such leftovers as pods without containers;
    KubeletNode.stop() removes them."""
    node = node_cluster.node
    pod = run_pod(pod_manifest(name("gone"), node_cluster.images["workload"]))
    cgroup = node.container_cgroup(pod, "main")
    pod_cgroup = cgroup.parent
    assert cgroup.is_dir()
    client.CoreV1Api(cluster_api).delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                                        grace_period_seconds=0)
    wait_for(lambda: not cgroup.exists(), 30, f"{cgroup} removed")
    v1 = [Path(f"/sys/fs/cgroup/{c}/kubepods/besteffort/pod{pod.metadata.uid}") for c in ("memory", "cpu", "pids")]
    wait_for(lambda: not any(p.exists() for p in v1), 30, f"v1 pod cgroups {v1} removed")
    left = [p.name for p in pod_cgroup.iterdir() if p.is_dir()] if pod_cgroup.exists() else None
    print(f"\nv2 pod cgroup after delete: {pod_cgroup} {'left, subdirectories ' + str(left) if left is not None else 'removed'}")
    if left is not None:
        assert left == [] and (pod_cgroup / "cgroup.procs").read_text() == ""


def test_project_image_cli(node_cluster, cluster_api, cluster_namespace, run_pod):
    """The image from the Dockerfile runs `probeset --help`, and `probeset check` of an example as
    the agent runs (root, privileged, the chart's host mounts): the same kernel line as on the host."""
    image = node_cluster.images["project"]
    pod = run_pod(pod_manifest(name("help"), image, ["--help"]), until=("Succeeded",))
    assert exit_code(pod) == 0
    assert "usage: probeset" in node_cluster.node.pod_log(pod, "main")

    core = client.CoreV1Api(cluster_api)
    core.create_namespaced_config_map(cluster_namespace, {
        "metadata": {"name": "examples"}, "data": {EXAMPLE.name: EXAMPLE.read_text()}})
    mounts = [("tracefs", "/sys/kernel/tracing"), ("modules", "/lib/modules"), ("usr-src", "/usr/src")]
    pod = run_pod(pod_manifest(
        name("check"), image, ["check", f"/examples/{EXAMPLE.name}"],
        security_context={"privileged": True, "runAsUser": 0},
        volumes=[{"name": n, "hostPath": {"path": p}} for n, p in mounts]
        + [{"name": "examples", "configMap": {"name": "examples"}}],
        volume_mounts=[{"name": n, "mountPath": p, "readOnly": True} for n, p in mounts]
        + [{"name": "examples", "mountPath": "/examples", "readOnly": True}]),
        until=("Succeeded", "Failed"))
    output = node_cluster.node.pod_log(pod, "main")
    print(f"\nprobeset check in the image:\n{output}")
    assert exit_code(pod) == 0, output
    host = subprocess.run([str(REPO / ".venv/bin/probeset"), "check", str(EXAMPLE)],
                          capture_output=True, text=True)
    kernel_line = next(line for line in host.stdout.splitlines() if line.startswith("kernel: "))
    assert kernel_line in output.splitlines()
    assert re.search(r"^  ok    getaddrinfo: uprobe /\S*libc\.so\.6:getaddrinfo at offset 0x[0-9a-f]+", output, re.M)


def test_operator_entrypoint_non_root_read_only(node_cluster, run_pod):
    """`probeset operator --help` as the chart runs the operator: the image's non-root user,
    read-only root file system, no privilege escalation, no capabilities."""
    image = node_cluster.images["project"]
    restricted = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                  "capabilities": {"drop": ["ALL"]}}
    pod = run_pod(pod_manifest(name("operator"), image, ["operator", "--help"],
                               pod_security_context={"runAsNonRoot": True}, security_context=restricted),
                  until=("Succeeded", "Failed"))
    output = node_cluster.node.pod_log(pod, "main")
    assert exit_code(pod) == 0, output
    assert "usage: probeset operator" in output
    # Who that was, and that the root file system refuses writes.
    probe = ("import os\nprint('uid', os.getuid(), os.getgid())\n"
             "try:\n    open('/opt/probeset/x', 'w')\nexcept OSError as e:\n    print('write', e.strerror)\n")
    pod = run_pod(pod_manifest(name("whoami"), image, command=["/opt/probeset/.venv/bin/python", "-c", probe],
                               pod_security_context={"runAsNonRoot": True}, security_context=restricted),
                  until=("Succeeded", "Failed"))
    output = node_cluster.node.pod_log(pod, "main")
    assert exit_code(pod) == 0, output
    assert output.splitlines() == ["uid 65532 65532", "write Read-only file system"]


def test_in_cluster_client_reaches_the_api_server(node_cluster, run_pod):
    """A pod given in_cluster_env() reaches the API server at 127.0.0.1 with its ServiceAccount's
    token, verifying the server's certificate with the ServiceAccount's ca.crt."""
    probe = ("import json, os, ssl, urllib.request\n"
             "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
             "url = f\"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}/version\"\n"
             "request = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + open(sa + '/token').read()})\n"
             "context = ssl.create_default_context(cafile=sa + '/ca.crt')\n"
             "print(url, json.load(urllib.request.urlopen(request, context=context, timeout=10))['gitVersion'])\n")
    manifest = pod_manifest(name("incluster"), node_cluster.images["project"],
                            command=["/opt/probeset/.venv/bin/python", "-c", probe], env=node_cluster.in_cluster_env())
    manifest["spec"]["automountServiceAccountToken"] = True
    pod = run_pod(manifest, until=("Succeeded", "Failed"))
    output = node_cluster.node.pod_log(pod, "main")
    assert exit_code(pod) == 0, output
    assert output == f"https://127.0.0.1:{node_cluster.api_port}/version v1.20.2"


def test_pod_network_refused(node_cluster, cluster_api, cluster_namespace):
    """A pod without hostNetwork does not start: the node's CNI directories are its own, with a
    placeholder network and no plugins (no pod network may touch the host's)."""
    core = client.CoreV1Api(cluster_api)
    manifest = pod_manifest(name("podnet"), node_cluster.images["workload"])
    manifest["spec"]["hostNetwork"] = False
    pod = core.create_namespaced_pod(cluster_namespace, manifest)

    def sandbox_failed():
        events = core.list_namespaced_event(cluster_namespace, field_selector=f"involvedObject.name={pod.metadata.name}")
        return [e.message for e in events.items if e.reason == "FailedCreatePodSandBox"]
    messages = wait_for(sandbox_failed, 60, "FailedCreatePodSandBox")
    # containerd sets up its loopback and the placeholder network at once: either fails first.
    plugins = re.findall(r'failed to find plugin "([^"]+)" in path \[([^]]+)\]', messages[0])
    assert plugins and plugins[0][0] in ("loopback", "probeset-host-network-only"), messages
    assert plugins[0][1] == str(node_cluster.node.workdir / "cni/bin"), messages
    assert core.read_namespaced_pod(pod.metadata.name, cluster_namespace).status.phase == "Pending"


def test_missing_image_is_not_pulled_from_the_network(node_cluster, cluster_api, cluster_namespace):
    """An image containerd does not hold fails to pull: containerd's registry client goes through a
    closed loopback port, so no traffic (not even a DNS lookup) leaves the machine."""
    core = client.CoreV1Api(cluster_api)
    manifest = pod_manifest(name("nopull"), "docker.io/library/probeset-no-such-image:1")
    manifest["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    pod = core.create_namespaced_pod(cluster_namespace, manifest)

    def pull_failed():
        events = core.list_namespaced_event(cluster_namespace, field_selector=f"involvedObject.name={pod.metadata.name}")
        return [e.message for e in events.items if e.reason == "Failed" and "pull" in e.message]
    messages = wait_for(pull_failed, 60, "the image pull to fail")
    assert "proxyconnect tcp: dial tcp 127.0.0.1:9: connect: connection refused" in messages[0], messages
