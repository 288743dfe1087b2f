"""kopf handlers: the glue between the API and the operator's pure logic (summary.py, render.py).

Each handler reads what it needs, calls pure code, and writes the result. Failures carry kopf's
retry policy: an invalid spec is a PermanentError (nothing to retry until the spec changes; its
status says why), an API failure a TemporaryError with a delay. Settings come from the environment
once, at start-up (`settings_from_env`); the handlers keep no module-level state.
"""

from __future__ import annotations

import json
import logging
import os
import random

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from probeset_api import API_GROUP, API_VERSION, PLURAL
from probeset_api.spec import (ProbeSet, SpecError, node_wide_from_env, operator_namespace_from_env,
                               parse_probeset, restrict_values, scope_error, tenant_values_from_env, value_policy)
from probeset_api.schema import FieldError
from probeset_api.status import NodeReport

from .render import LABEL_UID, AgentSettings, daemonset_name, render_daemonset
from .summary import MESSAGE_MAX, Verdict, is_valid, pod_problem, set_condition, summarize

PEERING_NAME = "probeset"
FIELD_MANAGER = "probeset-operator"
FINALIZER = f"{API_GROUP}/agents"
AGGREGATE_INTERVAL = 5.0
API_RETRY_DELAY = 10.0
REJECTED_RETRY_DELAY = 60.0     # a refused DaemonSet needs an admin's change: retry, but not often


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
    agent.node_wide_namespaces = tuple(sorted(node_wide_from_env(environ)))
    agent.tenant_values = tuple(sorted(tenant_values_from_env(environ)))
    agent.metrics_tls_secret = environ.get("PROBESET_AGENT_METRICS_TLS_SECRET", "")
    agent.metrics_auth = environ.get("PROBESET_AGENT_METRICS_AUTH", "false").lower() == "true"
    agent.allow_probeset_tolerations = environ.get("PROBESET_ALLOW_PROBESET_TOLERATIONS", "false").lower() == "true"
    return operator_namespace_from_env(environ), agent


def validate(body: dict, operator_namespace: str, agent: AgentSettings) -> ProbeSet:
    """The ProbeSet an agent DaemonSet may run for `body`; SpecError when none: set-level errors,
    a scope the namespace is not granted, or no valid probe at all. Probes that would record
    values a namespaced set may not (ValuePolicy) are rejected, each with its field."""
    pset = parse_probeset(body)
    error = scope_error(pset, agent.node_wide(operator_namespace))
    if error:
        raise SpecError([error])
    if pset.tolerations and not agent.allow_probeset_tolerations:
        raise SpecError([FieldError("spec.tolerations", "where privileged agents run is the cluster admin's choice "
                                                        "(Helm agent.tolerations), and this cluster does not let "
                                                        "ProbeSets add tolerations: remove spec.tolerations, or ask "
                                                        "the admin (agent.allowProbeSetTolerations)")])
    pset = restrict_values(pset, value_policy(pset, frozenset(agent.tenant_values)))
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


def _api_call(what: str, call, *args, **kwargs):
    """An API call whose failure is retried by kopf after a delay; a 404 returns None."""
    try:
        return call(*args, **kwargs)
    except ApiException as e:
        if e.status == 404:
            return None
        raise kopf.TemporaryError(f"{what}: {e.status} {e.reason}", delay=API_RETRY_DELAY) from e


class DaemonSetRejected(Exception):
    """The API server refused the agents' DaemonSet (its message says why: policy, quota, ...)."""


def _refusal(e: ApiException) -> str:
    try:
        return json.loads(e.body or "{}").get("message") or str(e.reason)
    except ValueError:
        return str(e.reason)


def apply_daemonset(manifest: dict) -> str:
    """Server-side apply: the API server merges, and a manifest equal to what runs changes nothing
    (no rollout). Returns what happened, for the log: created, unchanged or updated; raises
    DaemonSetRejected when the API server refuses the manifest (4xx other than a conflict)."""
    meta = manifest["metadata"]
    what = f"DaemonSet {meta['namespace']}/{meta['name']}"
    apps = client.AppsV1Api()
    before = _api_call(f"reading {what}", apps.read_namespaced_daemon_set, meta["name"], meta["namespace"])
    try:
        after = apps.patch_namespaced_daemon_set(meta["name"], meta["namespace"], manifest, field_manager=FIELD_MANAGER,
                                                 force=True, _content_type="application/apply-patch+yaml")
    except ApiException as e:
        if e.status in (400, 403, 422):
            raise DaemonSetRejected(f"the API server refused the agents' DaemonSet: {_refusal(e)}") from None
        raise kopf.TemporaryError(f"applying {what}: {e.status} {e.reason}", delay=API_RETRY_DELAY) from e
    if before is None:
        return "created"
    # Not the resourceVersion: a no-op apply still rewrites managedFields' time on v1.20 servers.
    kept = [(m.generation, m.labels, m.annotations) for m in (before.metadata, after.metadata)] if after else []
    return "unchanged" if kept and kept[0] == kept[1] else "updated"


