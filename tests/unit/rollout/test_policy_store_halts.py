"""Halted versions in the policy store: fallback, per-session policy sets, rollout state,
and the ``policy.halted`` event contract."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.intake.bus import PolicyEvent
from controlplane.intake.store import PolicyStore


def published(version: int, prompt: str, cause: str = "policy", **extra: Any) -> PolicyEvent:
    doc = {"id": "p", "version": version, "set": {"system_prompt": prompt}, **extra}
    return PolicyEvent("policy.published", doc, "compliance:abc", "2026-01-01T00:00:00Z",
                       cause=cause)  # fmt: skip


def retired(version: int) -> PolicyEvent:
    return PolicyEvent("policy.retired", {"id": "p", "version": version}, "compliance:abc",
                       "2026-01-01T00:00:00Z", cause="retire")  # fmt: skip


def halted(version: int, **detail: Any) -> PolicyEvent:
    return PolicyEvent("policy.halted", {"id": "p", "version": version}, "guard:node-a",
                       "2026-01-01T00:01:00Z", cause="guard",
                       halt={"failed": 2, "targeted": 60, **detail})  # fmt: skip


def prompts(store: PolicyStore, pins: Any = ()) -> list[Any]:
    return [(p.id, p.version, p.set.get("system_prompt")) for p in store.resolution_set(pins)]


def test_a_halt_falls_back_to_the_previous_version_except_for_pinned_sessions() -> None:
    store = PolicyStore()
    other = PolicyEvent("policy.published", {"id": "q", "version": 1}, "a", "t")
    for event in (published(1, "v1"), published(2, "v2"), other):
        assert store.apply(event) is not None
    assert not store.has_halts
    halt = store.halt(halted(2))
    assert halt is not None and store.has_halts
    assert store.is_halted("p", 2) and not store.is_halted("p", 1)
    assert [(p.id, p.version) for p in store.active()] == [("p", 1), ("q", 1)]
    assert prompts(store, {("p", 2)}) == [("p", 2, "v2"), ("q", 1, None)]
    assert store.current_version("p") == 2  # a halt is not a version
    assert store.halt(halted(2)) is None  # a second decision changes nothing
    assert store.halt(halted(1)) is None  # nor a halt of a version that is not current
    assert halt.as_dict() == {"version": 2, "at": "2026-01-01T00:01:00Z",
                              "actor": "guard:node-a", "failed": 2, "targeted": 60}  # fmt: skip


@pytest.mark.parametrize(
    ("history", "fallback"),
    [
        ([published(1, "v1")], None),  # nothing before it: the policy stops applying
        ([published(1, "v1"), published(2, "v2")], 1),
        ([published(1, "v1"), retired(2), published(3, "v3")], None),
        ([published(1, "v1"), published(2, "v2"), halted(2), published(3, "v3")], 1),
    ],
)
def test_the_fallback_is_the_latest_earlier_good_version(
    history: list[PolicyEvent], fallback: int | None
) -> None:
    store = PolicyStore()
    for event in history:
        if event.type == "policy.halted":
            assert store.halt(event) is not None
        else:
            assert store.apply(event) is not None
    current = store.current_version("p")
    assert store.halt(halted(current)) is not None
    record = store.fallback("p")
    assert (None if record is None else record.version) == fallback
    assert [p.version for p in store.active()] == ([] if fallback is None else [fallback])


def test_rollout_state_through_halt_rollback_new_version_and_retirement() -> None:
    store = PolicyStore()
    store.apply(published(1, "v1"))
    store.apply(published(2, "v2"))
    assert store.rollout_state("p") == ("active", None)
    store.halt(halted(2, on_breach="rollback"))
    state, halt = store.rollout_state("p")
    assert state == "halted" and halt is not None and halt.version == 2
    change = store.apply(published(3, "v1", cause="rollback"))
    assert change is not None and change.fallback is not None and change.fallback.version == 1
    assert not store.has_halts  # a new version ends the halt
    state, halt = store.rollout_state("p")
    assert state == "rolled_back" and halt is not None and halt.version == 2
    store.apply(published(4, "v4"))
    assert store.rollout_state("p") == ("active", None)
    store.halt(halted(4))
    store.apply(retired(5))
    state, halt = store.rollout_state("p")
    assert state == "retired" and halt is not None and halt.version == 4
    assert store.halt(halted(5)) is None  # nothing active to halt


def test_halted_event_contract() -> None:
    event = halted(2, on_breach="halt")
    assert event.msg_id == "p:2:halted"
    wire = event.to_json()
    assert wire["type"] == "policy.halted" and wire["cause"] == "guard"
    assert wire["halt"] == {"failed": 2, "targeted": 60, "on_breach": "halt"}
    assert PolicyEvent.from_json(wire) == event
    assert "halt" not in published(1, "v1").to_json()  # other events are unchanged
    with pytest.raises(ValueError, match="halt must be an object"):
        PolicyEvent.from_json({**wire, "halt": [1]})
    with pytest.raises(ValueError, match="cause must be one of"):
        PolicyEvent.from_json({**wire, "cause": "oops"})
