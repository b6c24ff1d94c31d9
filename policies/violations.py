"""Translation of pydantic's validation errors into :class:`policies.errors.Violation` s.

This is the one place where pydantic's error vocabulary meets ours. Every violation names

- ``field``: a dotted path into the document (``experiment.variants[1].weight``,
  ``set.keyterms[3]``, ``match.labels.region[0]``), ``<document>`` for the document itself;
- ``rule``: a stable code (the table in ``docs/policies.md``);
- ``message``: a sentence a human can act on;
- ``limit``: the bound that was broken, when there is one.

Validators in :mod:`policies.model` raise :func:`rule_error` (one violation at the validator's
location) or :func:`violations_error` (several, with paths relative to that location, e.g. the
result of :func:`policies.fields.validate_config`).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from policies.errors import Violation

__all__ = ["format_loc", "rule_error", "translate", "violations_error"]

_RULE_MARK: Final = "policy_rule"
_MANY: Final = "policy_violations"

_TYPE_NAMES: Final[dict[str, str]] = {
    "string_type": "a string",
    "string_unicode": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "decimal_type": "a number",
    "decimal_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "iterable_type": "a list",
    "finite_number": "a finite number",
}


def rule_error(rule: str, message: str, limit: Any = None) -> PydanticCustomError:
    """An error for a validator to raise: one violation of ``rule`` at the current location."""
    return PydanticCustomError(
        rule, "{message}", {"message": message, "limit": limit, _RULE_MARK: True}
    )


def violations_error(violations: Sequence[Violation]) -> PydanticCustomError:
    """An error carrying several violations whose ``field`` is relative to the current location.

    A relative field starts with ``.`` or ``[`` (``.keyterms[3]``) or is empty (the location).
    """
    summary = "; ".join(f"{v.field or '.'}: {v.message}" for v in violations)
    return PydanticCustomError(
        _MANY, "{message}", {"message": summary, "violations": tuple(violations)}
    )


def format_loc(loc: Iterable[int | str]) -> str:
    """``("experiment", "variants", 1, "weight")`` → ``experiment.variants[1].weight``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "<document>"


def translate(
    exc: ValidationError,
    root: type[BaseModel],
    pattern_hints: Mapping[str, str] | None = None,
) -> list[Violation]:
    """Every error of ``exc`` (raised validating ``root``) as a :class:`Violation`.

    ``pattern_hints`` maps a regex to a plain-words description used in pattern messages.
    A "too few items" error is dropped when an item of the same list has its own violation
    (pydantic reports both when the only item is invalid).
    """
    out: list[Violation] = []
    for err in exc.errors(include_url=False):
        out.extend(_translate_one(err, root, pattern_hints or {}))
    return [v for v in out if not (v.rule == "min_items" and _has_child(out, v.field))]


def _has_child(violations: list[Violation], path: str) -> bool:
    return any(v.field.startswith(path + "[") for v in violations)


def _translate_one(
    err: ErrorDetails, root: type[BaseModel], hints: Mapping[str, str]
) -> list[Violation]:
    loc = tuple(err["loc"])
    path = format_loc(loc)
    kind = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    if kind == _MANY:
        base = "" if path == "<document>" else path
        return [
            Violation(base + v.field if base else v.field.lstrip("."), v.rule, v.message, v.limit)
            for v in ctx["violations"]
        ]
    if ctx.get(_RULE_MARK):
        return [Violation(path, kind, str(ctx["message"]), _plain(ctx.get("limit")))]
    if loc and loc[-1] == "[key]":
        return [_label_key(path, kind, ctx, err["msg"], hints)]
    return [_builtin(err, root, hints)]


def _builtin(err: ErrorDetails, root: type[BaseModel], hints: Mapping[str, str]) -> Violation:
    loc = tuple(err["loc"])
    path = format_loc(loc)
    kind = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    value = err.get("input")
    msg = err["msg"]
    if kind == "missing":
        return Violation(path, "required", "is required")
    if kind == "extra_forbidden":
        allowed = _allowed_fields(root, loc[:-1])
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return Violation(path, "unknown_field", f"unknown field{hint}")
    if kind in _TYPE_NAMES:
        return Violation(path, "type", f"must be {_TYPE_NAMES[kind]}, got {_describe(value)}")
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        hint = f" ({hints[pattern]})" if pattern in hints else ""
        return Violation(
            path, "pattern", f"{_short(value)} does not match {pattern}{hint}", pattern
        )
    if kind == "string_too_long":
        limit = int(ctx["max_length"])
        return Violation(path, "max_length", f"is {len(value)} characters, limit is {limit}", limit)
    if kind == "string_too_short":
        limit = int(ctx["min_length"])
        text = "must not be empty" if limit == 1 else f"needs at least {limit} characters"
        return Violation(path, "min_length", text, limit)
    if kind == "too_short":
        limit = int(ctx["min_length"])
        text = "must not be empty" if limit == 1 else f"needs at least {limit} items"
        return Violation(path, "min_items", text, limit)
    if kind == "too_long":
        limit = int(ctx["max_length"])
        actual = ctx.get("actual_length")
        text = (
            f"limit is {limit} items" if actual is None else f"has {actual} items, limit is {limit}"
        )
        return Violation(path, "max_items", text, limit)
    if kind in ("greater_than", "greater_than_equal"):
        key = "gt" if kind == "greater_than" else "ge"
        limit = _plain(ctx[key])
        relation = "must be greater than" if key == "gt" else "minimum is"
        return Violation(path, "min", f"is {_plain(value)}, {relation} {limit}", limit)
    if kind in ("less_than", "less_than_equal"):
        key = "lt" if kind == "less_than" else "le"
        limit = _plain(ctx[key])
        relation = "must be less than" if key == "lt" else "maximum is"
        return Violation(path, "max", f"is {_plain(value)}, {relation} {limit}", limit)
    if kind == "decimal_max_places":
        limit = int(ctx["decimal_places"])
        return Violation(
            path, "max_decimals", f"{_plain(value)} has more than {limit} decimal places", limit
        )
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return Violation(
            path,
            "enum",
            f"must be one of {', '.join(expected)}; got {_describe(value)}",
            expected or None,
        )
    if kind in ("value_error", "assertion_error"):
        return Violation(path, "invalid", str(ctx.get("error", msg)))
    return Violation(path, kind, msg)


def _label_key(
    path: str, kind: str, ctx: dict[str, Any], msg: str, hints: Mapping[str, str]
) -> Violation:
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        hint = f" ({hints[pattern]})" if pattern in hints else ""
        return Violation(path, "pattern", f"label name does not match {pattern}{hint}", pattern)
    if kind == "string_too_long":
        limit = int(ctx["max_length"])
        return Violation(path, "max_length", f"label name is over {limit} characters", limit)
    return Violation(path, "type", f"label name: {msg}")


def _allowed_fields(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        model = _model_in(info.annotation) if info is not None else None
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_in(typing.get_args(annotation)[0])
    if origin in (tuple, list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _plain(value: Any) -> Any:
    """Make ``value`` JSON-able (``Decimal('2.5')`` → ``2.5``, ``Decimal('100')`` → ``100``)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {_short(value)}"
    if isinstance(value, int | float | Decimal):
        return f"number {_plain(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__
