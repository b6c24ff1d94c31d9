"""Fuzz the policy schema: arbitrary documents and mutations of valid ones.

Law: ``parse_policy`` returns a policy or raises ``PolicyValidationError`` — nothing else — and
every violation names a field and a rule. A policy it accepts is publishable: its canonical
document is UTF-8 JSON (what the version log, NATS and the REST API write) and parses back to
the same policy.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policies.errors import PolicyValidationError
from policies.fields import FIELDS, check_value, validate_config
from policies.model import Policy, load_policy_text, parse_policy
from tests.fuzz.strategies import HUGE_INTS, json_values, mutated_policies, text, valid_policies

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RULE = re.compile(r"[a-z][a-z0-9_]*")


def _check_violations(exc: PolicyValidationError) -> None:
    assert exc.violations, "a validation error must carry at least one violation"
    for v in exc.violations:
        assert isinstance(v.field, str) and v.field, v
        assert isinstance(v.rule, str) and RULE.fullmatch(v.rule), v
        assert isinstance(v.message, str) and v.message, v
    # what the REST API renders (details.violations) must be JSON
    json.dumps([v.as_dict() for v in exc.violations], allow_nan=True)
    assert str(exc)


def _check_publishable(policy: Policy) -> None:
    document = policy.document()
    encoded = json.dumps(document, ensure_ascii=False, allow_nan=False).encode("utf-8")
    assert parse_policy(json.loads(encoded)) == policy


def _parse(doc: Any) -> None:
    try:
        policy = parse_policy(doc)
    except PolicyValidationError as exc:
        _check_violations(exc)
    else:
        _check_publishable(policy)


@FUZZ
@given(json_values(max_leaves=20))
def test_arbitrary_values_are_refused_with_named_violations(doc: Any) -> None:
    _parse(doc)


@FUZZ
@example({"id": "p", "set": {"\ud800": 1}})  # a lone surrogate key: pydantic could not report it
@example({"id": "p", "set": {"prompt": "\udfff"}})  # accepted, then unwritable in the log
@example({"id": "p", "set": {"vad_threshold": 10**400}})  # OverflowError
@given(
    st.dictionaries(
        st.sampled_from(["id", "set", "match", "lock", "rollout"]) | text, json_values(), max_size=6
    )
)
def test_arbitrary_mappings_are_refused_with_named_violations(doc: dict[str, Any]) -> None:
    _parse(doc)


@FUZZ
@given(valid_policies())
def test_valid_documents_parse_and_round_trip(doc: dict[str, Any]) -> None:
    _check_publishable(parse_policy(doc))


@settings(FUZZ, max_examples=600)
@given(mutated_policies())
def test_mutations_of_valid_documents_never_raise_anything_else(doc: dict[str, Any]) -> None:
    _parse(doc)


@FUZZ
@given(st.text(max_size=200) | json_values().map(json.dumps))
def test_policy_text_never_raises_anything_else(source: str) -> None:
    try:
        policy = load_policy_text(source)
    except PolicyValidationError as exc:
        _check_violations(exc)
    else:
        _check_publishable(policy)


@FUZZ
@given(
    name=st.sampled_from(sorted(FIELDS)) | text,
    value=json_values() | HUGE_INTS | st.lists(HUGE_INTS | text, max_size=3),
)
def test_canonical_values_normalise_or_name_the_problem(name: Any, value: Any) -> None:
    normalised, problems = check_value(name, value, f"config.{name}")  # as callers do
    for v in problems:
        assert v.field and RULE.fullmatch(v.rule), v
    if not problems:  # an accepted value is UTF-8 JSON (the audit log writes it)
        plain = list(normalised) if isinstance(normalised, tuple) else normalised
        json.dumps(plain, ensure_ascii=False, allow_nan=False).encode("utf-8")
    try:
        validate_config({name: value})
    except PolicyValidationError as exc:
        _check_violations(exc)
