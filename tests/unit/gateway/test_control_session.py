"""ControlSession, step by step without sockets: each frame an app sends on ``/v1/control``
after registering, and the actions it asks for (frames to the app, reports to the port)."""

from __future__ import annotations

import json
from typing import Any

from controlplane.edges.admission import UpdateRates
from controlplane.edges.control_session import ControlSession
from controlplane.push.acks import ClientRefusal, ClientUpdate, PushApplied, PushRejected
from controlplane.push.actions import (
    Acknowledge,
    Action,
    ClientChange,
    Count,
    ToClient,
    TurnBoundary,
)
from controlplane.push.live import LiveSession
from controlplane.push.protocol import Push, PushState
from policies.provenance import PolicyRef
from sessions.clock import FakeClock
from sessions.dialects import dialect_for
from sessions.model import Session

LOCK = PolicyRef("p", 2)


class _Transport:
    acknowledging = True

    def congested(self) -> bool:
        return False

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        raise AssertionError("the machine writes nothing itself")


def machine(kind: str = "streaming-v3", *, burst: int = 10) -> ControlSession:
    session = Session(id="s1", kind=kind, model="m", labels={}, client_config={})
    push = PushState.start(acknowledging=True, config={}, refs=(), version=1)
    push.ready = True
    ls = LiveSession(session=session, push=push, transport=_Transport(), dialect=dialect_for(kind))
    ls.locks = {"prompt": LOCK}
    return ControlSession(ls, UpdateRates(FakeClock(), burst=burst, rate_per_s=1.0))


def _error(actions: list[Action]) -> str:
    [frame] = actions
    assert isinstance(frame, ToClient) and frame.quiet  # the socket stays open
    body = json.loads(frame.text)
    assert body["type"] == "error"
    return str(body["code"])


def _in_flight(m: ControlSession) -> Push:
    m.ls.push.want({"keyterms": ("k",)}, (LOCK,), "policy")
    push = m.ls.push.take(0.0)
    assert push is not None
    return push


def test_a_heartbeat_is_answered_with_the_time() -> None:
    [frame] = machine().text('{"type": "heartbeat"}', 1234.5)
    assert frame == ToClient(json.dumps({"type": "heartbeat", "at": 1234.5}))


def test_frames_that_break_the_protocol_get_an_error_and_change_nothing() -> None:
    m = machine()
    assert _error(m.text("{nope", 0)) == "bad_json"
    assert _error(m.text('{"a": 1, "a": 2}', 0)) == "bad_json"
    assert _error(m.text("[1]", 0)) == "bad_message"
    assert _error(m.text('{"type": "dance"}', 0)) == "unknown_type"
    assert _error(m.text('{"type": "heartbeat", "session_id": "other"}', 0)) == "not_your_session"
    assert _error(m.not_text()) == "invalid_frame"


def test_applied_is_acked_on_the_voice_agent_and_unverified_on_streaming() -> None:
    agent = machine("voice-agent-v1")
    push = _in_flight(agent)
    report = json.dumps({"type": "applied", "version": push.version})
    assert agent.text(report, 0) == [Acknowledge(PushApplied("acked"))]
    streaming = machine("streaming-v3")
    _in_flight(streaming)
    assert streaming.text(report, 0) == [Acknowledge(PushApplied("unverified"))]


def test_a_report_must_name_the_push_in_flight() -> None:
    m = machine()
    assert _error(m.text('{"type": "applied", "version": 2}', 0)) == "unknown_version"
    push = _in_flight(m)
    assert _error(m.text('{"type": "applied", "version": true}', 0)) == "bad_version"
    stale = json.dumps({"type": "failed", "version": push.version - 1})
    assert _error(m.text(stale, 0)) == "unknown_version"


def test_failed_names_the_refused_fields_known_ones_only() -> None:
    m = machine()
    push = _in_flight(m)
    report = {"type": "failed", "version": push.version, "error": "no", "fields": ["keyterms"]}
    expected = Acknowledge(PushRejected("app_failed", "no", frozenset({"keyterms"})))
    assert m.text(json.dumps(report), 0) == [expected]
    report["fields"] = ["colour"]
    assert _error(m.text(json.dumps(report), 0)) == "bad_fields"


def test_turn_boundary() -> None:
    assert machine().text('{"type": "turn_boundary"}', 0) == [TurnBoundary()]


def test_an_update_is_one_report_with_its_refusal_then_the_result() -> None:
    raw = {"prompt": "x", "keyterms": ["a"], "vad_threshold": 7}
    actions = machine().text(json.dumps({"type": "update", "config": raw}), 0)
    wire = {"type": "update", "config": raw}
    [change, result] = actions
    assert isinstance(change, ClientChange)
    refusal = change.update.refusal
    assert refusal is not None and refusal.delta == {"prompt": "x"}  # the locked part only
    assert change.update == ClientUpdate(
        "sent", {"keyterms": ("a",)}, wire, refusal=ClientRefusal(
            {"prompt": "x"}, wire, refusal.error, counted=None)
    )  # fmt: skip
    assert "prompt: locked by policy p v2" in refusal.error and "vad_threshold" in refusal.error
    assert isinstance(result, ToClient) and not result.quiet
    body = json.loads(result.text)
    assert body["accepted"] == ["keyterms"] and set(body["rejected"]) == {"prompt", "vad_threshold"}


def test_an_update_over_the_rate_is_dropped_and_not_logged() -> None:
    m = machine(burst=1)
    update = json.dumps({"type": "update", "config": {"keyterms": ["a"]}})
    m.text(update, 0)
    actions = m.text(update, 0)
    assert actions[0] == Count("rate_limited")
    assert _error(actions[1:]) == "rate_limited"
    assert _error(m.text('{"type": "update", "config": []}', 0)) == "bad_config"
