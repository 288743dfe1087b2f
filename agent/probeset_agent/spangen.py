"""A two-point probe's C (spans): the pending map, the start block (remember the time, and the
task's cgroup and name when the start labels the sample) and the end block (take the start with
an equal key, record the time between). Its C text is here; keys are loaded by intload.load_int,
labels come from typed fields only. Pure."""

from __future__ import annotations

from .ctemplates import CCode, LOAD_LINE, fill, join
from .intload import load_int
from .layout import key_uses_cgroup
from .resolve import ResolvedProbe, Site

# Starts wait in pending_pP under their key (u64 k0, k1); the first end with an equal key takes
# its start and records the time between them.
SPAN_MAPS = """\
struct pkey_p@P@ {@PKEY_FIELDS@ };
struct pending_p@P@ { u64 ts; u64 cgroup; struct comm_t comm; };
BPF_HASH(pending_p@P@, struct pkey_p@P@, struct pending_p@P@, @ENTRIES@);
"""
SPAN_START_BLOCK = """\
    if (@PASS@@FILTER@) {
        struct pkey_p@P@ pk;
        struct pending_p@P@ pv = {};
        __builtin_memset(&pk, 0, sizeof(pk));
@FILL_PKEY@@ATTRIBUTION@        pv.ts = bpf_ktime_get_ns();
        if (pending_p@P@.update(&pk, &pv)) count_missed(@P@, MISSED_PENDING_FULL);
    }
"""
SPAN_END_BLOCK = """\
    if (@PASS@@FILTER@) {
        struct pkey_p@P@ pk;
        __builtin_memset(&pk, 0, sizeof(pk));
@FILL_PKEY@        struct pending_p@P@ *pv = pending_p@P@.lookup(&pk);
        if (pv) {
            u64 ns = bpf_ktime_get_ns() - pv->ts;
            struct key_p@P@ key;
            __builtin_memset(&key, 0, sizeof(key));
            key.func = 0;
@FILL_KEY@            pending_p@P@.delete(&pk);
            record_p@P@(&key, ns, 1);
        }
    }
"""
PASS_CALL = "pass_p@P@()"
PENDING_CGROUP = CCode("        pv.cgroup = bpf_get_current_cgroup_id();\n")
PENDING_COMM = CCode("        bpf_get_current_comm(&pv.comm.c, sizeof(pv.comm.c));\n")
CGROUP_FROM_START = CCode("            key.cgroup = pv->cgroup;\n")
COMM_FROM_START = CCode("            __builtin_memcpy(&key.comm, &pv->comm.c, sizeof(key.comm));\n")


def span_maps(rp: ResolvedProbe) -> CCode:
    keys = len(rp.sites[0].key_fields)
    fields = join(fill(" u64 k@I@;", I=i) for i in range(keys))
    return fill(SPAN_MAPS, P=rp.id, PKEY_FIELDS=fields, ENTRIES=rp.probe.max_pending)


def span_block(rp: ResolvedProbe, site: Site, labels: tuple[str, ...], filter_call: CCode,
               attribution_here: CCode, field_fill, both_ends_filtered: bool = False) -> CCode:
    """The C of a span's start or end site. `attribution_here`: the current task's labels into
    the series key; `field_fill(gf, i)`: a groupBy field of the end event into it.

    The end that labels the sample (labelsFrom) passes the set's selection (pass_pP); the other
    may run in any task, as block I/O completes in an interrupt. `both_ends_filtered` (a namespaced
    set) makes both pass: else a start or end of any task on the node, host or another pod, would
    pair with the tenant's and its samples would time that task (docs/operator.md, "Who may observe
    what")."""
    p, from_start = rp.id, rp.probe.labels_from == "start"
    labelled_here = from_start == (site.role == "span_start")
    passes = fill(PASS_CALL, P=p) if labelled_here or both_ends_filtered else CCode("1")
    fill_pkey = join(fill(LOAD_LINE, LOAD=load_int(gf, site, fill("pk.k@I@", I=i)))
                     for i, gf in enumerate(site.key_fields))
    if site.role == "span_start":
        remember = [PENDING_CGROUP if from_start and key_uses_cgroup(labels) else "",
                    PENDING_COMM if from_start and "comm" in labels else ""]
        return fill(SPAN_START_BLOCK, P=p, PASS=passes, FILTER=filter_call, FILL_PKEY=fill_pkey,
                    ATTRIBUTION=join(remember))
    if from_start:
        attribution = join([CGROUP_FROM_START if key_uses_cgroup(labels) else "",
                            COMM_FROM_START if "comm" in labels else ""])
    else:
        attribution = join("    " + line + "\n" for line in attribution_here.splitlines())
    fields = join("    " + line + "\n" for i, gf in enumerate(site.fields) for line in field_fill(gf, i).splitlines())
    return fill(SPAN_END_BLOCK, P=p, PASS=passes, FILTER=filter_call, FILL_PKEY=fill_pkey,
                FILL_KEY=join([attribution, fields]))
