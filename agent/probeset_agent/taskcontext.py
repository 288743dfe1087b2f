"""Whether a kernel event happened in a task's own context or in an interrupt that came upon it.

A namespaced set counts only its pods' events: its program asks whose cgroup the current task is
in. In a hardirq, a softirq or an NMI the current task is whichever one the interrupt came upon,
and the work is not that task's: a packet received for another pod, a disk completion, a timer.
The kernel marks those contexts in the CPU's preempt count (include/linux/preempt.h), which the
program reads: a namespaced set's kernel probes count nothing there.

On x86-64 the preempt count is a per-CPU variable whose address a BCC program cannot name (no
typed ksyms; /proc/kallsyms lists no data without CONFIG_KALLSYMS_ALL). It is computed: the running
task's runqueue (current->se.cfs_rq->rq) is this CPU's copy of the per-CPU `runqueues`, and each
per-CPU variable of a CPU lies at the same distance from it as in the per-CPU section, which the
kernel's BTF describes. The program checks rq->cpu against the CPU it runs on before it keeps the
address (per CPU); until then, and if a read fails, it counts nothing."""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

from probeset_api.schema import USER_KINDS

from . import btf

# include/linux/preempt.h: NMI_MASK | HARDIRQ_MASK | SOFTIRQ_OFFSET (serving a softirq, not just
# having bottom halves disabled), the same bit layout on every architecture since Linux 5.x.
INTERRUPT_BITS = 0x00F00000 | 0x000F0000 | 0x00000100


@dataclass(frozen=True)
class TaskContext:
    task_cfs_rq: int         # offsetof(struct task_struct, se.cfs_rq)
    cfs_rq_rq: int           # offsetof(struct cfs_rq, rq)
    rq_cpu: int              # offsetof(struct rq, cpu)
    preempt_from_rq: int     # this CPU's preempt count - this CPU's runqueue (per-CPU offsets)


def layout(types: btf.Types) -> TaskContext:
    """From the kernel's BTF; btf.BTFError naming what is missing."""
    try:
        preempt = types.percpu_offset("__preempt_count")
    except btf.BTFError:          # 6.2 to 6.14 keep it in struct pcpu_hot
        preempt = types.percpu_offset("pcpu_hot") + types.member_offset("pcpu_hot", "preempt_count")
    return TaskContext(task_cfs_rq=types.member_offset("task_struct", "se.cfs_rq"),
                       cfs_rq_rq=types.member_offset("cfs_rq", "rq"),
                       rq_cpu=types.member_offset("rq", "cpu"),
                       preempt_from_rq=preempt - types.percpu_offset("runqueues"))


@functools.lru_cache(maxsize=1)
def task_context() -> tuple[TaskContext | None, str]:
    """This kernel's layout, or None and why the agent cannot tell task context here."""
    machine = platform.machine()
    if machine != "x86_64":
        return None, f"reading the preempt count is implemented for x86-64 only (this node: {machine})"
    try:
        return layout(btf.load()), ""
    except btf.BTFError as e:
        return None, f"{e} (the agent finds the preempt count through the kernel's BTF, CONFIG_DEBUG_INFO_BTF)"


def kernel_sited(rp) -> bool:
    """Whether a resolved probe has a site in the kernel (a tracepoint, kprobe or fentry, which can
    fire in an interrupt), not only uprobes (which fire in the task that hit them)."""
    return any(site.mechanism not in USER_KINDS for site in rp.sites)


def refusal(rp, why: str) -> str:
    return (f"{rp.probe.path}: a namespaced ProbeSet counts a kernel event only in its own pods' task context, "
            f"not in an interrupt that came upon one of their tasks (a packet or a disk completion of anyone); "
            f"this node cannot tell the two apart: {why}")