def delete_daemonset(namespace: str, name: str) -> bool:
    """True if there was one to delete."""
    return _api_call(f"deleting DaemonSet {namespace}/{name}", client.AppsV1Api().delete_namespaced_daemon_set,
                     name, namespace, propagation_policy="Background") is not None


def _set(status: kopf.Status, patch: kopf.Patch, ctype: str, verdict: Verdict, generation: int | None) -> None:
    current = patch.status.get("conditions") or status.get("conditions") or []
    patch.status["conditions"] = set_condition(current, ctype, verdict, generation)


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL)
def reconcile(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo,
              logger: logging.Logger, **_) -> None:
    """Validate; a valid set gets its agent DaemonSet, an invalid one loses it."""
    generation = meta.get("generation")
    ds_name = daemonset_name(meta["namespace"], meta["name"])
    try:
        pset = validate(dict(body), memo.namespace, memo.agent)
    except SpecError as e:
        message = str(e)
        _set(status, patch, "Valid", Verdict("False", "InvalidSpec", message), generation)
        _set(status, patch, "Ready", Verdict("False", "InvalidSpec", "no agents run for an invalid spec"), generation)
        patch.status["message"] = message[:MESSAGE_MAX]
        patch.status["observedGeneration"] = generation
        kopf.warn(body, reason="InvalidSpec", message=message[:1000])
        if delete_daemonset(memo.namespace, ds_name):
            logger.info("deleted DaemonSet %s/%s of an invalid ProbeSet", memo.namespace, ds_name)
        raise kopf.PermanentError(f"invalid spec: {message[:MESSAGE_MAX]}") from None
    rejected = "; ".join(r.reason for r in pset.rejected)
    if rejected:
        _set(status, patch, "Valid", Verdict("False", "InvalidProbes", rejected), generation)
        kopf.warn(body, reason="InvalidProbes", message=rejected[:1000])
    else:
        _set(status, patch, "Valid", Verdict("True", "SpecValid"), generation)
    try:
        result = apply_daemonset(render_daemonset(dict(body), memo.namespace, memo.agent))
    except DaemonSetRejected as e:
        # Not the user's spec, the cluster's policy or the operator's settings: said on the set, retried.
        _set(status, patch, "Ready", Verdict("False", "DaemonSetRejected", str(e)), generation)
        patch.status["message"] = str(e)[:MESSAGE_MAX]
        patch.status["observedGeneration"] = generation
        kopf.warn(body, reason="DaemonSetRejected", message=str(e)[:1000])
        raise kopf.TemporaryError(str(e)[:MESSAGE_MAX], delay=REJECTED_RETRY_DELAY) from None
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
    agents' reports (summary.summarize); reports of nodes that no longer run an agent are dropped."""
    if not is_valid(status.get("conditions") or []):
        return   # invalid sets have no agents; reconcile() wrote their status
    generation = meta.get("generation")
    ds_name = daemonset_name(meta["namespace"], meta["name"])
    ds = _api_call(f"reading DaemonSet {memo.namespace}/{ds_name}", client.AppsV1Api().read_namespaced_daemon_set,
                   ds_name, memo.namespace)
    if ds is None:
        return
    pods = _api_call(f"listing agent pods in {memo.namespace}", client.CoreV1Api().list_namespaced_pod,
                     memo.namespace, label_selector=f"{LABEL_UID}={meta['uid']}")
    scheduled = {p.spec.node_name for p in (pods.items if pods else []) if p.spec.node_name}
    desired = (ds.status.desired_number_scheduled or 0) if ds.status else 0
    reports = {node: NodeReport.from_status(entry) for node, entry in (status.get("agents") or {}).items()
               if isinstance(entry, dict)}
    pod_dicts = [client.ApiClient().sanitize_for_serialization(p) for p in (pods.items if pods else [])]
    summary = summarize(reports, scheduled, desired, len(body.get("spec", {}).get("probes") or []), generation,
                        pod_problem(pod_dicts, desired))
    if summary.stale:
        patch.status["agents"] = {node: None for node in summary.stale}
    patch.status["nodes"] = vars(summary.nodes).copy()
    patch.status["probes"] = summary.probes
    _set(status, patch, "Degraded", summary.degraded, generation)
    _set(status, patch, "Ready", summary.ready, generation)
    patch.status["message"] = summary.message
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
