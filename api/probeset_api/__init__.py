"""The ProbeSet API shared by the agent and the operator: the spec model (spec.py, schema.py), the
status contract (status.py) and the CRD built from both (crd.py). Neither side imports the other;
both import this package."""

__version__ = "0.1.0"

API_GROUP = "probeset.io"
API_VERSION = "v1alpha1"
KIND = "ProbeSet"
PLURAL = "probesets"

# Settings the operator passes to its agents (and the Helm chart to the operator), by environment.
OPERATOR_NAMESPACE_ENV = "PROBESET_OPERATOR_NAMESPACE"
DEFAULT_OPERATOR_NAMESPACE = "probeset-system"
NODE_WIDE_NAMESPACES_ENV = "PROBESET_NODE_WIDE_NAMESPACES"
TENANT_VALUES_ENV = "PROBESET_TENANT_VALUES"
ALLOW_TOLERATIONS_ENV = "PROBESET_ALLOW_PROBESET_TOLERATIONS"

# The agent's --histogram-buckets (the operator passes it from the chart's agent.histogramBuckets):
# which latency buckets /metrics exports per series (probeset_agent/histogram.py, docs/metrics.md).
HISTOGRAM_BUCKETS = ("nonzero", "sparse", "all")
DEFAULT_HISTOGRAM_BUCKETS = "nonzero"
