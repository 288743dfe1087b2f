"""The operator against a real kube-apiserver: CRD, reconcile, invalid sets, peering, restart."""

import urllib.request

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from probeset_operator.render import daemonset_name
from tests.k8s.operator_env import (GROUP, OPERATOR_NS, PLURAL, VERSION, api, condition, get_ds,  # noqa: F401
                                    get_ps, installed, namespace, probeset, start_operator, wait_for)
from tests.support import holds_for, wait_stable

pytestmark = pytest.mark.k8s


def test_schema_invalid_probeset_is_rejected_by_the_api_server(api, namespace):
    objs = client.CustomObjectsApi(api)
    with pytest.raises(ApiException) as e:
        objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                             probeset("bad", [{"name": "x", "uprobe": "libc:getaddrinfo; rm"}]))
    assert e.value.status == 422
    assert "spec.probes.uprobe" in e.value.body or "spec.probes[0].uprobe" in e.value.body
    with pytest.raises(ApiException) as e:
        objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset("empty", []))
    assert e.value.status == 422 and "spec.probes" in e.value.body


def test_reconcile_create_update_delete(api, namespace, start_operator):
    op = start_operator()
    objs = client.CustomObjectsApi(api)
    objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "dns", [{"name": "dns", "uprobe": "libc:getaddrinfo", "latency": True}],
        nodeSelector={"probeset-test": "none"}))
    ds = wait_for("DaemonSet", lambda: get_ds(api, namespace, "dns"))
    (container,) = ds.spec.template.spec.containers
    assert container.image == "registry.example/probeset:test"
    assert container.security_context.privileged and ds.spec.template.spec.host_pid
    assert [(e.name, e.value, e.value_from and e.value_from.field_ref.field_path) for e in container.env] == [
        ("NODE_NAME", None, "spec.nodeName"),
        ("PROBESET_NAMESPACE", namespace, None),
        ("PROBESET_NAME", "dns", None),
        ("PROBESET_OPERATOR_NAMESPACE", OPERATOR_NS, None),
        ("PROBESET_NODE_WIDE_NAMESPACES", OPERATOR_NS, None)]    # the default: the operator's namespace
    assert ds.spec.template.spec.node_selector == {"probeset-test": "none"}
    uid = ds.metadata.uid
    obj = wait_for("Valid condition", lambda: condition(get_ps(api, namespace, "dns"), "Valid") and
                   get_ps(api, namespace, "dns"))
    assert condition(obj, "Valid")["status"] == "True"
    assert "probeset.io/agents" in obj["metadata"]["finalizers"]

    objs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "dns",
                                        {"spec": {"nodeSelector": {"probeset-test": "other"}}})
    ds = wait_for("DaemonSet update", lambda: (d := get_ds(api, namespace, "dns")) and
                  d.spec.template.spec.node_selector == {"probeset-test": "other"} and d)
    assert ds.metadata.uid == uid                       # rolled out, not recreated

    objs.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "dns")
    wait_for("DaemonSet deleted", lambda: get_ds(api, namespace, "dns") is None)
    wait_for("ProbeSet gone", lambda: not objs.list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL)["items"])
    assert op.proc.poll() is None, op.text()


def test_invalid_probeset_gets_valid_false_and_an_event_and_no_agents(api, namespace, start_operator):
    start_operator()
    # Passes the schema (which cannot say "exactly one of"), fails the model.
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "two", [{"name": "both", "kprobe": "vfs_read", "uprobe": "libc:malloc"}]))
    obj = wait_for("Valid=False", lambda: (o := get_ps(api, namespace, "two")) and
                   (c := condition(o, "Valid")) and c["status"] == "False" and o)
    assert condition(obj, "Valid")["reason"] == "InvalidSpec"
    assert "spec.probes[0]: exactly one of" in condition(obj, "Valid")["message"]
    events = wait_for("Event", lambda: [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
                                        if e.involved_object.name == "two" and e.reason == "InvalidSpec"])
    assert events[0].type == "Warning" and "exactly one of" in events[0].message
    assert get_ds(api, namespace, "two") is None


