"""The ProbeSet CustomResourceDefinition, built from the shared model (agent/probeset_agent/spec.py).

crds/probeset.io_probesets.yaml is this function's output; a test fails when they differ
(`probeset crd > crds/probeset.io_probesets.yaml` regenerates it).
"""

from __future__ import annotations

from probeset_agent.spec import API_GROUP, API_VERSION, KIND, crd_schema

PLURAL = "probesets"
CRD_NAME = f"{PLURAL}.{API_GROUP}"

_PROBE_RESULT = {
    "type": "object",
    "description": "Result of one probe on one node.",
    "properties": {
        "name": {"type": "string", "description": "The probe's name."},
        "attached": {"type": "boolean", "description": "Whether the probe is attached (to at least one function)."},
        "attachedVia": {"type": "string", "description": "kprobe, fentry, uprobe or tracepoint."},
        "functions": {"type": "integer", "description": "Functions or tracepoints attached."},
        "error": {"type": "string", "description": "Why the probe (or part of it) did not attach."},
    },
}

STATUS_SCHEMA = {
    "type": "object",
    "description": "Observed state, written by the operator (summary) and by the node agents (their node).",
    "properties": {
        "observedGeneration": {"type": "integer", "description": "The spec generation this status describes."},
        "message": {"type": "string", "description": "One line saying what is wrong, if anything."},
        "probes": {"type": "string", "description": "Probes attached on every ready node / probes in the spec."},
        "nodes": {
            "type": "object",
            "description": "Agent pods: desired by the DaemonSet, ready, and reporting all probes attached.",
            "properties": {
                "desired": {"type": "integer", "description": "Nodes that should run an agent."},
                "ready": {"type": "integer", "description": "Nodes whose agent runs with every probe attached."},
                "failing": {"type": "integer", "description": "Nodes whose agent reports failed probes."},
                "summary": {"type": "string", "description": "ready/desired, for kubectl get."},
            },
        },
        "conditions": {
            "type": "array",
            "description": "Valid, Ready and Degraded, with reasons.",
            "items": {
                "type": "object",
                "required": ["type", "status"],
                "properties": {
                    "type": {"type": "string", "description": "Valid, Ready or Degraded."},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"], "description": "Condition state."},
                    "reason": {"type": "string", "description": "CamelCase reason."},
                    "message": {"type": "string", "description": "Human-readable details."},
                    "observedGeneration": {"type": "integer", "description": "Generation it was computed for."},
                    "lastTransitionTime": {"type": "string", "format": "date-time",
                                           "description": "When status last changed."},
                },
            },
        },
        "agents": {
            "type": "object",
            "description": "Per node, written by that node's agent (merge patch keyed by node name): full "
                           "per-probe results only while something fails, to keep the object small.",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "generation": {"type": "integer", "description": "Spec generation the agent runs."},
                    "attached": {"type": "integer", "description": "Probes attached on this node."},
                    "total": {"type": "integer", "description": "Probes in the spec."},
                    "updated": {"type": "string", "description": "When the agent wrote this entry."},
                    "failed": {"type": "array", "items": _PROBE_RESULT,
                               "description": "Probes that did not fully attach, with the reason."},
                },
            },
        },
    },
}


def build_crd() -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/name": "probeset"}},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": "probeset",
                      "shortNames": ["pset"], "categories": ["observability"]},
            "versions": [{
                "name": API_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Ready", "type": "string", "jsonPath": ".status.nodes.summary",
                     "description": "Nodes with every probe attached / nodes that should run an agent."},
                    {"name": "Probes", "type": "string", "jsonPath": ".status.probes",
                     "description": "Probes attached on every ready node / probes in the spec."},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 0,
                     "description": "What is wrong, if anything."},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A set of kernel and user-space probes whose events the node agents count "
                                   "and serve as Prometheus metrics.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": crd_schema(),
                        "status": STATUS_SCHEMA,
                    },
                }},
            }],
        },
    }


def crd_yaml() -> str:
    import yaml
    header = ("# Generated from agent/probeset_agent/spec.py by `probeset crd`; do not edit.\n"
              "# A test fails when this file and the model differ.\n")
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
