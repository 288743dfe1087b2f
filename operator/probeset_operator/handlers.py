"""kopf handlers: the glue between the API and the operator's pure logic (summary.py, render.py,
scheduling.py).

The operator owns one agent DaemonSet (fleet.py: applying it, and what the handlers share). Any change to any ProbeSet (create, update, resume,
delete) recomputes it from a fresh list of all ProbeSets, each admitted or not by the
administrator's policy; recomputes are serialized. Each set keeps its own status: Valid from
admission, Ready/Degraded from the nodes that should run it and their agents' reports (a timer,
every few seconds, reading the watched ClusterCache: no request unless the status changes).

Failures carry kopf's retry policy: an invalid spec is a PermanentError (nothing to retry until the
spec changes; its status says why), an API failure a TemporaryError with a delay. Settings come from
the environment once, at start-up (`settings_from_env`); what the handlers share lives in one
`Fleet` in the memo, no module-level state.
"""

from __future__ import annotations

import json
import logging
import os
import random

import kopf

from probeset_api import API_GROUP, API_VERSION, HISTOGRAM_BUCKETS, PLURAL
from probeset_api.admission import Admission
from probeset_api.kube import Kube
from probeset_api.spec import ProbeSet, SpecError
from probeset_api.status import NodeReport

from .cache import ClusterCache
from .fleet import (OPERATOR_DEPLOYMENT_ENV, REJECTED_RETRY_DELAY, ClusterView, DaemonSetRejected, Fleet,
                    apply_daemonset, delete_daemonset, delete_node_reports, desired_nodes, list_probesets,
                    owner_reference, remove_per_set_daemonsets)
from .render import AGENT_DAEMONSET, AgentSettings, render_daemonset
from .scheduling import pod_node, selector_errors, toleration_errors
from .summary import MESSAGE_MAX, Verdict, is_live, pod_problem, set_condition, summarize

PEERING_NAME = "probeset"
FINALIZER = f"{API_GROUP}/agents"
AGGREGATE_INTERVAL = 2.0       # cheap: a tick whose inputs did not change does nothing


def settings_from_env(environ=os.environ) -> tuple[str, AgentSettings]:
    """(operator namespace, agent settings) from the environment the Helm chart sets."""
    agent = AgentSettings()
    agent.image = environ.get("PROBESET_AGENT_IMAGE", agent.image)
    agent.image_pull_policy = environ.get("PROBESET_AGENT_IMAGE_PULL_POLICY", agent.image_pull_policy)
    agent.service_account = environ.get("PROBESET_AGENT_SERVICE_ACCOUNT", agent.service_account)
    agent.priority_class = environ.get("PROBESET_AGENT_PRIORITY_CLASS") or None
    if environ.get("PROBESET_AGENT_RESOURCES"):
        agent.resources = json.loads(environ["PROBESET_AGENT_RESOURCES"])
    if environ.get("PROBESET_AGENT_TOLERATIONS"):
        agent.extra_tolerations = json.loads(environ["PROBESET_AGENT_TOLERATIONS"])
    if environ.get("PROBESET_AGENT_NODE_SELECTOR"):
        agent.node_selector = dict(json.loads(environ["PROBESET_AGENT_NODE_SELECTOR"]))
    agent.max_probesets = int(environ.get("PROBESET_AGENT_MAX_PROBESETS") or agent.max_probesets)
    agent.max_probes = int(environ.get("PROBESET_AGENT_MAX_PROBES") or agent.max_probes)
    agent.max_series = int(environ.get("PROBESET_AGENT_MAX_SERIES") or agent.max_series)
    agent.histogram_buckets = environ.get("PROBESET_AGENT_HISTOGRAM_BUCKETS") or agent.histogram_buckets
    if agent.histogram_buckets not in HISTOGRAM_BUCKETS:
        raise ValueError(f"PROBESET_AGENT_HISTOGRAM_BUCKETS: {agent.histogram_buckets!r} is not one of "
                         f"{', '.join(HISTOGRAM_BUCKETS)}")
    agent.admission = Admission.from_env(environ)
    agent.metrics_tls_secret = environ.get("PROBESET_AGENT_METRICS_TLS_SECRET", "")
    agent.metrics_auth = environ.get("PROBESET_AGENT_METRICS_AUTH", "false").lower() == "true"
    agent.host_network = environ.get("PROBESET_AGENT_HOST_NETWORK", "false").lower() == "true"
    if environ.get("PROBESET_AGENT_EXTRA_ENV"):
        agent.extra_env = list(json.loads(environ["PROBESET_AGENT_EXTRA_ENV"]))
    return agent.admission.operator_namespace, agent