def test_node_scope_is_only_for_the_granted_namespaces(api, namespace, start_operator):
    """spec.scope Node (host processes and every pod on the node) outside the namespaces the admin
    lists (here the default: the operator's own) is invalid: no agents; in the operator's namespace
    it is fine."""
    start_operator()
    objs = client.CustomObjectsApi(api)
    probes = [{"name": "execs", "tracepoint": "sched:sched_process_exec"}]
    objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "wide", probes, scope="Node", nodeSelector={"probeset-test": "none"}))
    obj = wait_for("Valid=False", lambda: (o := get_ps(api, namespace, "wide")) and
                   (c := condition(o, "Valid")) and c["status"] == "False" and o)
    valid = condition(obj, "Valid")
    assert valid["reason"] == "InvalidSpec" and valid["observedGeneration"] == obj["metadata"]["generation"]
    assert valid["message"].startswith("spec.scope: ") and OPERATOR_NS in valid["message"] and \
        f"this ProbeSet is in {namespace}" in valid["message"]
    assert condition(obj, "Ready")["status"] == "False"
    wait_for("Event", lambda: [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
                               if e.involved_object.name == "wide" and e.reason == "InvalidSpec"
                               and "spec.scope" in e.message])
    assert get_ds(api, namespace, "wide") is None

    # The same set in the operator's namespace is valid and gets its agents.
    objs.create_namespaced_custom_object(GROUP, VERSION, OPERATOR_NS, PLURAL, probeset(
        namespace, probes, scope="Node", nodeSelector={"probeset-test": "none"}))
    try:
        wait_for("DaemonSet", lambda: get_ds(api, OPERATOR_NS, namespace))
        assert condition(get_ps(api, OPERATOR_NS, namespace), "Valid")["status"] == "True"
        # Removing the scope makes the first one valid too.
        objs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "wide", {"spec": {"scope": None}})
        wait_for("DaemonSet of the corrected set", lambda: get_ds(api, namespace, "wide"))
        assert condition(get_ps(api, namespace, "wide"), "Valid")["status"] == "True"
    finally:
        # Removed while the operator runs (its finalizer deletes the DaemonSets): the operator's
        # namespace outlives the test.
        for ns, name in ((OPERATOR_NS, namespace), (namespace, "wide")):
            objs.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            wait_for(f"ProbeSet {ns}/{name} gone", lambda: not [
                o for o in objs.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
                if o["metadata"]["name"] == name])
    assert get_ds(api, OPERATOR_NS, namespace) is None and get_ds(api, namespace, "wide") is None


def test_restart_is_idempotent(api, namespace, start_operator):
    first = start_operator(0)
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "again", [{"name": "t", "tracepoint": "sched:sched_process_exec"}], nodeSelector={"probeset-test": "none"}))
    ds = wait_for("DaemonSet", lambda: get_ds(api, namespace, "again"))
    assert first.stop() == 0
    second = start_operator(1)
    wait_for("the restarted operator to resume the ProbeSet", lambda: "unchanged" in second.text(), timeout=90)
    # generation counts spec changes (the DaemonSet controller's status updates do not).
    assert get_ds(api, namespace, "again").metadata.generation == ds.metadata.generation == 1


def _active(process) -> bool:
    """Whether the replica's last peering transition was to resume (kopf logs each one)."""
    transitions = [line for line in process.text().splitlines()
                   if "Resuming operations" in line or "Pausing operations" in line]
    return bool(transitions) and "Resuming operations" in transitions[-1]


