"""The operator against a real kube-apiserver: CRD, reconcile, invalid sets, peering, restart, and
the one agent DaemonSet: where it runs follows the sets, it goes with the last set and with the
operator's Deployment, and each set's status says why its agents do not run."""

import time
import urllib.request

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from probeset_operator.render import AGENT_DAEMONSET
from tests.k8s.operator_env import (GROUP, OPERATOR_NS, PLURAL, VERSION, agent_pod_running, api, condition,  # noqa: F401
                                    get_ds, get_ps, installed, namespace, node_reports, probeset, start_operator,
                                    wait_for, write_node_report)
from tests.support import holds_for, wait_stable

TRACEPOINT = [{"name": "t", "tracepoint": "sched:sched_process_exec"}]

pytestmark = pytest.mark.k8s


def affinity_terms(ds):
    """The DaemonSet's required node affinity as [[(key, value), ...] per term], or None. (A v1.20
    API server keeps an empty `affinity: {nodeAffinity: {}}` when an apply drops the terms: no
    constraint either.)"""
    affinity = ds and ds.spec.template.spec.affinity
    required = affinity and affinity.node_affinity and \
        affinity.node_affinity.required_during_scheduling_ignored_during_execution
    if not required:
        return None
    return [[(e.key, e.values[0]) for e in t.match_expressions] for t in required.node_selector_terms]


def all_probesets(api):
    return client.CustomObjectsApi(api).list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]


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
    ds = wait_for("DaemonSet", lambda: get_ds(api))
    assert ds.metadata.name == AGENT_DAEMONSET == "probeset-agent"
    (container,) = ds.spec.template.spec.containers
    assert container.image == "registry.example/probeset:test"
    assert container.security_context.privileged and ds.spec.template.spec.host_pid
    assert container.args == ["agent", "--listen", "0.0.0.0:9437", "--max-probesets", "20", "--max-probes", "500",
                              "--host-root", "/host", "--map-memory", "256"]     # a 512Mi limit less the agent's own
    # No ProbeSet named: the agent follows them all, with the administrator's policy.
    assert [(e.name, e.value, e.value_from and e.value_from.field_ref.field_path) for e in container.env] == [
        ("NODE_NAME", None, "spec.nodeName"),
        ("PROBESET_OPERATOR_NAMESPACE", OPERATOR_NS, None),
        ("PROBESET_NODE_WIDE_NAMESPACES", OPERATOR_NS, None)]    # the default: the operator's namespace
    assert affinity_terms(ds) == [[("probeset-test", "none")]]
    uid = ds.metadata.uid
    obj = wait_for("Valid condition", lambda: condition(get_ps(api, namespace, "dns"), "Valid") and
                   get_ps(api, namespace, "dns"))
    assert condition(obj, "Valid")["status"] == "True"
    assert "probeset.io/agents" in obj["metadata"]["finalizers"]

    objs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "dns",
                                        {"spec": {"nodeSelector": {"probeset-test": "other"}}})
    ds = wait_for("DaemonSet update", lambda: (d := get_ds(api)) and
                  affinity_terms(d) == [[("probeset-test", "other")]] and d)
    assert ds.metadata.uid == uid                       # rolled out, not recreated

    objs.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "dns")
    wait_for("DaemonSet deleted", lambda: get_ds(api) is None)
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
    assert get_ds(api) is None


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
    assert get_ds(api) is None

    # The same set in the operator's namespace is valid and gets its agents.
    objs.create_namespaced_custom_object(GROUP, VERSION, OPERATOR_NS, PLURAL, probeset(
        namespace, probes, scope="Node", nodeSelector={"probeset-test": "none"}))
    try:
        wait_for("DaemonSet", lambda: get_ds(api))
        assert condition(get_ps(api, OPERATOR_NS, namespace), "Valid")["status"] == "True"
        # Removing the scope makes the first one valid too: it counts for where agents run.
        objs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "wide",
                                            {"spec": {"scope": None, "nodeSelector": {"probeset-test": "wide"}}})
        wait_for("DaemonSet with the corrected set", lambda: affinity_terms(get_ds(api)) == [
            [("probeset-test", "none")], [("probeset-test", "wide")]])
        assert condition(get_ps(api, namespace, "wide"), "Valid")["status"] == "True"
    finally:
        # Removed while the operator runs (its finalizer deletes the DaemonSets): the operator's
        # namespace outlives the test.
        for ns, name in ((OPERATOR_NS, namespace), (namespace, "wide")):
            objs.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            wait_for(f"ProbeSet {ns}/{name} gone", lambda: not [
                o for o in objs.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
                if o["metadata"]["name"] == name])
    assert get_ds(api) is None


