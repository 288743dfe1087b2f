"""The key layout Python decodes with (layout.KeyLayout) is the struct the compiler laid out: checked
against BCC's view of the compiled program's maps, for keys with every kind of field."""

import ctypes


def test_key_layout_matches_the_compiled_structs(run_probeset):
    prog = run_probeset(
        [{"name": "switches", "tracepoint": "sched:sched_switch", "groupBy": ["prev_comm", "next_pid"]},
         {"name": "reads", "uprobe": "libc:read", "latency": True, "groupBy": ["arg0", "arg2"]}],
        labels=["node", "pod", "comm"])
    assert prog.compiled, [st.error for st in prog.probe_statuses()]
    for rp in prog.compiled:
        layout = prog.program.layouts[rp.id]
        key_type = prog.bpf[f"counts_p{rp.id}"].Key
        assert ctypes.sizeof(key_type) == layout.size
        assert [(f.name, getattr(key_type, f.name).offset, getattr(key_type, f.name).size)
                for f in layout.fields] == [(f.name, f.offset, f.size) for f in layout.fields]
        if rp.probe.latency:
            hist_key = prog.bpf[f"hist_p{rp.id}"].Key
            assert hist_key.bucket.offset == layout.bucket_offset
