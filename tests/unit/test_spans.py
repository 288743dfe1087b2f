"""Two-point probes (start/end): validation naming the field, the typed hooks, the generated C.
Pure: no root."""

import pytest

from probeset_agent.codegen import generate, probe_memory
from probeset_agent.resolve import GroupField, ResolvedProbe, Site
from probeset_api.spans import Hook
from probeset_api.spec import parse_probeset

BIO = {"start": {"tracepoint": "block:block_rq_issue", "key": ["dev", "sector"]},
       "end": {"tracepoint": "block:block_rq_complete", "key": ["dev", "sector"]}}


def parse(probe):
    return parse_probeset({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": "t"},
                           "spec": {"probes": [{"name": "p", **probe}]}})


@pytest.mark.parametrize("probe,reason", [
    ({"start": BIO["start"]}, "spec.probes[0].end: a two-point probe needs both start and end"),
    ({**BIO, "tracepoint": "a:b"}, "spec.probes[0].tracepoint: a two-point probe attaches through start and end only"),
    ({**BIO, "latency": True}, "spec.probes[0].latency: does not apply to a start/end probe"),
    ({**BIO, "value": "bytes"}, "spec.probes[0].value: does not apply to a start/end probe"),
    ({**BIO, "filter": {"field": "pid", "op": "==", "value": 1}}, "spec.probes[0].filter: does not apply"),
    ({"start": {"tracepoint": "a:b", "kprobe": "f", "key": ["x"]}, "end": BIO["end"]},
     "spec.probes[0].start: exactly one of kprobe, kretprobe, uprobe, uretprobe, tracepoint, usdt is required"),
    ({"start": {"tracepoint": "block:*", "key": ["dev"]}, "end": BIO["end"]},
     "spec.probes[0].start.tracepoint: a start or end attaches to one function or tracepoint: no glob"),
    ({"start": {"tracepoint": "block:block_rq_issue"}, "end": BIO["end"]}, "spec.probes[0].start.key: required field"),
    ({"start": {"kprobe": "blk_mq_start_request", "key": ["retval"]}, "end": BIO["end"]},
     "spec.probes[0].start.key[0]: retval needs a return probe (kretprobe, uretprobe), not kprobe"),
    ({"start": {"kretprobe": "f", "key": ["arg0"]}, "end": BIO["end"]},
     "spec.probes[0].start.key[0]: arg0 of a return probe is gone at return: use kprobe"),
    ({"start": {"tracepoint": "a:b", "key": ["arg1"]}, "end": BIO["end"]},
     "spec.probes[0].start.key[0]: arg1 is for function probes"),
    ({"start": {"uprobe": "libc:f", "key": ["sector"]}, "end": BIO["end"]},
     "spec.probes[0].start.key[0]: 'sector' is not available for uprobe: use arg0..arg5, tid or pid"),
    ({"start": {"tracepoint": "a:b", "key": ["dev", "dev"]}, "end": BIO["end"]},
     "spec.probes[0].start.key: names must be unique"),
    ({"start": {"tracepoint": "a:b", "key": ["x", "y", "z"]}, "end": BIO["end"]},
     "spec.probes[0].start.key: at most 2 items allowed, got 3"),
    ({"start": BIO["start"], "end": {"tracepoint": "block:block_rq_complete", "key": ["dev"]}},
     "spec.probes[0].end.key: 1 field(s), but start.key has 2"),
    ({"start": {**BIO["start"], "filter": {"field": "dev", "op": "==", "value": -1}}, "end": BIO["end"]},
     None),   # a tracepoint field's type is known on the host only
    ({"start": {"uprobe": "libc:f", "key": ["arg0"], "filter": {"field": "arg0", "op": "==", "value": -1}},
      "end": {"uprobe": "libc:g", "key": ["arg0"]}},
     "spec.probes[0].start.filter.value: -1 is out of range for u64 field 'arg0'"),
    ({**BIO, "labelsFrom": "middle"}, 'spec.probes[0].labelsFrom: "middle" is not one of: start, end'),
    ({**BIO, "maxPending": 0}, "spec.probes[0].maxPending: 0 is below the minimum 1"),
    ({**BIO, "maxAgeSeconds": 7200}, "spec.probes[0].maxAgeSeconds: 7200 is above the maximum 3600"),
    ({"kprobe": "f", "maxAgeSeconds": 3}, "spec.probes[0].maxAgeSeconds: only applies with start and end"),
    ({**BIO, "groupBy": ["probe"]}, "spec.probes[0].groupBy[0]: 'probe' is a label the agent sets itself"),
    ({"start": {"uprobe": "libc:malloc", "key": ["tid"]}, "end": {"uretprobe": "libc:malloc", "key": ["tid"]},
      "groupBy": ["pid"]},                  # found by fuzzing: a ValueError in the agent, no field named
     'spec.probes[0].groupBy[0]: "pid" is not available at the end (uretprobe): use arg0..arg5, retval or comm'),
])
def test_bad_spans_name_their_field(probe, reason):
    pset = parse(probe)
    if reason is None:
        assert pset.rejected == []
        return
    (bad,) = pset.rejected
    assert reason in bad.reason