def test_restart_is_idempotent(api, namespace, start_operator):
    first = start_operator(0)
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "again", [{"name": "t", "tracepoint": "sched:sched_process_exec"}], nodeSelector={"probeset-test": "none"}))
    ds = wait_for("DaemonSet", lambda: get_ds(api))
    assert first.stop() == 0
    second = start_operator(1)
    wait_for("the restarted operator to resume the ProbeSet", lambda: "unchanged" in second.text(), timeout=90)
    # generation counts spec changes (the DaemonSet controller's status updates do not).
    assert get_ds(api).metadata.generation == ds.metadata.generation == 1


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
    wait_for("DaemonSet", lambda: get_ds(api))
    ds = f"DaemonSet {OPERATOR_NS}/{AGENT_DAEMONSET}"
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


def test_reports_of_nodes_without_an_agent_do_not_count(api, namespace, start_operator):
    """A node's report counts only while an agent pod of the set runs there (a node removed, or no
    longer selected, leaves a ProbeSetNode behind): its failure neither degrades the set nor shows.
    The last set deleted takes the DaemonSet and every ProbeSetNode with it."""
    start_operator()
    objs = client.CustomObjectsApi(api)
    objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "ghosts", [{"name": "t", "tracepoint": "sched:sched_process_exec"}], nodeSelector={"probeset-test": "none"}))
    wait_for("Valid", lambda: (c := condition(get_ps(api, namespace, "ghosts"), "Valid")) and c["status"] == "True")
    report = {"generation": 1, "attached": 0, "total": 1, "updated": "2026-01-01T00:00:00Z",
              "failed": [{"name": "t", "attached": False, "error": "no such tracepoint"}]}
    write_node_report(api, "gone-node", namespace, "ghosts", report)
    obj = wait_for("the summary", lambda: (o := get_ps(api, namespace, "ghosts")) and
                   (o.get("status") or {}).get("nodes") and o, timeout=30)
    assert obj["status"]["nodes"] == {"desired": 0, "ready": 0, "failing": 0, "declined": 0, "summary": "0/0"}
    assert "failedNodes" not in obj["status"] and condition(obj, "Degraded")["status"] == "False"
    assert node_reports(api, "gone-node") == {f"{namespace}/ghosts": report}
    objs.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ghosts")
    wait_for("no ProbeSetNode left", lambda: node_reports(api, "gone-node") == {}, timeout=30)


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
    assert get_ds(api) is None
    wait_for("DaemonSetRejected event", lambda: [e for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
                                                if e.reason == "DaemonSetRejected"])
    # One DaemonSet for every set: a set created later is refused the same, and says so.
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "later", TRACEPOINT, nodeSelector={"probeset-test": "none"}))
    obj = wait_for("the later set Ready=False DaemonSetRejected", lambda: (o := get_ps(api, namespace, "later")) and
                   (condition(o, "Ready") or {}).get("reason") == "DaemonSetRejected" and o, timeout=20)
    assert "must be less than or equal" in condition(obj, "Ready")["message"]


