"""Where the one agent DaemonSet runs, from the admitted ProbeSets: pure functions, no API.

- node_affinity(): the union of the sets' nodeSelectors (one required term per distinct selector,
  terms ORed); a set without a nodeSelector wants every node, so then no affinity at all.
- tolerations(): the administrator's (Helm agent.tolerations), plus the sets' own only where the
  administrator allows them; duplicates removed.
- runs_on(): whether a node has an agent that runs a set: the set's nodeSelector matches it and the
  DaemonSet controller gives it a pod (nodeSelector, node affinity, NoSchedule/NoExecute taints),
  as the controller decides it.
- pod_node(): the node an agent pod is for, bound or not.
- selector_errors(), toleration_errors(): what the API server would refuse in the shared DaemonSet
  (one set's bad value must not block every other set's agents).

Everything comes out sorted: a ProbeSet change that does not change where agents must run renders
the same DaemonSet, and server-side apply then rolls nothing.
"""

from __future__ import annotations

import json
import re
from typing import Iterable, Mapping

from probeset_api.validation import FieldError

# What the DaemonSet controller adds to every daemon pod (k8s v1.20,
# pkg/controller/daemon/util.AddOrUpdateDaemonPodTolerations; network-unavailable only with
# hostNetwork, which agents do not use): node problems do not keep agents away.
DAEMON_TOLERATIONS = tuple({"key": f"node.kubernetes.io/{key}", "operator": "Exists", "effect": effect}
                           for key, effect in (("not-ready", "NoExecute"), ("unreachable", "NoExecute"),
                                               ("disk-pressure", "NoSchedule"), ("memory-pressure", "NoSchedule"),
                                               ("pid-pressure", "NoSchedule"), ("unschedulable", "NoSchedule")))
# Taints that keep a daemon pod away (PreferNoSchedule does not).
_REPELLING = ("NoSchedule", "NoExecute")

_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _canonical(selector: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(selector.items()))


def node_affinity(selectors: Iterable[Mapping[str, str]]) -> dict | None:
    """Required node affinity that admits exactly the nodes some selector matches, or None (every
    node) when a selector is empty or there is none. A selector that includes another one (a
    superset of its labels) selects no node the other does not, so it adds no term."""
    distinct = {_canonical(s) for s in selectors}
    if not distinct or () in distinct:
        return None
    kept = sorted(s for s in distinct if not any(o != s and set(o) < set(s) for o in distinct))
    terms = [{"matchExpressions": [{"key": k, "operator": "In", "values": [v]} for k, v in s]} for s in kept]
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}


def _normal(toleration: Mapping) -> dict:
    """A toleration without empty fields (an empty effect or value means the same as none)."""
    return {k: v for k, v in sorted(toleration.items()) if v is not None and v != ""}


