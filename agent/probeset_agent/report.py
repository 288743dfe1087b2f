"""How the agent reports a probe's outcome: one typed result per probe (ProbeStatus), whatever step
failed (validation, resolution, compile, attach, placement). Exceptions are for everything else.
A node's statuses become the NodeReport of the status contract (probeset_api.status)."""

from __future__ import annotations

from dataclasses import dataclass, field

from probeset_api.status import REPORT_ERROR_MAX, NodeReport, ProbeResult, now


@dataclass
class ProbeStatus:
    name: str
    index: int
    kind: str
    via: str = ""
    via_reason: str = ""                                       # why that hook (hooks.py)
    targets: list[str] = field(default_factory=list)
    functions: dict[str, bool] = field(default_factory=dict)   # function label -> attached
    error: str | None = None

    @property
    def attached(self) -> bool:
        return self.error is None or any(self.functions.values())

    def fail(self, reason: str) -> None:
        """Record why the probe (or part of it) does not work; the first reason is kept."""
        self.error = self.error or reason

    def result(self) -> ProbeResult:
        return ProbeResult(name=self.name, attached=self.attached, attachedVia=self.via or None,
                           functions=sum(self.functions.values()),
                           error=self.error[:REPORT_ERROR_MAX] if self.error is not None else None)


def node_report(statuses: list[ProbeStatus], generation: int | None, total: int) -> NodeReport:
    """The node's report on a set (its ProbeSetNode's status.sets entry) for these probe statuses."""
    return NodeReport(generation=generation, attached=sum(1 for st in statuses if st.error is None),
                      total=total, updated=now(),
                      failed=tuple(st.result() for st in statuses if st.error is not None))


def spec_failure(generation: int | None, total: int, message: str, reason: str = "InvalidSpec") -> NodeReport:
    """The report of a node whose agent does not run the spec at all, and why (`reason`: InvalidSpec,
    OverBudget; `message` says more)."""
    return NodeReport(generation=generation, attached=0, total=total, updated=now(), reason=reason,
                      failed=(ProbeResult(name="(spec)", attached=False, error=message[:REPORT_ERROR_MAX]),))