def admissible(body: dict, policy: Admission) -> ProbeSet:
    """The ProbeSet agents may run (Admission.admit), SpecError when none; also refused: a
    nodeSelector or (allowed) tolerations the API server would refuse in the one DaemonSet every
    set shares, so that one set's bad value cannot keep every other set's agents away."""
    pset = policy.admit(body)
    errors = selector_errors(pset.node_selector)
    if policy.allow_tolerations:
        errors += toleration_errors(pset.tolerations)
    if errors:
        raise SpecError(errors)
    return pset


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    memo.namespace, memo.agent = settings_from_env()
    memo.fleet = Fleet(os.environ.get(OPERATOR_DEPLOYMENT_ENV) or None)
    memo.fleet.cache = ClusterCache(Kube.from_environment(), memo.namespace)
    memo.fleet.cache.start()
    # Replicas elect one active operator through kopf peering: the highest priority works, the
    # others pause. A random priority makes ties (which freeze every replica) practically impossible.
    settings.peering.name = os.environ.get("PROBESET_PEERING", PEERING_NAME)
    settings.peering.clusterwide = True
    settings.peering.priority = random.randint(1, 2**31 - 1)
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING     # our own kopf.warn/kopf.info still post Events
    logging.getLogger("kopf.objects").addFilter(_QuietTimer())


@kopf.on.cleanup()
def stop_watching(memo: kopf.Memo, **_) -> None:
    if getattr(memo, "fleet", None) is not None and memo.fleet.cache is not None:
        memo.fleet.cache.stop()


