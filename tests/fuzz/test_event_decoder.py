"""Fuzz the NATS policy-event decoder ``PolicyEvent.from_json``.

Law: any input either decodes to an event whose fields hold the contract (DESIGN §4 NATS) or
raises ``ValueError`` with a message; an event it returns re-encodes (UTF-8 JSON, what the
JetStream bus publishes) and decodes to itself.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controlplane.intake.bus import CAUSES, EVENT_TYPES, PolicyEvent, UndecodableEvent, decode_event
from tests.fuzz.strategies import HOSTILE_TEXT, HUGE_INTS, json_values, text, valid_policies

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode(raw: Any) -> PolicyEvent | None:
    try:
        event = PolicyEvent.from_json(raw)
    except ValueError as exc:
        assert str(exc), "a refused event must say why"
        return None
    assert event.type in EVENT_TYPES
    assert event.cause in CAUSES
    assert isinstance(event.policy_id, str)
    assert isinstance(event.version, int) and event.version >= 1
    suffix = ":halted" if event.type == "policy.halted" else ""
    assert event.msg_id == f"{event.policy_id}:{event.version}{suffix}"
    assert event.halt is None or isinstance(event.halt, dict)
    for value in (event.actor, event.published_at, event.event_id):
        assert isinstance(value, str)
    wire = json.dumps(event.to_json(), ensure_ascii=False, allow_nan=False).encode("utf-8")
    assert PolicyEvent.from_json(json.loads(wire)) == event
    return event


_FIELD = st.sampled_from(["type", "policy", "actor", "published_at", "event_id", "cause", "halt"])


@st.composite
def _events(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed events with some fields replaced by hostile values."""
    policy = draw(valid_policies())
    policy.setdefault("version", draw(st.integers(1, 100)))
    event: dict[str, Any] = {
        "type": draw(st.sampled_from(EVENT_TYPES)),
        "policy": policy,
        "actor": "compliance:3f9a1c",
        "published_at": "2026-11-20T10:00:00Z",
        "event_id": "e1",
    }
    if event["type"] == "policy.halted":
        event["halt"] = {"failed": 2, "targeted": 60, "ratio": 0.033333, "on_breach": "halt"}
    for _ in range(draw(st.integers(0, 3))):
        field = draw(_FIELD)
        choice = draw(st.sampled_from(["replace", "delete", "policy.id", "policy.version"]))
        if choice == "replace":
            event[field] = draw(json_values() | HOSTILE_TEXT | HUGE_INTS)
        elif choice == "delete":
            event.pop(field, None)
        elif isinstance(event.get("policy"), dict):
            key = choice.split(".")[1]
            event["policy"][key] = draw(json_values() | HUGE_INTS | text)
    return event


@FUZZ
@given(json_values(max_leaves=20))
def test_arbitrary_json_decodes_or_raises_value_error(raw: Any) -> None:
    _decode(raw)


@FUZZ
@example({"type": "policy.published", "policy": {"id": "\ud800", "version": 1}})
@example({"type": "policy.retired", "policy": {"id": "p", "version": 2}, "actor": "\udc80"})
@given(_events())
def test_mutated_events_decode_or_raise_value_error(raw: dict[str, Any]) -> None:
    _decode(raw)


_NESTED = st.integers(1, 6000).map(lambda n: b"[" * n + b"]" * n) | st.integers(1, 6000).map(
    lambda n: b'{"type":"policy.published","policy":' + b'{"a":' * n + b"1" + b"}" * (n + 1)
)


@FUZZ
@example(b"[" * 5000 + b"]" * 5000)  # json raised RecursionError here (issue #19)
@example(b'{"type": "policy.published", "policy": {"version": ' + b"9" * 5000 + b"}}")
@given(st.binary(max_size=200) | json_values().map(lambda v: json.dumps(v).encode()) | _NESTED)
def test_raw_bytes_through_the_wire_decoder(data: bytes) -> None:
    """What a consumer does with a message body (``decode_event``): an event, or
    ``UndecodableEvent`` with a reason and a type from EVENT_TYPES or "unknown"; never another
    exception (one would stop the consumer, or ``serve`` on its start-up replay)."""
    try:
        event = decode_event(data)
    except UndecodableEvent as exc:
        assert str(exc)
        assert exc.type in (*EVENT_TYPES, "unknown")
        return
    assert _decode(json.loads(data)) == event
