"""Task context or interrupt (taskcontext.py): the kernel offsets read from BTF, on a BTF blob
built here (the kernel's own is read by tests/bpf/test_tenant.py), and the generated check."""

import struct

import pytest

from probeset_agent import btf
from probeset_agent.codegen import generate
from probeset_agent.resolve import ResolvedProbe, Site
from probeset_agent.taskcontext import INTERRUPT_BITS, TaskContext, layout
from probeset_api.spec import Probe
from tests.support import resolved_uprobe


class Blob:
    """A BTF blob of structs (members: name, type id, byte offset), typedefs and per-CPU variables."""

    def __init__(self):
        self.types, self.strings = [], bytearray(b"\0")

    def name(self, text: str) -> int:
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, kind: int, name: str, size_or_type: int, vlen: int = 0, tail: bytes = b"") -> int:
        self.types.append(struct.pack("<III", self.name(name) if name else 0, (kind << 24) | vlen, size_or_type) + tail)
        return len(self.types)

    def struct(self, name: str, size: int, members) -> int:
        tail = b"".join(struct.pack("<III", self.name(m) if m else 0, t, 8 * off) for m, t, off in members)
        return self.add(btf.STRUCT, name, size, len(members), tail)

    def var(self, name: str, type_id: int) -> int:
        return self.add(btf.VAR, name, type_id, tail=struct.pack("<I", 1))

    def datasec(self, name: str, entries) -> int:
        return self.add(btf.DATASEC, name, 0, len(entries), b"".join(struct.pack("<III", *e) for e in entries))

    def bytes(self) -> bytes:
        types = b"".join(self.types)
        header = struct.pack("<HBBIIIII", btf.MAGIC, 1, 0, 24, 0, len(types), len(types), len(self.strings))
        return header + types + bytes(self.strings)


def kernel_like(preempt_in_pcpu_hot: bool = False) -> bytes:
    b = Blob()
    u64 = b.add(btf.INT, "unsigned long long", 8, tail=struct.pack("<I", 64))
    ptr = b.add(btf.PTR, "", u64)
    rq = b.struct("rq", 4096, [("nr_running", u64, 0), ("cpu", u64, 2984)])
    b.struct("cfs_rq", 512, [("load", u64, 0), ("rq", ptr, 312)])
    anon = b.struct("", 16, [("cfs_rq", ptr, 8)])                 # reached through an anonymous member
    se = b.struct("sched_entity", 256, [("load", u64, 0), ("", anon, 40)])
    se_t = b.add(btf.TYPEDEF, "se_t", se)
    b.struct("task_struct", 8192, [("thread_info", u64, 0), ("se", se_t, 256)])
    runqueues = b.var("runqueues", rq)
    if preempt_in_pcpu_hot:
        hot = b.struct("pcpu_hot", 64, [("current_task", ptr, 0), ("preempt_count", u64, 8)])
        preempt = b.var("pcpu_hot", hot)
    else:
        preempt = b.var("__preempt_count", u64)
    b.datasec(".data..percpu", [(preempt, 86064, 4), (runqueues, 195776, 4096)])
    return b.bytes()


@pytest.mark.parametrize("in_pcpu_hot,preempt_from_rq", [(False, 86064 - 195776), (True, 86064 + 8 - 195776)])
def test_offsets_come_from_btf(in_pcpu_hot, preempt_from_rq):
    types = btf.parse(kernel_like(in_pcpu_hot))
    assert layout(types) == TaskContext(task_cfs_rq=256 + 40 + 8, cfs_rq_rq=312, rq_cpu=2984,
                                        preempt_from_rq=preempt_from_rq)


def test_what_is_missing_is_named():
    b = Blob()
    b.struct("task_struct", 8, [])
    with pytest.raises(btf.BTFError, match="the kernel's BTF describes no per-CPU variables"):
        layout(btf.parse(b.bytes()))
    with pytest.raises(btf.BTFError, match="struct task_struct has no member se.vruntime"):
        btf.parse(kernel_like()).member_offset("task_struct", "se.vruntime")
    with pytest.raises(btf.BTFError, match="bad magic"):
        btf.parse(b"\0" * 32)
    with pytest.raises(btf.BTFError, match="beyond its end"):
        btf.parse(kernel_like()[:-40])


def test_only_kernel_sites_of_a_namespaced_set_check_the_context():
    tc = TaskContext(task_cfs_rq=296, cfs_rq_rq=312, rq_cpu=2984, preempt_from_rq=-109712)
    tp = ResolvedProbe(Probe(index=0, name="tp", kind="tracepoint", target="irq:softirq_entry"), via="tracepoint",
                       functions=["irq:softirq_entry"],
                       sites=[Site(0, "irq:softirq_entry", "tracepoint", "count", tracepoint="irq:softirq_entry")])
    up = resolved_uprobe(Probe(index=1, name="up", kind="uprobe", target="/bin/true:main"), "main", 0x1234)
    text = generate([tp, up], ("node",), 10, cgroup_filter=True, task_context=tc).text
    pass_tp = text[text.index("int pass_p0(void)"):text.index("return 1;", text.index("int pass_p0(void)"))]
    pass_up = text[text.index("int pass_p1(void)"):text.index("return 1;", text.index("int pass_p1(void)"))]
    assert "if (!in_task_context()) return 0;" in pass_tp and "in_task_context" not in pass_up
    assert "(void *)(task + 296)" in text and "(void *)(cfs_rq + 312)" in text and "(void *)(rq + 2984)" in text
    assert "*at = rq + (s64)(-109712);" in text and f"count & {INTERRUPT_BITS})" in text
    assert "in_task_context" not in generate([tp, up], ("node",), 10, cgroup_filter=True).text   # not namespaced
