"""The ``guard`` block of a policy (issue #8): validation with named violations, canonical
form, and what an omitted field means (the deployment's default, decided by the service)."""

from __future__ import annotations

from typing import Any

import pytest

from policies.errors import PolicyValidationError
from policies.model import Guard, load_policy_text, parse_policy


def _violations(guard: Any) -> list[tuple[str, str, Any]]:
    with pytest.raises(PolicyValidationError) as info:
        parse_policy({"id": "p", "guard": guard})
    return [(v.field, v.rule, v.limit) for v in info.value.violations]


@pytest.mark.parametrize(
    ("guard", "expected"),
    [
        ({"max_failure_ratio": 1}, [("guard.max_failure_ratio", "max", 1.0)]),
        ({"max_failure_ratio": -0.01}, [("guard.max_failure_ratio", "min", 0.0)]),
        ({"max_failure_ratio": "0.01"}, [("guard.max_failure_ratio", "type", None)]),
        ({"max_failure_ratio": True}, [("guard.max_failure_ratio", "type", None)]),
        ({"min_sessions": 0}, [("guard.min_sessions", "min", 1)]),
        ({"min_sessions": 1_000_001}, [("guard.min_sessions", "max", 1_000_000)]),
        ({"min_sessions": 50.5}, [("guard.min_sessions", "type", None)]),
        ({"min_sessions": "50"}, [("guard.min_sessions", "type", None)]),
        ({"window_s": 0}, [("guard.window_s", "min", 0.0)]),
        ({"window_s": 86_401}, [("guard.window_s", "max", 86_400.0)]),
        ({"on_breach": "stop"}, [("guard.on_breach", "enum", ["halt", "rollback"])]),
        ({"enabled": "no"}, [("guard.enabled", "type", None)]),
        ({"enabled": 0}, [("guard.enabled", "type", None)]),
        ({"max_ratio": 0.1}, [("guard.max_ratio", "unknown_field", None)]),
        ([0.01], [("guard", "type", None)]),
        (
            {"min_sessions": 0, "window_s": -1},
            [("guard.min_sessions", "min", 1), ("guard.window_s", "min", 0.0)],
        ),
    ],
)
def test_a_broken_guard_names_the_field_the_rule_and_the_limit(
    guard: Any, expected: list[tuple[str, str, Any]]
) -> None:
    assert _violations(guard) == expected


def test_omitted_fields_are_left_to_the_deployment_and_the_form_round_trips() -> None:
    assert parse_policy({"id": "p"}).guard is None
    assert "guard" not in parse_policy({"id": "p"}).document()
    empty = parse_policy({"id": "p", "guard": {}})
    assert empty.guard == Guard() and empty.document()["guard"] == {}
    nulls = parse_policy({"id": "p", "guard": {"min_sessions": None, "on_breach": None}})
    assert nulls.document()["guard"] == {}
    full = {"enabled": True, "max_failure_ratio": 0.0, "min_sessions": 1, "window_s": 0.5,
            "on_breach": "rollback"}  # fmt: skip
    policy = parse_policy({"id": "p", "guard": full})
    assert policy.document()["guard"] == full
    assert parse_policy(policy.document()) == policy
    off = parse_policy({"id": "p", "guard": {"enabled": False}})
    assert off.guard is not None and off.guard.enabled is False
    assert off.document()["guard"] == {"enabled": False}


def test_guard_in_yaml_and_integral_numbers() -> None:
    policy = load_policy_text(
        "id: p\nset: {prompt: x}\nguard:\n  max_failure_ratio: 0.02\n  min_sessions: 200\n"
        "  window_s: 60\n  on_breach: rollback\n"
    )
    assert policy.guard == Guard(
        max_failure_ratio=0.02, min_sessions=200, window_s=60.0, on_breach="rollback"
    )
    # a guard never changes what a session resolves to: the plan has no trace of it
    assert policy.plan == parse_policy({"id": "p", "set": {"prompt": "x"}}).plan
