"""Latency pairing per (thread, function, depth): the generated C and its memory bound. Pure."""

from probeset_agent.codegen import MAX_CALL_DEPTH, START_MAP_ENTRIES, generate, probe_memory
from probeset_agent.memory import hash_bytes
from probeset_agent.resolve import ResolvedProbe, Site
from probeset_api.spec import Probe


def latency_probe(latency=True):
    p = Probe(index=0, name="p", kind="uprobe", target="/bin/true:main", latency=latency)
    rp = ResolvedProbe(p, via="uprobe", functions=["main"])
    common = dict(function="main", path="/bin/true", address=0x10)
    rp.sites = [Site(0, mechanism="uprobe", role="start", **common), Site(0, mechanism="uretprobe", role="finish", **common)]
    return rp


def test_start_slots_are_per_depth_and_bounded():
    text = generate([latency_probe()], ("node",), 10).text
    assert "struct start_key_t { u64 tid; u32 func; u32 depth; };" in text
    assert f'BPF_TABLE("lru_hash", struct start_key_t, u64, depth_p0, {START_MAP_ENTRIES});' in text
    # entry: bump the thread's depth, keep a start slot only below the bound
    assert "u64 *depth_ = depth_p0.lookup_or_try_init(&sk, &zero_);" in text
    assert f"if (d_ < {MAX_CALL_DEPTH}) {{\n                sk.depth = d_;" in text
    # return: a return with no open call is unpaired and leaves the depth alone; deeper is counted
    assert "if (!depth_ || *depth_ == 0) { count_missed(0, MISSED_UNPAIRED_RETURN); break; }" in text
    assert "if (d_ == 0) depth_p0.delete(&sk); else *depth_ = d_;" in text
    assert f"if (d_ >= {MAX_CALL_DEPTH}) {{ count_missed(0, MISSED_NESTING_TOO_DEEP); break; }}" in text


def test_memory_counts_the_depth_map():
    timed, counted = probe_memory(latency_probe(), ("node",), 10, 2), probe_memory(latency_probe(False), ("node",), 10, 2)
    assert timed - counted > hash_bytes(START_MAP_ENTRIES, 16, 8, 2, percpu=False) * 2 - 8192
