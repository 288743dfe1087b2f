"""What the operator writes into a ProbeSet's status, computed without the API: the summary of the
agents' reports and the conditions. Pure functions; handlers.py reads and writes the API."""

from __future__ import annotations

from dataclasses import dataclass

from probeset_api.status import CONDITION_TYPES, MAX_FAILED_NODES, FailedNode, NodeCounts, NodeReport, now

MESSAGE_MAX = 300


@dataclass(frozen=True)
class Verdict:
    """One condition's state, reason and message."""

    status: str
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Summary:
    nodes: NodeCounts
    probes: str                  # attached on every reporting node / in the spec
    message: str
    ready: Verdict
    degraded: Verdict
    failed_nodes: tuple[FailedNode, ...] = ()   # the first MAX_FAILED_NODES failing or declining nodes


# Container waiting reasons, by what they tell a user (kubelet's wording).
_PULL = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
_START = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


def pod_problem(pods: list[dict], desired: int) -> Verdict | None:
    """Why agent pods (API dicts) are not running, the most telling reason first, or None: not
    created by the DaemonSet, not scheduled, image not pulled, not starting, crash-looping."""
    found: dict[str, list[str]] = {}
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        for c in status.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                found.setdefault("AgentsNotScheduled", []).append(f"{name}: {c.get('message') or c.get('reason')}")
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason", "")
            what = f"{name}: {reason}" + (f": {waiting['message']}" if waiting.get("message") else "")
            if reason in _PULL:
                found.setdefault("ImagePullFailed", []).append(what)
            elif reason in _START:
                found.setdefault("AgentsNotStarting", []).append(what)
            elif reason == "CrashLoopBackOff":
                found.setdefault("AgentsCrashLooping", []).append(f"{what} (restarts: {cs.get('restartCount', 0)})")
    if len(pods) < desired:
        found.setdefault("AgentPodsNotCreated", []).append(
            f"the DaemonSet created {len(pods)} of {desired} agent pod(s) (see its events)")
    for reason in ("ImagePullFailed", "AgentsNotStarting", "AgentsCrashLooping", "AgentsNotScheduled",
                   "AgentPodsNotCreated"):
        if reason in found:
            items = found[reason]
            more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
            return Verdict("False", reason, (items[0] + more)[:MESSAGE_MAX])
    return None


# What an agent's report.reason says about a node that does not run the set, as the Ready reason.
DECLINED = {"OverBudget": "OverBudget", "InvalidSpec": "AgentRejectedSpec"}


def declined(reports: dict[str, NodeReport]) -> Verdict | None:
    """Why agents do not run the set on some nodes although their pods run there (reports with a
    reason: over the node's budget, or a spec the agent refuses), first node by name, or None."""
    found = sorted((n, r) for n, r in reports.items() if r.reason)
    if not found:
        return None
    node, report = found[0]
    why = (report.failed[0].error if report.failed and report.failed[0].error else None) or report.reason
    more = f" (and {len(found) - 1} more node(s))" if len(found) > 1 else ""
    return Verdict("False", DECLINED.get(report.reason, report.reason), f"node {node}: {why}{more}"[:MESSAGE_MAX])


def is_live(pod: dict) -> bool:
    """An agent pod (API dict) that runs now: Running, every container Ready, not being deleted."""
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    return (not (pod.get("metadata") or {}).get("deletionTimestamp") and status.get("phase") == "Running"
            and bool(statuses) and all(c.get("ready") for c in statuses))


def summarize(reports: dict[str, NodeReport], scheduled: set[str], desired: int, total: int,
              generation: int | None, problem: Verdict | None = None, live: set[str] | None = None) -> Summary:
    """The summary of the agents' reports. Only reports of nodes that should run the set and have
    an agent pod (`scheduled`) that describe this generation count; the others are stale (old
    generation) or ignored (no pod). With `live` (nodes whose agent pod is Ready and not being
    deleted), a report counts only while its node's agent lives: the report of an agent that was
    replaced by a pod that cannot start says nothing of now. A node whose agent does not run the
    set (report.reason: OverBudget, InvalidSpec) makes the set not Ready and Degraded with that
    reason. `problem` (pod_problem) says why agents do not run, when they do not."""
    current = {n: r for n, r in reports.items() if n in scheduled and r.generation == generation
               and (live is None or n in live)}
    refused = declined(current)
    running = {n: r for n, r in current.items() if not r.reason}
    ready_nodes = [n for n, r in running.items() if not r.failed and r.attached == total]
    failing = {n: r for n, r in running.items() if r.failed}
    attached = min((r.attached for r in current.values()), default=0)
    declining = {n: r for n, r in current.items() if r.reason}
    nodes = NodeCounts(desired=desired, ready=len(ready_nodes), failing=len(failing),
                       summary=f"{len(ready_nodes)}/{desired}", declined=len(declining))
    named = sorted({**failing, **declining}.items())[:MAX_FAILED_NODES]
    if failing:
        node, report = sorted(failing.items())[0]
        first = report.failed[0]
        message = f"{len(failing)} node(s) with failed probes; {node}: {first.name}: {first.error}"
        degraded = Verdict("True", "ProbesFailed", message)
    elif refused:
        message = refused.message
        degraded = Verdict("True", refused.reason, message)
    else:
        message = "" if desired and len(ready_nodes) == desired else \
            f"waiting for agents: {len(ready_nodes)}/{desired} nodes report every probe attached"
        degraded = Verdict("False", "Pending" if message else "AllProbesAttached")
    is_ready = desired > 0 and len(ready_nodes) == desired
    ready = Verdict("True" if is_ready else "False",
                    "AgentsReady" if is_ready else ("NoNodes" if desired == 0 else "AgentsNotReady"), message)
    if refused:
        ready = Verdict("False", refused.reason, refused.message)
        message = message if failing else refused.message
    elif not is_ready and problem is not None and not failing:
        ready, message = problem, problem.message
    return Summary(nodes, f"{attached}/{total}", message[:MESSAGE_MAX], ready, degraded,
                   tuple(FailedNode.of(n, r) for n, r in named))


def set_condition(conditions: list[dict], ctype: str, verdict: Verdict, generation: int | None,
                  at: str | None = None) -> list[dict]:
    """`conditions` with `ctype` set to `verdict`; lastTransitionTime kept while the state stays.
    Sorted Valid, Ready, Degraded, then any others."""
    old = next((c for c in conditions if c.get("type") == ctype), None)
    kept = old["lastTransitionTime"] if old and old.get("status") == verdict.status and \
        old.get("lastTransitionTime") else None
    new = {"type": ctype, "status": verdict.status, "reason": verdict.reason,
           "message": verdict.message[:MESSAGE_MAX], "observedGeneration": generation,
           "lastTransitionTime": kept or at or now()}
    out = [dict(c) for c in conditions if c.get("type") != ctype] + [new]
    return sorted(out, key=lambda c: CONDITION_TYPES.index(c["type"]) if c["type"] in CONDITION_TYPES else 9)