def test_two_replicas_do_not_both_act(api, namespace, start_operator):
    replicas = start_operator(0), start_operator(1)
    # kopf peering: a replica that sees a higher-priority peer pauses; until the two have seen each
    # other (a fraction of a second) both may run, which the idempotent handlers make harmless.
    wait_for("exactly one active replica", lambda: sum(_active(p) for p in replicas) == 1)
    # The first replica up may be active alone until it sees its peer, which may outrank it: a
    # paused replica logs nothing, so only time shows the election is over. Wait until the
    # replicas' states have not changed for 3 s (counted from the last change).
    wait_stable(lambda: tuple(_active(p) for p in replicas), 3, 60, "the peering election to settle")
    active = [p for p in replicas if _active(p)]
    assert len(active) == 1, [p.text()[-3000:] for p in replicas]
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "pair", [{"name": "t", "tracepoint": "sched:sched_process_exec"}], nodeSelector={"probeset-test": "none"}))
    wait_for("DaemonSet", lambda: get_ds(api, namespace, "pair"))
    ds = f"DaemonSet {OPERATOR_NS}/{daemonset_name(namespace, 'pair')}"
    created = f"{ds} created"
    wait_for("the active replica to log the DaemonSet it created", lambda: created in active[0].text())
    # That the standby does nothing only time can show: it would react to the same event, so a
    # few seconds after the active one created the DaemonSet it must still have logged nothing
    # about it (created, unchanged or updated).
    standby = next(p for p in replicas if p is not active[0])
    holds_for(lambda: ds not in standby.text(), 3, "the standby replica left the DaemonSet alone")
    assert [p for p in replicas if created in p.text()] == active, [p.text()[-3000:] for p in replicas]
    # The standby takes over when the active one stops.
    active[0].stop()
    wait_for("the standby to resume", lambda: _active(standby), timeout=90)


def test_liveness_endpoint(start_operator):
    op = start_operator()
    def live():
        with urllib.request.urlopen(f"http://127.0.0.1:{op.liveness}/healthz", timeout=2) as r:
            return r.status == 200
    wait_for("liveness", lambda: _try(live))


def _try(fn):
    try:
        return fn()
    except OSError:
        return False


def test_reports_of_nodes_without_an_agent_are_dropped(api, namespace, start_operator):
    """A node's report stays only while an agent pod of the set runs there (a node removed, or no
    longer selected, leaves none): the summary timer deletes the others."""
    start_operator()
    objs = client.CustomObjectsApi(api)
    objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "ghosts", [{"name": "t", "tracepoint": "sched:sched_process_exec"}], nodeSelector={"probeset-test": "none"}))
    wait_for("Valid", lambda: (c := condition(get_ps(api, namespace, "ghosts"), "Valid")) and c["status"] == "True")
    report = {"generation": 1, "attached": 1, "total": 1, "updated": "2026-01-01T00:00:00Z"}
    objs.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "ghosts",
                                               {"status": {"agents": {"gone-node": report}}})
    assert get_ps(api, namespace, "ghosts")["status"]["agents"] == {"gone-node": report}
    obj = wait_for("the stale report dropped", lambda: (o := get_ps(api, namespace, "ghosts")) and
                   not (o["status"].get("agents") or {}) and o, timeout=30)
    assert obj["status"]["nodes"]["summary"] == "0/0"


def test_a_refused_daemonset_shows_on_the_probeset(api, namespace, start_operator):
    """A DaemonSet the API server refuses (here: agent resources whose request exceeds the limit,
    as an admin could set them; a cluster policy refusing privileged pods looks the same) leaves the
    set Valid but not Ready, with the server's reason, within seconds, and a Warning Event."""
    start_operator(PROBESET_AGENT_RESOURCES='{"requests": {"memory": "1Gi"}, "limits": {"memory": "10Mi"}}')
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "refused", [{"name": "t", "tracepoint": "sched:sched_process_exec"}], nodeSelector={"probeset-test": "none"}))
    obj = wait_for("Ready=False DaemonSetRejected", lambda: (o := get_ps(api, namespace, "refused")) and
                   (condition(o, "Ready") or {}).get("reason") == "DaemonSetRejected" and o, timeout=20)
    ready = condition(obj, "Ready")
    assert ready["status"] == "False" and "Invalid value: \"1Gi\": must be less than or equal" in ready["message"]
    assert condition(obj, "Valid")["status"] == "True" and "refused" in obj["status"]["message"]
    assert get_ds(api, namespace, "refused") is None
    wait_for("DaemonSetRejected event", lambda: [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
                                                if e.reason == "DaemonSetRejected"])