class _QuietTimer(logging.Filter):
    """Drop kopf's "Timer 'aggregate' succeeded." line: it would repeat every few seconds per set."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timer 'aggregate' succeeded")


def recompute(memo: kopf.Memo, logger: logging.Logger) -> str:
    """Make the one agent DaemonSet fit every admitted ProbeSet of the cluster (none: delete it).
    Returns what happened, for the log; raises DaemonSetRejected (remembered in the fleet until an
    apply succeeds) or kopf.TemporaryError (the API failed)."""
    fleet: Fleet = memo.fleet
    policy = memo.agent.policy(memo.namespace)
    with fleet.lock:
        admitted = []
        for body in list_probesets(fleet.api):
            if body.get("metadata", {}).get("deletionTimestamp"):
                continue    # being deleted: its agents go
            try:
                admissible(body, policy)
            except SpecError:
                continue
            admitted.append(body)
        remove_per_set_daemonsets(fleet, memo.namespace, logger)
        if not admitted:
            # No ProbeSet, no agent pods: nothing would run on any node, and nothing reports.
            fleet.refused(None)
            deleted = delete_daemonset(memo.namespace, AGENT_DAEMONSET, fleet.api)
            delete_node_reports(memo.namespace, fleet.api)
            return "deleted: no ProbeSet to run" if deleted else "absent: no ProbeSet to run"
        manifest = render_daemonset(admitted, memo.namespace, memo.agent)
        owner = owner_reference(fleet, memo.namespace, logger)
        if owner:
            manifest["metadata"]["ownerReferences"] = [owner]
        try:
            result = apply_daemonset(manifest, fleet.api)
        except DaemonSetRejected as e:
            fleet.refused(str(e))
            raise
        fleet.refused(None)
        return f"{result} ({len(admitted)} ProbeSet(s))"


def _set(status: kopf.Status, patch: kopf.Patch, ctype: str, verdict: Verdict, generation: int | None) -> None:
    current = patch.status.get("conditions") or status.get("conditions") or []
    patch.status["conditions"] = set_condition(current, ctype, verdict, generation)


def _log_result(logger: logging.Logger, namespace: str, result: str) -> None:
    logger.info("DaemonSet %s/%s %s", namespace, AGENT_DAEMONSET, result)


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL)
def reconcile(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo,
              logger: logging.Logger, **_) -> None:
    """Admit the set (its Valid condition), then fit the agent DaemonSet to every admitted set."""
    generation = meta.get("generation")
    try:
        pset = admissible(dict(body), memo.agent.policy(memo.namespace))
    except SpecError as e:
        message = str(e)
        _set(status, patch, "Valid", Verdict("False", "InvalidSpec", message), generation)
        _set(status, patch, "Ready", Verdict("False", "InvalidSpec", "no agents run for an invalid spec"), generation)
        patch.status["message"] = message[:MESSAGE_MAX]
        patch.status["observedGeneration"] = generation
        kopf.warn(body, reason="InvalidSpec", message=message[:1000])
        try:    # where agents run no longer counts this set
            _log_result(logger, memo.namespace, recompute(memo, logger))
        except DaemonSetRejected:
            pass    # the admitted sets say so; this one is invalid whatever the DaemonSet
        raise kopf.PermanentError(f"invalid spec: {message[:MESSAGE_MAX]}") from None
    rejected = "; ".join(r.reason for r in pset.rejected)
    if rejected:
        _set(status, patch, "Valid", Verdict("False", "InvalidProbes", rejected), generation)
        kopf.warn(body, reason="InvalidProbes", message=rejected[:1000])
    else:
        _set(status, patch, "Valid", Verdict("True", "SpecValid"), generation)
    try:
        result = recompute(memo, logger)
    except DaemonSetRejected as e:
        # Not the user's spec, the cluster's policy or the operator's settings: said on the set
        # (every other admitted set says it too, from its timer), retried.
        _set(status, patch, "Ready", Verdict("False", "DaemonSetRejected", str(e)), generation)
        patch.status["message"] = str(e)[:MESSAGE_MAX]
        patch.status["observedGeneration"] = generation
        kopf.warn(body, reason="DaemonSetRejected", message=str(e)[:1000])
        raise kopf.TemporaryError(str(e)[:MESSAGE_MAX], delay=REJECTED_RETRY_DELAY) from None
    _log_result(logger, memo.namespace, result)
    patch.status["observedGeneration"] = generation


# A deleted set must leave the DaemonSet (the last one: delete it). kopf's on.delete needs the
# finalizer, which this handler keeps for that reason: with it, a set deleted while no operator
# runs (a restart, a replica handover) is still processed when one resumes, so "no ProbeSet, no
# agent pods" holds. An on.event handler needs none but misses such deletions, and when the last
# set went then, nothing else would ever remove the DaemonSet. The cost: a set left behind after
# the operator is uninstalled keeps its finalizer (docs/operator.md, uninstall).
@kopf.on.delete(API_GROUP, API_VERSION, PLURAL)
def remove_agents(memo: kopf.Memo, logger: logging.Logger, **_) -> None:
    try:
        _log_result(logger, memo.namespace, recompute(memo, logger))
    except DaemonSetRejected:
        pass    # the remaining sets say so (their timers); the deletion goes on


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=AGGREGATE_INTERVAL)
def aggregate(body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch,
              memo: kopf.Memo, logger: logging.Logger, **_) -> None:
    """status.nodes/probes/message and the Ready/Degraded conditions, from the nodes that should
    run the set, the agent pods there and the agents' reports (summary.summarize); reports of
    other nodes are dropped."""
    try:
        admissible(dict(body), memo.agent.policy(memo.namespace))
    except SpecError:
        return   # invalid sets have no agents; reconcile() wrote their status
    generation = meta.get("generation")
    fleet: Fleet = memo.fleet
    if fleet.retry_due():   # a refusal is retried every REJECTED_RETRY_DELAY, whoever met it
        try:
            _log_result(logger, memo.namespace, recompute(memo, logger))
        except DaemonSetRejected:
            pass
    rejection = fleet.rejection
    if rejection:
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        if ready.get("reason") != "DaemonSetRejected":
            kopf.warn(body, reason="DaemonSetRejected", message=rejection[:1000])
        _set(status, patch, "Ready", Verdict("False", "DaemonSetRejected", rejection), generation)
        patch.status["message"] = rejection[:MESSAGE_MAX]
        _drop_unchanged(status, patch)
        return
    if not fleet.synced:
        return   # the cache's watches have not listed yet: the next tick
    if fleet.summarized(meta.get("uid", ""), (generation, json.dumps(dict(spec), sort_keys=True),
                                              json.dumps(dict(status), sort_keys=True))):
        return   # nothing it reads changed since the last tick
    view = fleet.view()
    if view.daemonset is None:
        # Not made yet, or deleted by hand: an admitted set needs it.
        try:
            _log_result(logger, memo.namespace, recompute(memo, logger))
        except DaemonSetRejected:
            pass    # said on the next tick
        return
    summary = _summary(view, fleet.reports(meta.get("namespace"), meta.get("name")), spec, generation)
    if _only_progress(summary, status, generation) and fleet.wrote_recently(meta.get("uid", "")):
        # Nodes are still reporting this generation and nothing but the counts changed: every write
        # of the set reaches every agent's watch, so progress is written every PROGRESS_INTERVAL.
        fleet.forget_summary(meta.get("uid", ""))
        return
    old = next((c for c in status.get("conditions") or [] if c.get("type") == "Degraded"), {})
    if summary.degraded.status == "True" and (old.get("status"), old.get("reason")) != ("True", summary.degraded.reason):
        # Once per problem, from the summary: one Event names the first nodes, not one per node.
        kopf.warn(body, reason=summary.degraded.reason, message=summary.message[:1000])
    patch.status["nodes"] = vars(summary.nodes).copy()
    patch.status["probes"] = summary.probes
    patch.status["failedNodes"] = [f.to_status() for f in summary.failed_nodes] or None
    _set(status, patch, "Degraded", summary.degraded, generation)
    _set(status, patch, "Ready", summary.ready, generation)
    patch.status["message"] = summary.message
    _drop_unchanged(status, patch)
    if patch.status:
        fleet.wrote(meta.get("uid", ""))


def _only_progress(summary, status: kopf.Status, generation: int | None) -> bool:
    """Whether some nodes have not reported this generation yet and the summary differs from the
    status only in its counts: same Ready and Degraded reasons, already for this generation."""
    nodes = summary.nodes
    if nodes.ready + nodes.failing + nodes.declined >= nodes.desired:
        return False
    current = {c.get("type"): c for c in status.get("conditions") or []}
    return all(current.get(t, {}).get("reason") == v.reason and current[t].get("observedGeneration") == generation
               for t, v in (("Ready", summary.ready), ("Degraded", summary.degraded)))


def _summary(view: ClusterView, reports: dict[str, NodeReport], spec: kopf.Spec, generation: int | None):
    desired = desired_nodes(view, dict(spec.get("nodeSelector") or {}))
    pods = [p for p in view.pods if pod_node(p) in desired]
    scheduled = {p["spec"]["nodeName"] for p in pods if p["spec"].get("nodeName")}
    live = {p["spec"]["nodeName"] for p in pods if p["spec"].get("nodeName") and is_live(p)}
    return summarize(reports, scheduled, len(desired), len(spec.get("probes") or []), generation,
                     pod_problem([p for p in pods if not p["metadata"].get("deletionTimestamp")], len(desired)),
                     live)


def _drop_unchanged(status: kopf.Status, patch: kopf.Patch) -> None:
    """Leave out of the patch what the status already says (the timer runs every few seconds)."""
    for key in list(patch.status.keys()):
        if status.get(key) == patch.status[key]:
            del patch.status[key]


def run(liveness: str = "http://0.0.0.0:8080/healthz") -> None:
    """Run the operator until SIGTERM (kopf embedded)."""
    import asyncio
    asyncio.run(kopf.operator(clusterwide=True, liveness_endpoint=liveness,
                              peering_name=os.environ.get("PROBESET_PEERING", PEERING_NAME)))
