"""The ProbeSet model: every bad input gets an error naming the field and the reason."""

import glob
import json

import pytest
import yaml

from probeset_api.schema import crd_schema
from probeset_api.spec import SpecError, parse_probeset


def doc(probes, **spec):
    return {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": "t"},
            "spec": {"probes": probes, **spec}}


def rejected(probes, **spec):
    """{probe index: error text} for the probes static validation refuses."""
    pset = parse_probeset(doc(probes, **spec))
    return {r.index: r.reason for r in pset.rejected}


def set_errors(d):
    with pytest.raises(SpecError) as exc:
        parse_probeset(d)
    return [str(e) for e in exc.value.errors]


@pytest.mark.parametrize("path", sorted(glob.glob("examples/*.yaml") + glob.glob("examples/cluster/*.yaml")))
def test_examples_are_valid(path):
    with open(path) as f:
        for d in yaml.safe_load_all(f):
            pset = parse_probeset(d)
            assert pset.rejected == [], pset.rejected
            assert pset.probes


def test_valid_probe_fields_are_parsed():
    pset = parse_probeset(doc([
        {"name": "dns", "uprobe": "libc:getaddrinfo", "latency": True, "pid": 42},
        {"name": "ret", "kretprobe": "vfs_read", "maxActive": 64, "attach": "kprobe", "groupBy": ["retval"]},
        {"name": "tp", "tracepoint": "net:net_dev_xmit", "groupBy": ["name", "comm"], "comm": "curl"},
    ], labels=["node", "comm"], maxSeriesPerProbe=10))
    dns, ret, tp = pset.probes
    assert (dns.kind, dns.binary, dns.symbol, dns.latency, dns.pid) == ("uprobe", "libc", "getaddrinfo", True, 42)
    assert (ret.kind, ret.max_active, ret.attach, ret.group_by) == ("kretprobe", 64, "kprobe", ("retval",))
    assert (tp.kind, tp.target, tp.group_by, tp.comm) == ("tracepoint", "net:net_dev_xmit", ("name", "comm"), "curl")
    assert pset.labels == ("node", "comm") and pset.max_series_per_probe == 10


def test_defaults():
    pset = parse_probeset(doc([{"name": "a", "tracepoint": "sched:sched_switch"}]))
    assert pset.labels == ("node", "namespace", "pod", "container")
    assert pset.max_series_per_probe == 5000
    assert pset.probes[0].attach == "auto" and pset.probes[0].max_functions == 128