def tolerations(admin: Iterable[Mapping], sets: Iterable[Iterable[Mapping]], allow_sets: bool) -> list[dict]:
    """The administrator's tolerations in their order, then (only with allow_sets) the sets' own
    that the administrator's do not already list, sorted; each once."""
    out: list[dict] = []
    seen: set[str] = set()
    for t in admin:
        key = json.dumps(_normal(t), sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(_normal(t))
    extra = {json.dumps(_normal(t), sort_keys=True) for ts in (sets if allow_sets else ()) for t in ts} - seen
    return out + [json.loads(key) for key in sorted(extra)]


def tolerates(toleration: Mapping, taint: Mapping) -> bool:
    """Kubernetes' Toleration.ToleratesTaint."""
    effect, key = toleration.get("effect") or "", toleration.get("key") or ""
    if effect and effect != taint.get("effect"):
        return False
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    return operator == "Equal" and (toleration.get("value") or "") == (taint.get("value") or "")


def _requirement_holds(labels: Mapping[str, str], req: Mapping) -> bool:
    key, op, values = req.get("key"), req.get("operator"), req.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    return False    # Gt, Lt: never rendered here


def affinity_admits(labels: Mapping[str, str], affinity: Mapping | None) -> bool:
    """Whether a node with these labels satisfies the required node affinity (terms ORed, the
    expressions of a term ANDed; no affinity: every node)."""
    required = ((affinity or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if not required:
        return True
    return any(all(_requirement_holds(labels, r) for r in term.get("matchExpressions") or [])
               for term in required.get("nodeSelectorTerms") or [])


def runs_on(node: Mapping, selector: Mapping[str, str], pod_spec: Mapping) -> bool:
    """Whether a node (API dict) gets an agent that runs a set with this nodeSelector: the set's
    selector matches the node's labels, and the DaemonSet controller gives the node a pod of this
    template (the DaemonSet's pod spec): its nodeSelector and required node affinity match, and its
    tolerations plus the controller's own tolerate every NoSchedule and NoExecute taint."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    if any(labels.get(k) != v for k, v in {**selector, **(pod_spec.get("nodeSelector") or {})}.items()):
        return False
    if not affinity_admits(labels, pod_spec.get("affinity")):
        return False
    tols = list(pod_spec.get("tolerations") or []) + list(DAEMON_TOLERATIONS)
    return all(any(tolerates(t, taint) for t in tols)
               for taint in (node.get("spec") or {}).get("taints") or [] if taint.get("effect") in _REPELLING)


def pod_node(pod: Mapping) -> str | None:
    """The node an agent pod (API dict) is for: where it is bound, else the node the DaemonSet
    controller pinned it to (a required matchFields metadata.name term), else None."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return spec["nodeName"]
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution") or {}
    for term in required.get("nodeSelectorTerms") or []:
        for field in term.get("matchFields") or []:
            if field.get("key") == "metadata.name" and field.get("operator") == "In" and \
                    len(field.get("values") or []) == 1:
                return field["values"][0]
    return None


def _label_name_error(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "its prefix must be a DNS subdomain (lowercase letters, digits, '-' and '.')"
    if not name or len(name) > 63 or not _NAME.match(name):
        return "a label name has at most 63 characters: letters, digits, '-', '_' and '.', starting and ending " \
               "with a letter or digit (with an optional DNS-subdomain prefix and '/')"
    return None


def _label_value_error(value: str) -> str | None:
    if value and (len(value) > 63 or not _NAME.match(value)):
        return "a label value is empty or has at most 63 characters: letters, digits, '-', '_' and '.', " \
               "starting and ending with a letter or digit"
    return None


def selector_errors(selector: Mapping[str, str], path: str = "spec.nodeSelector") -> list[FieldError]:
    """Keys and values no node label can have (the API server would refuse them in the affinity)."""
    errors = []
    for key, value in sorted(selector.items()):
        why = _label_name_error(key)
        if why:
            errors.append(FieldError(path, f"key {key!r}: {why}"))
        why = _label_value_error(value)
        if why:
            errors.append(FieldError(f"{path}.{key}", f"value {value!r}: {why}"))
    return errors


def toleration_errors(tols: Iterable[Mapping], path: str = "spec.tolerations") -> list[FieldError]:
    """What the API server's toleration validation refuses (k8s v1.20 ValidateTolerations); the
    CRD's schema already checks the operator and effect enums."""
    errors = []
    for i, t in enumerate(tols):
        where, key, operator = f"{path}[{i}]", t.get("key") or "", t.get("operator") or "Equal"
        why = key and _label_name_error(key)
        if why:
            errors.append(FieldError(f"{where}.key", why))
        if not key and operator != "Exists":
            errors.append(FieldError(f"{where}.operator", "must be Exists when key is empty (which means every "
                                                          "taint)"))
        if t.get("tolerationSeconds") is not None and t.get("effect") != "NoExecute":
            errors.append(FieldError(f"{where}.effect", "must be NoExecute when tolerationSeconds is set"))
        if operator == "Exists" and t.get("value"):
            errors.append(FieldError(f"{where}.value", "must be empty when operator is Exists"))
        why = operator == "Equal" and _label_value_error(t.get("value") or "")
        if why:
            errors.append(FieldError(f"{where}.value", why))
    return errors