def test_a_span_becomes_two_typed_hooks():
    (p,) = parse({**BIO, "groupBy": ["dev"], "labelsFrom": "end", "maxPending": 100, "maxAgeSeconds": 3}).probes
    assert (p.kind, p.target, p.labels_from, p.max_pending, p.max_age_seconds) == (
        "span", "block:block_rq_issue->block:block_rq_complete", "end", 100, 3)
    assert p.start == Hook("spec.probes[0].start", "tracepoint", "block:block_rq_issue", ("dev", "sector"))
    assert p.has_histogram and p.records_sum and not p.latency


def resolved(labels_from="start"):
    (p,) = parse({**BIO, "labelsFrom": labels_from, "groupBy": ["dev"]}).probes
    rp = ResolvedProbe(p, via="tracepoint", functions=["block:block_rq_issue->block:block_rq_complete"])
    dev = GroupField("dev", "tp_int", offset=8, size=4)
    keys = (dev, GroupField("sector", "tp_int", offset=16, size=8))
    rp.sites = [Site(0, "block:block_rq_issue", "tracepoint", "span_start", tracepoint="block:block_rq_issue",
                     key_fields=keys),
                Site(0, "block:block_rq_complete", "tracepoint", "span_end", tracepoint="block:block_rq_complete",
                     key_fields=keys, fields=(dev,))]
    return rp


def test_generated_c_pairs_by_typed_key_and_labels_from_the_start():
    text = generate([resolved()], ("node", "pod", "comm"), 10).text
    assert "struct pkey_p0 { u64 k0; u64 k1; };" in text
    assert "BPF_HASH(pending_p0, struct pkey_p0, struct pending_p0, 10240);" in text
    assert "pk.k0 = (u64)v_; }" in text and "(char *)ctx + 16); pk.k1 = (u64)v_; }" in text
    start, end = text.split("int site_0(void *ctx) {")[1], text.split("int site_1(void *ctx) {")[1]
    assert "if (pass_p0()) {" in start and "pv.cgroup = bpf_get_current_cgroup_id();" in start
    assert "if (pending_p0.update(&pk, &pv)) count_missed(0, MISSED_PENDING_FULL);" in start
    assert "if (1) {" in end and "key.cgroup = pv->cgroup;" in end
    assert "__builtin_memcpy(&key.comm, &pv->comm.c, sizeof(key.comm));" in end
    assert "pending_p0.delete(&pk);\n            record_p0(&key, ns, 1);" in end
    assert "hist_p0" in text


def test_labels_from_the_end_take_the_current_task_there():
    text = generate([resolved("end")], ("node", "pod"), 10).text
    start, end = text.split("int site_0(void *ctx) {")[1], text.split("int site_1(void *ctx) {")[1]
    assert "if (1) {" in start and "pv.cgroup" not in start
    assert "if (pass_p0()) {" in end and "key.cgroup = bpf_get_current_cgroup_id();" in end


@pytest.mark.parametrize("labels_from", ["start", "end"])
def test_a_namespaced_set_filters_both_ends(labels_from):
    """Else a start or end of any task on the node (host, other pods) pairs with the tenant's."""
    text = generate([resolved(labels_from)], ("node", "pod"), 10, cgroup_filter=True, both_ends_filtered=True).text
    start, end = text.split("int site_0(void *ctx) {")[1], text.split("int site_1(void *ctx) {")[1]
    assert "if (pass_p0()) {" in start and "if (pass_p0()) {" in end
    assert "if (1) {" not in text
    assert ("pv.cgroup = bpf_get_current_cgroup_id();" in start) == (labels_from == "start")   # labels: as before
    assert ("key.cgroup = bpf_get_current_cgroup_id();" in end) == (labels_from == "end")


def test_pending_map_memory_is_counted():
    small, big = resolved(), resolved()
    big.probe = parse({**BIO, "maxPending": 65536}).probes[0]
    assert probe_memory(big, ("node",), 10, 2) - probe_memory(small, ("node",), 10, 2) > (65536 - 10240) * 80


def test_moving_a_span_or_filtered_probe_in_the_list_is_not_a_change():
    from probeset_agent.running import plan_edit
    filtered = {"name": "f", "kretprobe": "vfs_read", "filter": {"field": "retval", "op": "<", "value": 0}}
    span = {"name": "s", **BIO}

    def pset(probes):
        return parse_probeset({"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": "t"},
                               "spec": {"probes": probes}})
    edit = plan_edit(pset([filtered, span]), pset([{"name": "new", "kprobe": "f"}, span, filtered]))
    assert (sorted(edit.keep), edit.start, edit.stop) == (["f", "s"], ("new",), ())
    changed = {**filtered, "filter": {"field": "retval", "op": "<", "value": -1}}
    assert plan_edit(pset([filtered]), pset([changed])).start == ("f",)
