"""The ProbeSet CustomResourceDefinition, built from the shared model: the spec schema (schema.py) and
the status contract (status.py).

crds/probeset.io_probesets.yaml is this function's output; a test fails when they differ
(`probeset crd > crds/probeset.io_probesets.yaml` regenerates it).
"""

from __future__ import annotations

from . import API_GROUP, API_VERSION, KIND, PLURAL
from .schema import crd_schema
from .status import STATUS_SCHEMA

CRD_NAME = f"{PLURAL}.{API_GROUP}"


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
    header = ("# Generated from api/probeset_api (schema.py, status.py) by `probeset crd`; do not edit.\n"
              "# A test fails when this file and the model differ.\n")
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
