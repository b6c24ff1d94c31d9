"""The constrained field types of a policy document (pydantic ``Annotated`` types with their
validators: identifiers, labels, selector values, percentages, whole numbers, ``set`` configs,
``lock`` fields, ``bucket_by``) and the helpers the models share to validate and to write
their canonical form."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from annotated_types import Len
from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator, StringConstraints

from policies.errors import PolicyValidationError, Violation
from policies.fields import FIELD_NAMES, FIELDS, Config, Value, validate_config
from policies.limits import (
    BUCKET_BY_SESSION,
    ID_MAX_CHARS,
    ID_PATTERN,
    LABEL_MAX_CHARS,
    LABEL_PATTERN,
    LABEL_VALUE_MAX_CHARS,
    MAX_LABEL_CONDITIONS,
    MAX_SELECTOR_VALUES,
    MAX_VERSION,
    RESERVED_IDS,
    SALT_MAX_CHARS,
    VARIANT_PATTERN,
)
from policies.violations import rule_error, violations_error

__all__ = [
    "PATTERN_HINTS",
    "ApplyMode",
    "BucketBy",
    "ConfigSet",
    "Identifier",
    "Kind",
    "LabelConditions",
    "LabelName",
    "LockField",
    "ModelName",
    "OnBreach",
    "Percent",
    "PolicyId",
    "Salt",
    "VariantName",
    "WholeNumber",
    "config_document",
    "number",
    "silence_order",
    "type_name",
]

PATTERN_HINTS: Final = {
    ID_PATTERN: "lowercase letters, digits and '-', starting with a letter or digit",
    VARIANT_PATTERN: "lowercase letters, digits, '-' and '_', starting with a letter or digit",
    LABEL_PATTERN: "letters, digits and _ . : / -, starting with a letter, digit or _",
}

Kind = Literal["streaming-v3", "voice-agent-v1"]
ApplyMode = Literal["immediate", "next_turn"]
OnBreach = Literal["halt", "rollback"]

Identifier = Annotated[
    str, StringConstraints(pattern=ID_PATTERN, min_length=1, max_length=ID_MAX_CHARS)
]
VariantName = Annotated[
    str, StringConstraints(pattern=VARIANT_PATTERN, min_length=1, max_length=ID_MAX_CHARS)
]
LabelName = Annotated[
    str, StringConstraints(pattern=LABEL_PATTERN, min_length=1, max_length=LABEL_MAX_CHARS)
]
LabelValue = Annotated[str, StringConstraints(min_length=1, max_length=LABEL_VALUE_MAX_CHARS)]
LabelValues = Annotated[tuple[LabelValue, ...], Len(1, MAX_SELECTOR_VALUES)]
LabelConditions = Annotated[dict[LabelName, LabelValues], Len(0, MAX_LABEL_CONDITIONS)]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=LABEL_MAX_CHARS)]
Salt = Annotated[str, StringConstraints(min_length=1, max_length=SALT_MAX_CHARS)]


def _whole(value: Any) -> Any:
    """JSON Schema's ``integer`` (what /openapi.json says): 7.0 is the integer 7."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_VERSION:
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole)]


def _not_reserved(value: str) -> str:
    if value in RESERVED_IDS:
        raise rule_error(
            "reserved", f"{value!r} is a reserved word of the REST API (/v1/policies/{value})"
        )
    return value


PolicyId = Annotated[Identifier, AfterValidator(_not_reserved)]
Percent = Annotated[Decimal, Field(ge=0, le=100, decimal_places=3)]


def _validate_set(raw: Any) -> Config:
    """``set`` / ``variants[i].set``: canonical fields, normalised; min ≤ max silence."""
    if not isinstance(raw, Mapping):
        raise rule_error("type", f"must be a mapping of canonical fields, got {type_name(raw)}")
    try:
        config = validate_config(raw, path="")
    except PolicyValidationError as exc:
        raise violations_error(exc.violations) from None
    problem = silence_order(config)
    if problem is not None:
        raise violations_error([problem])
    return config


def silence_order(config: Mapping[str, Value], where: str = "") -> Violation | None:
    low, high = config.get("min_turn_silence_ms"), config.get("max_turn_silence_ms")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        return Violation(
            f"{where}.min_turn_silence_ms",
            "min_le_max",
            f"is {low}, must not exceed max_turn_silence_ms ({high})",
            high,
        )
    return None


def _check_field_name(name: str) -> str:
    if name not in FIELD_NAMES:
        known = ", ".join(FIELDS)
        raise rule_error("unknown_field", f"unknown field {name!r} (known: {known})")
    return name


def _check_bucket_by(name: str) -> str:
    if name != BUCKET_BY_SESSION and len(name) > LABEL_MAX_CHARS:
        raise rule_error("max_length", f"label name is over {LABEL_MAX_CHARS} characters")
    return name


ConfigSet = Annotated[Config, PlainValidator(_validate_set)]
LockField = Annotated[str, AfterValidator(_check_field_name)]
BucketBy = Annotated[
    str, StringConstraints(pattern=LABEL_PATTERN, min_length=1), AfterValidator(_check_bucket_by)
]


def number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def config_document(config: Mapping[str, Value]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIELDS:
        if name in config:
            value = config[name]
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__
