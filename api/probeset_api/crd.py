"""The CustomResourceDefinitions, built from the shared model: ProbeSet (the spec schema of
schema.py, the status contract of status.py) and ProbeSetNode (one per node, in the operator's
namespace: its agent's reports on every set, status.py).

crds/<plural>.<group>.yaml are this module's output; a test fails when they differ
(`probeset crd DIR` regenerates them).
"""

from __future__ import annotations

from . import API_GROUP, API_VERSION, KIND, PLURAL
from .schema import crd_schema
from .status import NODE_STATUS_SCHEMA, STATUS_SCHEMA

CRD_NAME = f"{PLURAL}.{API_GROUP}"
NODE_KIND, NODE_PLURAL = "ProbeSetNode", "probesetnodes"
NODE_CRD_NAME = f"{NODE_PLURAL}.{API_GROUP}"


def _crd(kind: str, plural: str, scope: str, short: list[str], columns: list[dict], schema: dict) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{API_GROUP}", "labels": {"app.kubernetes.io/name": "probeset"}},
        "spec": {
            "group": API_GROUP,
            "scope": scope,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": short, "categories": ["observability"]},
            "versions": [{"name": API_VERSION, "served": True, "storage": True, "subresources": {"status": {}},
                          "additionalPrinterColumns": columns, "schema": {"openAPIV3Schema": schema}}],
        },
    }


def build_crd() -> dict:
    """The ProbeSet CRD."""
    return _crd(KIND, PLURAL, "Namespaced", ["pset"], [
        {"name": "Ready", "type": "string", "jsonPath": ".status.nodes.summary",
         "description": "Nodes with every probe attached / nodes that should run an agent."},
        {"name": "Probes", "type": "string", "jsonPath": ".status.probes",
         "description": "Probes attached on every ready node / probes in the spec."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 0,
         "description": "What is wrong, if anything."},
    ], {
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
    })


def build_node_crd() -> dict:
    """The ProbeSetNode CRD: written by agents only, read by the operator (and administrators)."""
    return _crd(NODE_KIND, NODE_PLURAL, "Namespaced", ["psnode"], [
        {"name": "Sets", "type": "string", "jsonPath": ".status.summary",
         "description": "Sets running with every probe attached / sets reported."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ], {
        "type": "object",
        "description": "One node's agent's reports on every ProbeSet it runs or was asked to run. Named after "
                       "the node, in the operator's namespace; owned by the Node (deleted with it).",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "status": NODE_STATUS_SCHEMA,
        },
    })


def build_crds() -> list[dict]:
    return [build_crd(), build_node_crd()]


def crd_file(crd: dict) -> str:
    """The file name of a CRD in crds/ and the chart's crds/."""
    return f"{crd['spec']['group']}_{crd['spec']['names']['plural']}.yaml"


def crd_yaml(crd: dict | None = None) -> str:
    import yaml
    header = ("# Generated from api/probeset_api (schema.py, status.py, crd.py) by `probeset crd`; do not edit.\n"
              "# A test fails when this file and the model differ.\n")
    return header + yaml.safe_dump(crd or build_crd(), sort_keys=False, width=120)