def test_one_daemonset_whatever_the_number_of_probesets(api, namespace, start_operator):
    """Three sets in two namespaces: one DaemonSet, whose affinity is the union of their
    nodeSelectors and whose tolerations are the admin's plus (allowed here) the sets'. A set
    without nodeSelector: no affinity. A change that does not move agents leaves the DaemonSet
    alone (same generation: no rollout); deleting the last set deletes it."""
    wait_for("no ProbeSet of another test", lambda: not all_probesets(api), timeout=20)
    admin = '[{"key": "dedicated", "operator": "Equal", "value": "obs", "effect": "NoSchedule"}]'
    op = start_operator(PROBESET_AGENT_TOLERATIONS=admin, PROBESET_ALLOW_PROBESET_TOLERATIONS="true")
    objs, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    other = f"{namespace}-b"
    core.create_namespace({"metadata": {"name": other}})
    try:
        objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
            "a", TRACEPOINT, nodeSelector={"probeset-test": "pool-a"}))
        objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
            "b", TRACEPOINT, nodeSelector={"probeset-test": "pool-b"},
            tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]))
        objs.create_namespaced_custom_object(GROUP, VERSION, other, PLURAL, probeset(
            "c", TRACEPOINT, nodeSelector={"probeset-test": "pool-a", "zone": "1"}))   # within pool-a: no term
        for ns, name in ((namespace, "a"), (namespace, "b"), (other, "c")):
            wait_for(f"{ns}/{name} reconciled", lambda: (get_ps(api, ns, name).get("status") or {}).get(
                "observedGeneration") == 1)
        ds = wait_for("the DaemonSet of the three sets", lambda: (d := get_ds(api)) and
                      affinity_terms(d) == [[("probeset-test", "pool-a")], [("probeset-test", "pool-b")]] and d)
        agents = client.AppsV1Api(api).list_namespaced_daemon_set(
            OPERATOR_NS, label_selector="app.kubernetes.io/component=agent").items
        assert [d.metadata.name for d in agents] == ["probeset-agent"]
        assert [(t.key, t.operator, t.value, t.effect) for t in ds.spec.template.spec.tolerations] == [
            ("dedicated", "Equal", "obs", "NoSchedule"), ("gpu", "Exists", None, "NoSchedule")]
        generation = ds.metadata.generation

        # A probe edit (not where agents run): the DaemonSet is applied unchanged.
        objs.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "a", {"spec": {"probes": [
            {"name": "t", "tracepoint": "sched:sched_process_exec"}, {"name": "u", "uprobe": "libc:malloc"}]}})
        wait_for("the edit reconciled", lambda: get_ps(api, namespace, "a")["status"].get("observedGeneration") == 2)
        assert get_ds(api).metadata.generation == generation

        # A set for every node: no affinity at all.
        objs.create_namespaced_custom_object(GROUP, VERSION, other, PLURAL, probeset("everywhere", TRACEPOINT))
        ds = wait_for("no affinity", lambda: (d := get_ds(api)) and affinity_terms(d) is None and d)
        assert ds.metadata.generation == generation + 1
        objs.delete_namespaced_custom_object(GROUP, VERSION, other, PLURAL, "everywhere")
        wait_for("the affinity back", lambda: affinity_terms(get_ds(api)) == [
            [("probeset-test", "pool-a")], [("probeset-test", "pool-b")]])

        # Deleting sets: the DaemonSet stays while one is left, and goes with the last.
        for ns, name in ((namespace, "b"), (other, "c")):
            objs.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        wait_for("pool-b's term gone", lambda: affinity_terms(get_ds(api)) == [[("probeset-test", "pool-a")]])
        assert [(t.key, t.value) for t in get_ds(api).spec.template.spec.tolerations] == [("dedicated", "obs")]
        objs.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "a")
        wait_for("DaemonSet deleted with the last set", lambda: get_ds(api) is None)
        assert "deleted: no ProbeSet to run" in op.text()
    finally:
        for obj in objs.list_namespaced_custom_object(GROUP, VERSION, other, PLURAL)["items"]:
            objs.delete_namespaced_custom_object(GROUP, VERSION, other, PLURAL, obj["metadata"]["name"])
        wait_for(f"ProbeSets of {other} gone", lambda: not objs.list_namespaced_custom_object(
            GROUP, VERSION, other, PLURAL)["items"])
        core.delete_namespace(other)


def test_uninstalling_the_operator_removes_its_daemonset(api, namespace, start_operator):
    """The DaemonSet is owned by the operator's Deployment (PROBESET_OPERATOR_DEPLOYMENT): deleting
    that Deployment (helm uninstall) garbage-collects it, whatever ProbeSets are left."""
    name = f"probeset-operator-{int(time.time() * 1000) % 10**6}"
    apps = client.AppsV1Api(api)
    labels = {"app": name}
    dep = apps.create_namespaced_deployment(OPERATOR_NS, {
        "metadata": {"name": name}, "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "registry.example/x"}]}}}})
    op = start_operator(PROBESET_OPERATOR_DEPLOYMENT=name)
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
        "kept", TRACEPOINT, nodeSelector={"probeset-test": "none"}))
    ds = wait_for("DaemonSet", lambda: get_ds(api))
    assert [(o.kind, o.name, o.uid) for o in ds.metadata.owner_references] == [("Deployment", name, dep.metadata.uid)]
    op.stop()                                      # uninstall: the operator's pods go with its Deployment
    apps.delete_namespaced_deployment(name, OPERATOR_NS, propagation_policy="Background")
    wait_for("the DaemonSet garbage-collected", lambda: get_ds(api) is None, timeout=60)


