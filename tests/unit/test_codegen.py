"""Generated C: structure, typed substitution, and no user string in the output."""

import re

import pytest

from probeset_agent import ctemplates as T
from probeset_agent.codegen import CCode, CName, fill, generate, join
from probeset_agent.histogram import NUM_BUCKETS, bucket_index, bucket_upper_ns, cumulative_buckets, export_bounds_ns
from probeset_agent.resolve import GroupField, ResolvedProbe, Site
from probeset_api.spec import Probe
from tests.support import resolved_uprobe


def uprobe(index, name, latency=False, group_by=(), pid=None, comm=None, kind="uprobe", per_power=1):
    p = Probe(index=index, name=name, kind=kind, target="/bin/true:main", latency=latency, group_by=group_by,
              pid=pid, comm=comm, buckets_per_power_of_two=per_power)
    fields = tuple(GroupField(g, "retval", signed=True) if g == "retval" else GroupField(g, "arg", index=int(g[3:]))
                   for g in group_by)
    return resolved_uprobe(p, "main_function_label", 0x1234, fields=fields)


def test_fill_accepts_only_typed_values():
    assert fill("x@A@y@B@", A=1, B=CName("ok")) == "x1yok"
    with pytest.raises(TypeError):
        fill("@A@", A="plain string")
    with pytest.raises(TypeError):
        fill("@A@", A=True)
    with pytest.raises(KeyError):
        fill("@A@ @B@", A=1)
    with pytest.raises(KeyError):
        fill("@A@", A=1, B=2)
    for bad in ("a b", "x;", "1abc", "", 'q"', "a\nb"):
        with pytest.raises(ValueError):
            CName(bad)


def test_one_map_set_and_record_function_per_probe():
    prog = generate([uprobe(0, "first"), uprobe(3, "second", latency=True, group_by=("arg1", "retval"))],
                    ("node", "pod"), max_series=100)
    text = prog.text
    assert "BPF_PERCPU_HASH(counts_p0, struct key_p0, struct count_t, 101);" in text      # counts only
    assert "BPF_PERCPU_HASH(counts_p3, struct key_p3, struct value_t, 101);" in text
    assert "hist_p0" not in text and "start_p0" not in text
    assert "BPF_F_TABLE(\"percpu_hash\", struct hkey_p3, u64, hist_p3, 3200, BPF_F_NO_PREALLOC);" in text
    assert "BPF_TABLE(\"lru_hash\", struct start_key_t, struct start_p3, start_p3, 10240);" in text
    assert "key.cgroup = bpf_get_current_cgroup_id();" in text     # pod label needs the cgroup id
    assert "sv.g0 = PT_REGS_PARM2(ctx);" in text                    # arg1 captured at entry
    assert "key.g0 = sv->g0;" in text and "key.g1 = PT_REGS_RC(ctx);" in text
    # Both probes enter the same function: one uprobe program serves both; the return has its own.
    assert [(a.mechanism, a.probes) for a in prog.attach_points] == [("uprobe", [0, 3]), ("uretprobe", [3])]
    assert len(re.findall(r"^int site_\d+\(struct pt_regs \*ctx\)", text, re.M)) == 2
    assert not re.search(r"@[A-Z_]+@", text)


def test_a_histogram_records_on_its_probes_export_grid():
    """hist_bucket(ns, mask): the kernel's bucket rounded up to the probe's bucketsPerPowerOfTwo
    (histogram.kernel_bucket), in the hash (many series) and in the array (one series) shapes."""
    probes = [uprobe(0, "one", latency=True, group_by=("arg1",)), uprobe(1, "four", latency=True, per_power=4)]
    text = generate(probes, ("node",), max_series=100).text
    assert "hkey.bucket = hist_bucket(ns, 3);" in text                      # probe 0: hash, 1 per power
    assert "u32 hslot = key->func * 252 + hist_bucket(ns, 0);" in text      # probe 1: array, 4 per power
    assert text.count("latency_bucket(ns)") == 1                            # only inside hist_bucket()


def test_user_strings_never_reach_c():
    text = generate([uprobe(0, "secretprobename", group_by=("arg2",), comm="secretcomm")], ("comm",), 10).text
    for s in ("secretprobename", "main_function_label", "secretcomm", "/bin/true", "arg2"):
        assert s not in text
    assert "comm_filter_p0" in text          # comm is compared through a map user space fills


def test_pid_filter_is_an_integer_compare():
    text = generate([uprobe(0, "p", pid=4242)], ("node",), 10).text
    assert "if ((bpf_get_current_pid_tgid() >> 32) != 4242) return 0;" in text