@pytest.mark.parametrize("probe, field, reason", [
    ({"name": "x", "uprobe": "libc:getaddrinfo "}, "spec.probes[0].uprobe", "BINARY:SYMBOL"),
    ({"name": "x", "uprobe": "getaddrinfo"}, "spec.probes[0].uprobe", "BINARY:SYMBOL"),
    ({"name": "x", "uprobe": "../lib:f"}, "spec.probes[0].uprobe", "BINARY:SYMBOL"),
    ({"name": "x", "kprobe": "vfs_read;"}, "spec.probes[0].kprobe", "kernel function name"),
    ({"name": "x", "tracepoint": "net"}, "spec.probes[0].tracepoint", "CATEGORY:NAME"),
    ({"name": "Bad-Name", "kprobe": "vfs_read"}, "spec.probes[0].name", "lowercase identifier"),
    ({"name": "x"}, "spec.probes[0]", "exactly one of"),
    ({"name": "x", "kprobe": "a", "uprobe": "c:f"}, "spec.probes[0]", "found: kprobe, uprobe"),
    ({"name": "x", "kretprobe": "vfs_read", "maxActive": -1}, "spec.probes[0].maxActive", "below the minimum 1"),
    ({"name": "x", "kretprobe": "vfs_read", "maxActive": 1 << 40}, "spec.probes[0].maxActive", "above the maximum"),
    ({"name": "x", "kretprobe": "vfs_read", "maxActive": "64"}, "spec.probes[0].maxActive", "expected integer"),
    ({"name": "x", "uprobe": "c:f", "maxActive": 4}, "spec.probes[0].maxActive", "only applies to kprobe"),
    ({"name": "x", "kprobe": "f", "maxActive": 4}, "spec.probes[0].maxActive", "only applies to return probes"),
    ({"name": "x", "tracepoint": "a:b", "latency": True}, "spec.probes[0].latency", "needs a function probe"),
    ({"name": "x", "tracepoint": "a:b", "attach": "fentry"}, "spec.probes[0].attach", "only applies to kprobe"),
    ({"name": "x", "uprobe": "c:f", "bucketsPerPowerOfTwo": 4}, "spec.probes[0].bucketsPerPowerOfTwo",
     "only applies with latency"),
    ({"name": "x", "kprobe": "f", "attach": "ebpf"}, "spec.probes[0].attach", "not one of: auto, kprobe, fentry"),
    ({"name": "x", "tracepoint": "a:b", "attach": "raw"}, "spec.probes[0].attach", "raw_tracepoint"),
    ({"name": "x", "tracepoint": "a:b", "attach": "kprobe"}, "spec.probes[0].attach", "only applies to kprobe"),
    ({"name": "x", "uprobe": "c:f", "attach": "raw_tracepoint"}, "spec.probes[0].attach",
     "only applies to tracepoint probes, not uprobe"),
    ({"name": "x", "kprobe": "f", "attach": "tracepoint"}, "spec.probes[0].attach", "only applies to tracepoint"),
    ({"name": "x", "tracepoint": "a:b", "attach": "raw_tracepoint", "groupBy": ["comm", "next_pid"]},
     "spec.probes[0].attach", "sees no event field, and this probe reads groupBy next_pid"),
    ({"name": "x", "tracepoint": "a:b", "attach": "raw_tracepoint", "value": "len"},
     "spec.probes[0].attach", "reads value len"),
    ({"name": "x", "tracepoint": "a:b", "attach": "raw_tracepoint",
      "filter": {"all": [{"field": "pid", "op": "==", "value": 1}, {"field": "prev_prio", "op": "<", "value": 9}]}},
     "spec.probes[0].attach", "reads filter field prev_prio"),
    ({"name": "x", "kprobe": "f", "groupBy": ["retval"]}, "spec.probes[0].groupBy[0]", "retval needs a return probe"),
    ({"name": "x", "kprobe": "f", "groupBy": ["arg9"]}, "spec.probes[0].groupBy[0]", "use arg0..arg5"),
    ({"name": "x", "uretprobe": "c:f", "groupBy": ["arg0"]}, "spec.probes[0].groupBy[0]", "needs latency: true"),
    ({"name": "x", "kprobe": "f", "groupBy": ["arg0", "arg0"]}, "spec.probes[0].groupBy", "unique"),
    ({"name": "x", "tracepoint": "a:b", "groupBy": ["pod"]}, "spec.probes[0].groupBy[0]", "label the agent sets"),
    ({"name": "x", "tracepoint": "a:b", "groupBy": ["a", "b", "c", "d", "e"]}, "spec.probes[0].groupBy", "at most 4"),
    ({"name": "x", "uprobe": "c:f", "pid": 0}, "spec.probes[0].pid", "below the minimum"),
    ({"name": "x", "uprobe": "c:f", "comm": "a-very-long-process-name"}, "spec.probes[0].comm", "1 to 15"),
    ({"name": "x", "uprobe": "c:f", "latancy": True}, "spec.probes[0].latancy", "unknown field"),
    ({"name": "x", "uprobe": "c:f", "maxFunctions": 100000}, "spec.probes[0].maxFunctions", "above the maximum"),
])
def test_bad_probe_is_rejected_with_field_and_reason(probe, field, reason):
    good = {"name": "good", "tracepoint": "sched:sched_switch"}
    errors = rejected([good, probe])
    assert list(errors) == [1], errors
    assert f"spec.probes[1]{field[len('spec.probes[0]'):]}: " in errors[1]
    assert reason in errors[1]


def test_duplicate_names_reject_the_second():
    errors = rejected([{"name": "a", "kprobe": "f"}, {"name": "a", "kprobe": "g"}])
    assert errors == {1: 'spec.probes[1].name: duplicate name "a" (also spec.probes[0])'}
    long = "\ud800\x1b[31m" + "n" * 100_000                     # quoted bounded and escaped, as every value
    errors = rejected([{"name": long, "kprobe": "f"}, {"name": long, "kprobe": "g"}])
    assert len(errors[1]) < 400 and "\\ud800\\x1b[31m" in errors[1]