def ready_node(core, name, taints=(), **labels):
    core.create_node({"metadata": {"name": name, "labels": labels}, "spec": {"taints": list(taints)},
                      "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                                 "message": "played by the test"}]}})


def test_a_sets_nodes_and_an_over_budget_agent(api, namespace, start_operator):
    """desired = the nodes the DaemonSet controller gives an agent that runs the set (here two
    labelled nodes, one of them tainted: 1, as the controller counts it). An agent pod that cannot
    be scheduled shows as AgentsNotScheduled with the scheduler's reason; an agent's report that the
    node is over its budget, as Ready=False OverBudget with the message."""
    # Test nodes get no heartbeat: tolerate the taint the node controller then adds. (The tainted
    # node is created with its taint: with the taint patched in right after creation, the
    # DaemonSet controller counted the node as desired in 1 run of 3, lastingly; cause not found.)
    start_operator(PROBESET_AGENT_TOLERATIONS='[{"key": "node.kubernetes.io/unreachable", "operator": "Exists", '
                                              '"effect": "NoSchedule"}]')
    core, objs = client.CoreV1Api(api), client.CustomObjectsApi(api)
    suffix = str(int(time.time() * 1000) % 10**6)
    node, tainted, label = f"ps-budget-{suffix}", f"ps-tainted-{suffix}", f"budget-{suffix}"
    ready_node(core, node, **{"probeset-test": label})
    ready_node(core, tainted, [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}], **{"probeset-test": label})
    try:
        objs.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, probeset(
            "busy", TRACEPOINT, nodeSelector={"probeset-test": label}))
        # The nodes have no capacity yet: the agent pod is not scheduled, and the set says why.
        obj = wait_for("Ready=False AgentsNotScheduled", lambda: (o := get_ps(api, namespace, "busy")) and
                       (condition(o, "Ready") or {}).get("reason") == "AgentsNotScheduled" and o, timeout=30)
        assert "Insufficient memory" in condition(obj, "Ready")["message"]
        assert obj["status"]["nodes"]["desired"] == 1
        capacity = {"cpu": "4", "memory": "8Gi", "pods": "110"}
        for n in (node, tainted):
            core.patch_node_status(n, {"status": {"capacity": capacity, "allocatable": capacity}})
        obj = wait_for("the set's one node, with a pending agent", lambda: (o := get_ps(api, namespace, "busy")) and
                       (o.get("status") or {}).get("nodes", {}).get("desired") == 1 and
                       (condition(o, "Ready") or {}).get("reason") == "AgentsNotReady" and o, timeout=30)
        assert obj["status"]["nodes"]["summary"] == "0/1"
        # The DaemonSet controller agrees (its status catches up with the nodes in its own time).
        wait_stable(lambda: get_ds(api).status.desired_number_scheduled, 2, 20, "the DaemonSet's desired count")
        assert get_ds(api).status.desired_number_scheduled == 1
        agent_pod_running(api, node)     # its agent runs, and says it does not run the set
        report = {"generation": obj["metadata"]["generation"], "attached": 0, "total": 1,
                  "updated": "2026-12-02T00:00:00Z", "reason": "OverBudget",
                  "failed": [{"name": "t", "attached": False,
                              "error": "this node runs 20 ProbeSets (agent.maxProbeSets), older first"}]}
        write_node_report(api, node, namespace, "busy", report)
        obj = wait_for("Ready=False OverBudget", lambda: (o := get_ps(api, namespace, "busy")) and
                       (condition(o, "Ready") or {}).get("reason") == "OverBudget" and o, timeout=20)
        ready = condition(obj, "Ready")
        assert (ready["status"], ready["message"]) == (
            "False", f"node {node}: this node runs 20 ProbeSets (agent.maxProbeSets), older first")
        assert condition(obj, "Degraded")["reason"] == "OverBudget" and obj["status"]["message"] == ready["message"]
        assert obj["status"]["failedNodes"] == [{"node": node, "attached": 0, "total": 1, "reason": "OverBudget",
                                                 "failed": [{**report["failed"][0], "functions": 0}]}]
        wait_for("OverBudget event", lambda: [e for e in core.list_namespaced_event(namespace).items
                                              if e.reason == "OverBudget" and node in e.message])
    finally:
        for n in (node, tainted):
            core.delete_node(n)