def test_fentry_sites_use_bcc_names_and_share_a_function():
    rps = []
    for i, group_by in enumerate([(), ("arg2",)]):
        p = Probe(index=i, name=f"p{i}", kind="kprobe", target="vfs_read", group_by=group_by)
        fields = tuple(GroupField(g, "arg", index=2) for g in group_by)
        rps.append(ResolvedProbe(p, via="fentry", functions=["vfs_read"],
                                 sites=[Site(0, "vfs_read", "fentry", "count", kernel_function="vfs_read",
                                             fields=fields)]))
    prog = generate(rps, ("node",), 10)
    assert [(a.fn_name, a.probes) for a in prog.attach_points] == [("kfunc__vfs_read", [0, 1])]
    assert prog.text.count("int kfunc__vfs_read(unsigned long long *ctx)") == 1
    assert "bpf_get_func_arg(ctx, 2, &v_)" in prog.text


def test_tracepoint_fields_read_by_offset():
    p = Probe(index=0, name="x", kind="tracepoint", target="net:net_dev_xmit", group_by=("name", "len"))
    fields = (GroupField("name", "tp_data_loc", offset=24), GroupField("len", "tp_int", offset=16, size=4))
    rp = ResolvedProbe(p, via="tracepoint", functions=["net:net_dev_xmit"], string_labels=frozenset({"name"}),
                       sites=[Site(0, "net:net_dev_xmit", "tracepoint", "count", tracepoint="net:net_dev_xmit",
                                   fields=fields)])
    text = generate([rp], (), 10).text
    assert "char g0[32];" in text and "u64 g1;" in text
    assert "(char *)ctx + 24" in text and "(loc_ & 0xffff)" in text
    assert "{ u32 v_ = 0; bpf_probe_read_kernel(&v_, sizeof(v_), (char *)ctx + 16); key.g1 = (u64)v_; }" in text
    assert "int site_0(void *ctx)" in text


def test_failed_probes_are_left_out():
    bad = uprobe(1, "bad")
    bad.error = "no such symbol"
    text = generate([uprobe(0, "good"), bad], (), 10).text
    assert "counts_p0" in text and "counts_p1" not in text


def test_bucket_math_matches_boundaries():
    # Every ns value lands in the bucket whose (lower, upper] range holds it.
    for ns in list(range(0, 300)) + [1023, 1024, 1025, 10**6, 10**9, 2**40 + 7, 2**63]:
        i = bucket_index(ns)
        assert ns <= bucket_upper_ns(i)
        assert i == 0 or ns > bucket_upper_ns(i - 1)
    assert bucket_index(2**64 - 1) < NUM_BUCKETS
    uppers = [bucket_upper_ns(i) for i in range(40)]
    assert uppers == sorted(set(uppers))                       # strictly increasing
    assert bucket_upper_ns(bucket_index(1000)) == 1024
    assert [bucket_upper_ns(i) for i in range(28, 36)] == [320, 384, 448, 512, 640, 768, 896, 1024]  # 4/octave
    assert export_bounds_ns(4)[0] == 256 and export_bounds_ns(4)[-1] == 2**34 and len(export_bounds_ns(4)) == 105
    assert export_bounds_ns(1) == tuple(2**k for k in range(8, 35))
    assert export_bounds_ns(2)[:4] == (256, 384, 512, 768)


def test_cumulative_buckets():
    counts = {bucket_index(100): 2, bucket_index(1000): 3, bucket_index(10**12): 1}
    for per_power in (1, 2, 4):
        out = dict(cumulative_buckets(counts, per_power))
        assert out[256e-9] == 2 and out[1024e-9] == 5 and out[2**34 / 1e9] == 5 and out[float("inf")] == 6
        values = [n for _, n in cumulative_buckets(counts, per_power)]
        assert values == sorted(values)


def test_ccode_is_the_only_composition_path():
    assert isinstance(fill("a@X@", X=CCode("b")), CCode)
    assert fill("a@X@", X=CCode("b")) == "ab"
    # fill()'s output is CCode, so it composes into the next template: a probe's pass function with
    # its cgroup and pid checks, exactly.
    pid_check = fill(T.PID_CHECK, PID=4242)
    assert pid_check == "    if ((bpf_get_current_pid_tgid() >> 32) != 4242) return 0;\n"
    checks = join([T.CGROUP_CHECK, pid_check])
    assert isinstance(checks, CCode)
    pass_func = fill(T.PASS_FUNC, P=3, CHECKS=checks)
    assert isinstance(pass_func, CCode)
    assert pass_func == ("static __always_inline int pass_p3(void) {\n"
                         "    {\n"
                         "        u64 cgroup = bpf_get_current_cgroup_id();\n"
                         "        if (!allowed_cgroups.lookup(&cgroup)) return 0;\n"
                         "    }\n"
                         "    if ((bpf_get_current_pid_tgid() >> 32) != 4242) return 0;\n"
                         "    return 1;\n"
                         "}\n")
    # The same text as a plain str is refused: nothing but fill()'s output and fixed fragments compose.
    with pytest.raises(TypeError):
        fill(T.PASS_FUNC, P=3, CHECKS=str(pid_check))