@pytest.mark.parametrize("comm", ["\ud800", "a\u202eb", "\u200b", "é" * 8])
def test_a_task_name_is_printable_and_fits_the_kernels_15_bytes(comm):
    """A lone surrogate cannot even be encoded (the agent failed at start), bidi and zero-width
    characters are not printable, and a task name is 15 bytes of UTF-8, not 15 characters."""
    errors = rejected([{"name": "a", "tracepoint": "sched:sched_switch", "comm": comm},
                       {"name": "b", "tracepoint": "sched:sched_switch",
                        "filter": {"field": "comm", "op": "==", "value": comm}}])
    assert errors[0].startswith("spec.probes[0].comm: a task name is 1 to 15 bytes of printable characters, got ")
    assert errors[1].startswith("spec.probes[1].filter.value: comm compares with a task name: 1 to 15 bytes of "
                                "printable characters, got ")
    assert rejected([{"name": "a", "tracepoint": "sched:sched_switch", "comm": "é" * 7}]) == {}   # 14 bytes


@pytest.mark.parametrize("namespace", [["a"], "Team_A", "", 7])
def test_the_namespace_is_a_dns_label(namespace):
    d = doc([{"name": "a", "tracepoint": "sched:sched_switch"}])
    d["metadata"]["namespace"] = namespace
    assert set_errors(d)[0].startswith("metadata.namespace: ") and "is not a valid namespace (lowercase DNS label)" in \
        set_errors(d)[0]


HOSTILE = ['x"; } int evil() { return 0; } /*', "a;b", "line\nbreak", "#include <x.h>", "a b", "'q'", "x\\y",
           "$(rm -rf /)", "\x00", ""]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("field", ["name", "kprobe", "kretprobe", "uprobe", "uretprobe", "tracepoint", "groupBy",
                                   "comm"])
def test_hostile_strings_never_pass_validation(field, value):
    probe = {"name": "x", "tracepoint": "a:b"}
    if field in ("kprobe", "kretprobe", "uprobe", "uretprobe", "tracepoint"):
        probe = {"name": "x", field: value}
    elif field == "groupBy":
        probe["groupBy"] = [value]
    else:
        probe[field] = value
    if field == "comm" and value not in ("", "\x00", "line\nbreak") and len(value) <= 15:
        # comm is data (compared through a BPF map, never pasted into C); only control bytes are refused
        assert rejected([probe]) == {}
        return
    errors = rejected([probe])
    assert 0 in errors and f"spec.probes[0].{field}" in errors[0]


def test_set_level_errors():
    assert set_errors(doc([])) == ["spec.probes: needs at least 1 item(s), got 0"]
    assert set_errors(doc([{"name": "a", "kprobe": "f"}], labels=["pod", "uid"])) == [
        "spec.labels[1]: \"uid\" is not one of: node, namespace, pod, container, comm"]
    assert set_errors(doc([{"name": "a", "kprobe": "f"}], maxSeriesPerProbe=0)) == [
        "spec.maxSeriesPerProbe: 0 is below the minimum 1"]
    assert "spec.nodeSelector.zone: expected string, got int 3" in set_errors(
        doc([{"name": "a", "kprobe": "f"}], nodeSelector={"zone": 3}))
    bad = doc([{"name": "a", "kprobe": "f"}])
    bad["apiVersion"] = "v1"
    bad["metadata"]["name"] = "Bad Name"
    errs = set_errors(bad)
    assert errs[0].startswith("apiVersion: expected probeset.io/v1alpha1")
    assert errs[1].startswith("metadata.name: \"Bad Name\" is not a valid name")
    assert set_errors("text") == ["(document): expected a mapping, got str"]


def test_pod_selector_and_tolerations_are_validated():
    errs = set_errors(doc([{"name": "a", "kprobe": "f"}],
                          podSelector={"matchExpressions": [{"key": "app", "operator": "Is"}]},
                          tolerations=[{"effect": "Sometimes"}]))
    assert "spec.podSelector.matchExpressions[0].operator: \"Is\" is not one of: In, NotIn, Exists, DoesNotExist" in errs
    assert "spec.tolerations[0].effect: \"Sometimes\" is not one of: NoSchedule, PreferNoSchedule, NoExecute" in errs


