"""Validation of a value against the JSON-schema subset the ProbeSet schema uses (schema.py): one
FieldError per offending field, with its path and reason; values quoted bounded (`show`)."""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldError:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _type_ok(value: Any, typ: str) -> bool:
    if typ == "object":
        return isinstance(value, dict)
    if typ == "array":
        return isinstance(value, list)
    if typ == "string":
        return isinstance(value, str)
    if typ == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if typ == "boolean":
        return isinstance(value, bool)
    raise AssertionError(typ)


class _BoundedRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # YAML reads hex and binary literals of any length; repr() refuses past 4,300 digits
        return f"<an integer of {x.bit_length()} bits>" if x.bit_length() > 256 else super().repr_int(x, level)


_REPR = _BoundedRepr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def show(value: Any) -> str:
    """A value as an error message may quote it: at most 80 characters, whatever its size (only
    a bounded part of it is ever rendered)."""
    if isinstance(value, int) and not isinstance(value, bool):
        text = _REPR.repr_int(value, 1)
    elif isinstance(value, str):
        text = '"' + value[:80].encode("unicode_escape").decode() + ('"' if len(value) <= 80 else "")
    else:
        text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_schema(value: Any, schema: dict, path: str) -> list[FieldError]:
    """Validate value against the schema subset used here; one error per offending field."""
    typ = schema.get("type")
    if typ and not _type_ok(value, typ):
        return [FieldError(path, f"expected {typ}, got {type(value).__name__} {show(value)}")]
    errors: list[FieldError] = []
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(str(v) for v in schema["enum"])
        errors.append(FieldError(path, f"{show(value)} is not one of: {allowed}"))
    if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
        hint = schema.get("x-probeset-hint", f"must match {schema['pattern']}")
        errors.append(FieldError(path, f"{show(value)} is not valid: {hint}"))
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(FieldError(path, f"{show(value)} is below the minimum {schema['minimum']}"))
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(FieldError(path, f"{show(value)} is above the maximum {schema['maximum']}"))
    if typ == "array":
        if len(value) < schema.get("minItems", 0):
            errors.append(FieldError(path, f"needs at least {schema['minItems']} item(s), got {len(value)}"))
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(FieldError(path, f"at most {schema['maxItems']} items allowed, got {len(value)}"))
        if "items" in schema:
            for i, item in enumerate(value):
                errors += check_schema(item, schema["items"], f"{path}[{i}]")
    if typ == "object":
        props = schema.get("properties")
        for name in schema.get("required", []):
            if name not in value:
                errors.append(FieldError(f"{path}.{name}", "required field is missing"))
        for name, item in value.items():
            if not isinstance(name, str):
                errors.append(FieldError(path, f"key {show(name)} is not a string"))
            elif props is not None and name in props:
                errors += check_schema(item, props[name], f"{path}.{name}")
            elif "additionalProperties" in schema:
                errors += check_schema(item, schema["additionalProperties"], f"{path}.{name}")
            elif props is not None:
                errors.append(FieldError(f"{path}.{name}", "unknown field"))
    return errors
