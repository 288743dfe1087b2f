"""Which ProbeSets may run, decided once for the operator and every agent: the administrator's
policy (Helm values, passed by environment) applied to a ProbeSet object. The operator marks a set
Valid or not with it; each agent applies it again before running a set, because an edited spec
reaches the agents as soon as the operator, and an agent must not run what the operator refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from . import ALLOW_TOLERATIONS_ENV, NODE_WIDE_NAMESPACES_ENV, OPERATOR_NAMESPACE_ENV, TENANT_VALUES_ENV
from .validation import FieldError
from .spec import (ProbeSet, SpecError, node_wide_from_env, operator_namespace_from_env, parse_probeset,
                   restrict_values, scope_error, tenant_values_from_env, value_policy)

TOLERATIONS_REFUSED = ("where privileged agents run is the cluster admin's choice (Helm agent.tolerations), and this "
                       "cluster does not let ProbeSets add tolerations: remove spec.tolerations, or ask the admin "
                       "(agent.allowProbeSetTolerations)")


@dataclass(frozen=True)
class Admission:
    """The administrator's policy for ProbeSets.

    - node_wide: namespaces whose sets may have scope Node (host processes, every pod).
    - tenant_values: values namespaced sets may record although they can carry addresses or other
      tasks' identity (KIND:TARGET:FIELD each; see spec.ValuePolicy).
    - allow_tolerations: whether a set's spec.tolerations may widen where agents run.
    """

    operator_namespace: str
    node_wide: frozenset[str]
    tenant_values: frozenset[str] = frozenset()
    allow_tolerations: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "Admission":
        return cls(operator_namespace_from_env(environ), node_wide_from_env(environ), tenant_values_from_env(environ),
                   (environ.get(ALLOW_TOLERATIONS_ENV) or "false").lower() == "true")

    def env(self) -> list[dict]:
        """The environment that gives an agent this policy (from_env reads it back); empty values
        are left out (the API server drops them)."""
        out = [{"name": OPERATOR_NAMESPACE_ENV, "value": self.operator_namespace},
               {"name": NODE_WIDE_NAMESPACES_ENV, "value": ",".join(sorted(self.node_wide))}]
        if self.tenant_values:
            out.append({"name": TENANT_VALUES_ENV, "value": ",".join(sorted(self.tenant_values))})
        if self.allow_tolerations:
            out.append({"name": ALLOW_TOLERATIONS_ENV, "value": "true"})
        return out

    def admit(self, body: dict) -> ProbeSet:
        """The ProbeSet agents may run for this object; SpecError (each error with its field) when
        none: set-level errors, a scope the namespace is not granted, tolerations the admin does not
        allow, or no valid probe left. Probes that would record values a namespaced set may not are
        moved to `rejected`, each with its field; the others run."""
        pset = parse_probeset(body)
        error = scope_error(pset, self.node_wide)
        if error:
            raise SpecError([error])
        if pset.tolerations and not self.allow_tolerations:
            raise SpecError([FieldError("spec.tolerations", TOLERATIONS_REFUSED)])
        pset = restrict_values(pset, value_policy(pset, self.tenant_values))
        if not pset.probes:   # every probe rejected: nothing for an agent to run
            raise SpecError([e for r in pset.rejected for e in r.errors])
        return pset

    def value_policy(self, pset: ProbeSet):
        return value_policy(pset, self.tenant_values)