def test_crd_schema_is_structural_and_has_descriptions():
    schema = crd_schema()
    text = json.dumps(schema)
    assert "x-probeset" not in text

    def walk(node, path):
        assert "type" in node or node.get("x-kubernetes-int-or-string") is True, path
        if path != "spec" and not path.endswith("[]") and not path.endswith("{}"):
            assert node.get("description"), f"{path} has no description"
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")
    walk(schema, "spec")


def test_docs_reference_is_generated_from_the_schema():
    from probeset_api.schema import reference_markdown
    with open("docs/probeset.md") as f:
        text = f.read()
    start = text.index("<!-- generated: probeset_api.schema.reference_markdown() -->\n") + len(
        "<!-- generated: probeset_api.schema.reference_markdown() -->\n")
    end = text.index("<!-- end generated -->")
    assert text[start:end] == reference_markdown(), "regenerate docs/probeset.md's field table"


def test_schema_defaults_filled_in_by_the_api_server_are_valid():
    """The API server applies the CRD's defaults to every probe; the model must accept them."""
    from probeset_api.schema import PROBE_SCHEMA, SPEC_SCHEMA
    probe_defaults = {k: v["default"] for k, v in PROBE_SCHEMA["properties"].items() if "default" in v}
    spec_defaults = {k: v["default"] for k, v in SPEC_SCHEMA["properties"].items() if "default" in v}
    probes = [{"name": n, kind: target, **probe_defaults} for n, kind, target in (
        ("u", "uprobe", "libc:malloc"), ("t", "tracepoint", "sched:sched_switch"), ("k", "kretprobe", "vfs_read"))]
    pset = parse_probeset(doc(probes, **spec_defaults))
    assert pset.rejected == [] and len(pset.probes) == 3


def test_scope_defaults_to_namespace_and_accepts_node():
    assert parse_probeset(doc([{"name": "a", "kprobe": "f"}])).scope == "Namespace"
    assert parse_probeset(doc([{"name": "a", "kprobe": "f"}], scope="Node")).scope == "Node"


def test_scope_is_an_enum():
    assert set_errors(doc([{"name": "a", "kprobe": "f"}], scope="Cluster")) == [
        'spec.scope: "Cluster" is not one of: Namespace, Node']
    assert set_errors(doc([{"name": "a", "kprobe": "f"}], scope="node")) == [
        'spec.scope: "node" is not one of: Namespace, Node']


@pytest.mark.parametrize("value, want", [
    (None, {"probeset-system"}),
    ("", {"probeset-system"}),
    (" , ", {"probeset-system"}),
    ("obs", {"obs"}),
    ("obs, platform ,obs,", {"obs", "platform"}),
])
def test_node_wide_namespaces(value, want):
    from probeset_api.spec import node_wide_namespaces
    assert node_wide_namespaces(value, "probeset-system") == frozenset(want)


def test_scope_error():
    from probeset_api.validation import FieldError
    from probeset_api.spec import scope_error

    def pset(scope, namespace):
        d = doc([{"name": "a", "kprobe": "f"}], **({"scope": scope} if scope else {}))
        if namespace:
            d["metadata"]["namespace"] = namespace
        return parse_probeset(d)

    allowed = frozenset({"probeset-system", "obs"})
    assert scope_error(pset(None, "web"), allowed) is None              # default Namespace: anyone
    assert scope_error(pset("Namespace", "web"), allowed) is None
    assert scope_error(pset("Node", "obs"), allowed) is None            # in the allowlist
    assert scope_error(pset("Node", None), allowed) is None             # standalone file: node-wide
    err = scope_error(pset("Node", "web"), allowed)
    assert err == FieldError("spec.scope", "Node (host processes and every pod on the node) is allowed only "
                                           "for ProbeSets in namespace(s) obs, probeset-system; this ProbeSet "
                                           "is in web: remove spec.scope or ask the cluster admin")
    assert str(err).startswith("spec.scope: Node (host processes")


def test_raw_tracepoint_may_read_the_current_task():
    """comm, pid, tid, uid, gid come from the task, not the event: a raw tracepoint has them."""
    errors = rejected([{"name": "t", "tracepoint": "sched:sched_switch", "attach": "raw_tracepoint",
                        "groupBy": ["comm"], "filter": {"field": "uid", "op": "==", "value": 0}},
                       {"name": "u", "tracepoint": "sched:sched_switch", "attach": "tracepoint",
                        "groupBy": ["prev_pid"]}])
    assert errors == {}
