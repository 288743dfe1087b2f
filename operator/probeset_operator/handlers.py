"""kopf handlers: validate ProbeSets, reconcile their agent DaemonSets, aggregate node status.

Settings come from the environment once, at start-up (see `settings_from_env`); the handlers keep
no module-level state.
"""

from __future__ import annotations

import datetime
import logging
import os
import random

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from probeset_agent.spec import (API_GROUP, API_VERSION, NODE_WIDE_NAMESPACES_ENV, ProbeSet, SpecError,
                                  node_wide_namespaces, parse_probeset, scope_error)

from .render import LABEL_UID, AgentSettings, daemonset_name, render_daemonset

PLURAL = "probesets"
PEERING_NAME = "probeset"
FINALIZER = f"{API_GROUP}/agents"
AGGREGATE_INTERVAL = 5.0
MESSAGE_MAX = 300


def settings_from_env() -> tuple[str, AgentSettings]:
    """(operator namespace, agent settings) from the environment the Helm chart sets."""
    import json
    namespace = os.environ.get("PROBESET_OPERATOR_NAMESPACE", "probeset-system")
    agent = AgentSettings()
    agent.image = os.environ.get("PROBESET_AGENT_IMAGE", agent.image)
    agent.image_pull_policy = os.environ.get("PROBESET_AGENT_IMAGE_PULL_POLICY", agent.image_pull_policy)
    agent.service_account = os.environ.get("PROBESET_AGENT_SERVICE_ACCOUNT", agent.service_account)
    agent.priority_class = os.environ.get("PROBESET_AGENT_PRIORITY_CLASS") or None
    if os.environ.get("PROBESET_AGENT_RESOURCES"):
        agent.resources = json.loads(os.environ["PROBESET_AGENT_RESOURCES"])
    if os.environ.get("PROBESET_AGENT_TOLERATIONS"):
        agent.extra_tolerations = json.loads(os.environ["PROBESET_AGENT_TOLERATIONS"])
    agent.node_wide_namespaces = tuple(sorted(node_wide_namespaces(os.environ.get(NODE_WIDE_NAMESPACES_ENV),
                                                                   namespace)))
    return namespace, agent


def validate(body: dict, operator_namespace: str, agent: AgentSettings) -> ProbeSet:
    """The ProbeSet an agent DaemonSet may run for `body`; SpecError when none: set-level errors,
    a scope the namespace is not granted, or no valid probe at all."""
    pset = parse_probeset(body)
    error = scope_error(pset, agent.node_wide(operator_namespace))
    if error:
        raise SpecError([error])
    if not pset.probes:   # every probe rejected: nothing for an agent to run
        raise SpecError([e for r in pset.rejected for e in r.errors])
    return pset


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    memo.namespace, memo.agent = settings_from_env()
    # Replicas elect one active operator through kopf peering: the highest priority works, the
    # others pause. A random priority makes ties (which freeze every replica) practically impossible.
    settings.peering.name = os.environ.get("PROBESET_PEERING", PEERING_NAME)
    settings.peering.clusterwide = True
    settings.peering.priority = random.randint(1, 2**31 - 1)
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING     # our own kopf.warn/kopf.info still post Events
    logging.getLogger("kopf.objects").addFilter(_QuietTimer())


