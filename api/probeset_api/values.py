"""Values: a number recorded per event (value, aggregate, unit) and how a return value is labelled
(retvalLabel). The rules a schema cannot express, and the metric names a value gets. Pure.

A value is an argument (arg0..arg5, unsigned, read at entry), the return value (retval, signed,
read at return) or an integer tracepoint field (its own type, checked on the host). Negative
values are not sizes: the event is still counted in probeset_events_total, its value is left out
of the sum and the histogram, and counted in probeset_missed_events_total{reason="negative_value"}.
"""

from __future__ import annotations

from typing import Any

from .schema import ARG_FIELDS, PROBE_DEFAULTS, RETURN_KINDS
from .validation import FieldError

VALUE_METRIC = "probeset_value"


def metric_name(unit: str | None, aggregate: str) -> str:
    """The metric family of a value probe: probeset_value[_UNIT] (histogram) or ..._total (sum)."""
    base = VALUE_METRIC + (f"_{unit}" if unit else "")
    return base + "_total" if aggregate == "sum" else base


def errno_label(kind: str) -> str:
    """The label retvalLabel: errno names: retval, or a tracepoint's `ret` field (the syscall exit
    tracepoints' return value)."""
    return "ret" if kind == "tracepoint" else "retval"


def value_errors(raw: dict[str, Any], kind: str, path: str) -> list[FieldError]:
    """What is wrong with a probe's value, aggregate, unit and retvalLabel (raw has defaults applied)."""
    errors = []
    value = raw.get("value")
    if value is None:
        if raw["aggregate"] != PROBE_DEFAULTS["aggregate"]:
            errors.append(FieldError(f"{path}.aggregate", "only applies with value"))
        if "unit" in raw:
            errors.append(FieldError(f"{path}.unit", "only applies with value"))
    else:
        where = f"{path}.value"
        if raw["latency"]:
            errors.append(FieldError(where, "a probe records either latency or a value, not both: "
                                            "use two probes"))
        elif value == "retval":
            if kind not in RETURN_KINDS:
                errors.append(FieldError(where, f"retval needs a return probe (kretprobe, uretprobe), not {kind}: "
                                                "at entry there is no return value yet"))
        elif value in ARG_FIELDS:
            if kind in RETURN_KINDS:
                errors.append(FieldError(where, f"{value} of a return probe is gone at return (its register is "
                                                f"reused): use the entry probe ({kind[:1]}{kind[4:]})"))
            elif kind == "tracepoint":
                errors.append(FieldError(where, f"{value} is for function probes; a tracepoint's values are "
                                                "its fields (see its format file)"))
        elif value == "comm":
            errors.append(FieldError(where, "comm is a string; a value is a number"))
        elif kind != "tracepoint":
            errors.append(FieldError(where, f"{value!r} is not available for {kind}: use arg0..arg5"
                                            + (" or retval" if kind in RETURN_KINDS else "")))
    if raw["bucketsPerPowerOfTwo"] != PROBE_DEFAULTS["bucketsPerPowerOfTwo"] and not raw["latency"] and not (
            value is not None and raw["aggregate"] == "histogram"):
        errors.append(FieldError(f"{path}.bucketsPerPowerOfTwo", "only applies with latency: true or "
                                                                 "aggregate: histogram"))
    if raw["retvalLabel"] != PROBE_DEFAULTS["retvalLabel"] and errno_label(kind) not in (raw.get("groupBy") or []):
        errors.append(FieldError(f"{path}.retvalLabel", f"only applies with groupBy: [{errno_label(kind)}]"))
    return errors


# Where two names share a number, the kernel's own (include/uapi/asm-generic/errno.h) wins.
_KERNEL_NAMES = {"EDEADLOCK": "EDEADLK", "ENOTSUP": "EOPNOTSUPP", "EWOULDBLOCK": "EAGAIN"}


def errno_symbols() -> dict[int, str]:
    """{-errno: name} for retvalLabel: errno (-2 -> ENOENT), from the C library's table (Python's
    errno module: the numbers of the Linux system it runs on). Numbers it does not know (the
    kernel-internal 512 and up, e.g. -512 ERESTARTSYS) stay numbers. A function returning a 32-bit
    int leaves -2 zero-extended in the 64-bit register (4294967294): that is ENOENT too."""
    import errno
    out = {}
    for number, name in errno.errorcode.items():
        out[-number] = out[(1 << 32) - number] = _KERNEL_NAMES.get(name, name)
    return out