class _QuietTimer(logging.Filter):
    """Drop kopf's "Timer 'aggregate' succeeded." line: it would repeat every few seconds per set."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timer 'aggregate' succeeded")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(status: dict, patch: kopf.Patch, ctype: str, state: str, reason: str, message: str,
                  generation: int | None) -> None:
    """Update one condition in patch.status.conditions, keeping lastTransitionTime when unchanged."""
    conditions = [dict(c) for c in (patch.status.get("conditions") or status.get("conditions") or [])]
    old = next((c for c in conditions if c.get("type") == ctype), None)
    new = {"type": ctype, "status": state, "reason": reason, "message": message[:MESSAGE_MAX],
           "observedGeneration": generation,
           "lastTransitionTime": old["lastTransitionTime"] if old and old.get("status") == state
           and old.get("lastTransitionTime") else _now()}
    conditions = [c for c in conditions if c.get("type") != ctype] + [new]
    patch.status["conditions"] = sorted(conditions, key=lambda c: ["Valid", "Ready", "Degraded"].index(c["type"])
                                        if c["type"] in ("Valid", "Ready", "Degraded") else 9)


def _apps() -> client.AppsV1Api:
    return client.AppsV1Api()


def apply_daemonset(manifest: dict) -> str:
    """Create or update (rolling) the DaemonSet; returns what was done, for the log."""
    apps = _apps()
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        current = apps.read_namespaced_daemon_set(name, ns)
    except ApiException as e:
        if e.status != 404:
            raise
        apps.create_namespaced_daemon_set(ns, manifest)
        return "created"
    current_dict = client.ApiClient().sanitize_for_serialization(current)
    wanted = {"metadata": {"labels": manifest["metadata"]["labels"]}, "spec": manifest["spec"]}
    difference = _difference(current_dict, wanted, "")
    if difference is None:
        return "unchanged"
    manifest = dict(manifest, metadata=dict(manifest["metadata"],
                                            resourceVersion=current.metadata.resource_version))
    apps.replace_namespaced_daemon_set(name, ns, manifest)
    return f"updated ({difference} changed)"


def _difference(actual, wanted, path: str) -> str | None:
    """The first field path where `actual` lacks `wanted`'s value, or None. The server adds
    defaults (ignored here) and omits zero values, empty lists and maps."""
    if actual is None and (wanted in ({}, [], False, "") or wanted == 0):
        return None   # zero values are omitted in the server's JSON
    if wanted in ({}, []) and actual in ({}, []):
        return None
    if isinstance(wanted, dict):
        if not isinstance(actual, dict):
            return path or "."
        for k, v in wanted.items():
            found = _difference(actual.get(k), v, f"{path}.{k}")
            if found:
                return found
        return None
    if isinstance(wanted, list):
        if not isinstance(actual, list) or len(actual) != len(wanted):
            return path
        for i, (a, w) in enumerate(zip(actual, wanted)):
            found = _difference(a, w, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if actual == wanted else path


def delete_daemonset(namespace: str, name: str) -> bool:
    try:
        _apps().delete_namespaced_daemon_set(name, namespace, propagation_policy="Background")
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL)
def reconcile(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo,
              logger: logging.Logger, **_) -> None:
    generation = meta.get("generation")
    ds_name = daemonset_name(meta["namespace"], meta["name"])
    try:
        pset = validate(dict(body), memo.namespace, memo.agent)
    except SpecError as e:
        message = str(e)
        set_condition(status, patch, "Valid", "False", "InvalidSpec", message, generation)
        set_condition(status, patch, "Ready", "False", "InvalidSpec", "no agents run for an invalid spec",
                      generation)
        patch.status["message"] = message[:MESSAGE_MAX]
        patch.status["observedGeneration"] = generation
        kopf.warn(body, reason="InvalidSpec", message=message[:1000])
        if delete_daemonset(memo.namespace, ds_name):
            logger.info("deleted DaemonSet %s/%s of an invalid ProbeSet", memo.namespace, ds_name)
        return
    rejected = "; ".join(r.reason for r in pset.rejected)
    if rejected:
        set_condition(status, patch, "Valid", "False", "InvalidProbes", rejected, generation)
        kopf.warn(body, reason="InvalidProbes", message=rejected[:1000])
    else:
        set_condition(status, patch, "Valid", "True", "SpecValid", "", generation)
    result = apply_daemonset(render_daemonset(dict(body), memo.namespace, memo.agent))
    logger.info("DaemonSet %s/%s %s", memo.namespace, ds_name, result)
    patch.status["observedGeneration"] = generation


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL)
def remove_agents(meta: kopf.Meta, memo: kopf.Memo, logger: logging.Logger, **_) -> None:
    ds_name = daemonset_name(meta["namespace"], meta["name"])
    if delete_daemonset(memo.namespace, ds_name):
        logger.info("deleted DaemonSet %s/%s", memo.namespace, ds_name)


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=AGGREGATE_INTERVAL)
def aggregate(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo,
              **_) -> None:
    """status.nodes/probes/message and the Ready/Degraded conditions, from the DaemonSet and the
    agents' reports; reports of nodes that no longer run an agent are dropped."""
    generation = meta.get("generation")
    if not any(c.get("type") == "Valid" and c.get("status") != "False" for c in status.get("conditions") or []):
        return   # invalid sets have no agents; reconcile() wrote their status
    ds_name = daemonset_name(meta["namespace"], meta["name"])
    try:
        ds = _apps().read_namespaced_daemon_set(ds_name, memo.namespace)
    except ApiException as e:
        if e.status == 404:
            return
        raise
    pods = client.CoreV1Api().list_namespaced_pod(memo.namespace, label_selector=f"{LABEL_UID}={meta['uid']}")
    scheduled = {p.spec.node_name for p in pods.items if p.spec.node_name}
    desired = (ds.status.desired_number_scheduled or 0) if ds.status else 0
    total = len(body.get("spec", {}).get("probes") or [])
    agents = dict(status.get("agents") or {})
    current = {node: a for node, a in agents.items() if node in scheduled and a.get("generation") == generation}
    ready_nodes = [n for n, a in current.items() if not a.get("failed") and a.get("attached") == total]
    failing = {n: a for n, a in current.items() if a.get("failed")}
    stale = [node for node in agents if node not in scheduled]
    if stale:
        patch.status["agents"] = {node: None for node in stale}

    nodes = {"desired": desired, "ready": len(ready_nodes), "failing": len(failing),
             "summary": f"{len(ready_nodes)}/{desired}"}
    attached = min((a.get("attached", 0) for a in current.values()), default=0)
    patch.status["nodes"] = nodes
    patch.status["probes"] = f"{attached}/{total}"
    if failing:
        node, report = sorted(failing.items())[0]
        first = report["failed"][0]
        message = f"{len(failing)} node(s) with failed probes; {node}: {first.get('name')}: {first.get('error')}"
        set_condition(status, patch, "Degraded", "True", "ProbesFailed", message, generation)
    else:
        message = "" if desired and len(ready_nodes) == desired else \
            f"waiting for agents: {len(ready_nodes)}/{desired} nodes report every probe attached"
        set_condition(status, patch, "Degraded", "False", "AllProbesAttached" if not message else "Pending",
                      "", generation)
    ready = desired > 0 and len(ready_nodes) == desired
    set_condition(status, patch, "Ready", "True" if ready else "False",
                  "AgentsReady" if ready else ("NoNodes" if desired == 0 else "AgentsNotReady"),
                  message or "", generation)
    patch.status["message"] = message[:MESSAGE_MAX]
    _drop_unchanged(status, patch)


def _drop_unchanged(status: kopf.Status, patch: kopf.Patch) -> None:
    """Leave out of the patch what the status already says (the timer runs every few seconds)."""
    for key in list(patch.status.keys()):
        if key != "agents" and status.get(key) == patch.status[key]:
            del patch.status[key]


def run(liveness: str = "http://0.0.0.0:8080/healthz") -> None:
    """Run the operator until SIGTERM (kopf embedded)."""
    import asyncio
    asyncio.run(kopf.operator(clusterwide=True, liveness_endpoint=liveness,
                              peering_name=os.environ.get("PROBESET_PEERING", PEERING_NAME)))
