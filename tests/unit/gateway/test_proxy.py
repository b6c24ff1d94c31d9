"""ProxySession, step by step without sockets: each client frame, upstream frame, push and
deadline of one gateway session, and the actions the pump is asked to execute, in order."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controlplane.edges.admission import RATE_LIMIT_CLOSE, UpdateRates
from controlplane.edges.proxy import RESUME_AFTER_REFUSAL, ProxySession, agent_error
from controlplane.push.acks import ClientRefusal, ClientUpdate, PushApplied
from controlplane.push.actions import (
    Acknowledge,
    Action,
    ClientChange,
    CloseClient,
    ConnectAnswer,
    Count,
    Kick,
    Ready,
    Reconnect,
    ToClient,
    ToUpstream,
    TurnBoundary,
    Written,
)
from controlplane.push.agent_acks import AgentAcks
from controlplane.push.live import LiveSession
from controlplane.push.protocol import Push, PushState
from policies.provenance import PolicyRef
from sessions.clock import FakeClock
from sessions.dialects import dialect_for
from sessions.dialects.streaming_v3_upstream import StreamingUpstream
from sessions.dialects.voice_agent_v1_config import TABLE_SETTINGS, default_config
from sessions.model import Session

U3 = {"speech_model": "universal-3-5-pro", "sample_rate": "16000"}
LOCK = PolicyRef("p", 3)
START = default_config(TABLE_SETTINGS)


class _Transport:
    acknowledging = True

    def congested(self) -> bool:
        return False

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        raise AssertionError("the machine writes nothing itself")


def _session(kind: str, *, locks: tuple[str, ...] = ()) -> LiveSession:
    session = Session(id="s1", kind=kind, model="m", labels={}, client_config={})
    acknowledging = kind == "voice-agent-v1"
    push = PushState.start(acknowledging=acknowledging, config={}, refs=(), version=1)
    push.ready = True
    ls = LiveSession(session=session, push=push, transport=_Transport(), dialect=dialect_for(kind))
    ls.locks = {f: LOCK for f in locks}
    return ls


def _rates(burst: int = 10) -> UpdateRates:
    return UpdateRates(FakeClock(), burst=burst, rate_per_s=1.0)


def streaming(*, locks: tuple[str, ...] = (), burst: int = 10) -> ProxySession:
    ls = _session("streaming-v3", locks=locks)
    return ProxySession(ls, rates=_rates(burst), streaming=StreamingUpstream(U3))


def agent(*, locks: tuple[str, ...] = (), burst: int = 10) -> ProxySession:
    ls = _session("voice-agent-v1", locks=locks)
    acks = AgentAcks(ack_timeout=5.0)
    acks.first({"type": "session.update", "session": {}}, 0.0)
    acks.push_state = ls.push
    machine = ProxySession(ls, rates=_rates(burst), acks=acks)
    ready = json.dumps({"type": "session.ready", "session_id": "up1", "config": START})
    assert machine.upstream_text(ready, 0.1) == [Ready("up1"), ToClient(ready), Kick()]
    return machine


def _changes(actions: list[Action]) -> list[ClientUpdate]:
    return [a.update for a in actions if isinstance(a, ClientChange)]


# -- client frames -------------------------------------------------------------------------
def test_text_that_is_not_json_goes_upstream_untouched() -> None:
    assert streaming().client_text("KeepAlive?", 0) == [ToUpstream("KeepAlive?")]


def test_a_streaming_frame_with_a_duplicate_key_is_refused_the_upstreams_way() -> None:
    actions = streaming().client_text('{"type": "ForceEndpoint", "type": "x"}', 0)
    assert actions[0] == Count("invalid_frame")
    assert isinstance(actions[1], ToClient) and json.loads(actions[1].text)["error_code"] == 3006
    assert isinstance(actions[2], CloseClient) and actions[2].code == 3006
    assert not any(isinstance(a, ToUpstream) for a in actions)


def test_an_agent_frame_with_nan_gets_invalid_format_and_the_session_stays_open() -> None:
    actions = agent().client_text('{"type": "session.update", "session": {"x": NaN}}', 0)
    assert actions[0] == Count("invalid_frame")
    [frame] = actions[1:]
    assert isinstance(frame, ToClient) and json.loads(frame.text)["code"] == "invalid_format"


def test_a_streaming_update_is_adopted_and_logged_before_it_goes() -> None:
    frame = json.dumps({"type": "UpdateConfiguration", "keyterms_prompt": ["acme"]})
    actions = streaming().client_text(frame, 0)
    assert actions == [
        ClientChange(ClientUpdate("sent", {"keyterms": ("acme",)}, json.loads(frame))),
        ToUpstream(frame),
    ]


def test_a_streaming_update_of_a_locked_field_is_stripped_with_a_warning() -> None:
    machine = streaming(locks=("vad_threshold",))
    frame = {"type": "UpdateConfiguration", "vad_threshold": 0.9, "keyterms_prompt": ["a"]}
    actions = machine.client_text(json.dumps(frame), 0)
    [update] = _changes(actions)
    assert update.refusal is not None and update.refusal.delta == {"vad_threshold": 0.9}
    assert "policy p v3" in update.refusal.error
    assert update.delta == {"keyterms": ("a",)}
    forwarded = {"type": "UpdateConfiguration", "keyterms_prompt": ["a"]}
    assert actions[1] == ToUpstream(json.dumps(forwarded))
    assert isinstance(actions[2], ToClient) and json.loads(actions[2].text)["type"] == "Warning"


def test_a_streaming_update_over_the_rate_closes_4429_and_is_not_logged() -> None:
    machine = streaming(burst=1)
    frame = json.dumps({"type": "UpdateConfiguration", "keyterms_prompt": ["a"]})
    machine.client_text(frame, 0)
    actions = machine.client_text(frame, 0)
    assert actions[0] == Count("rate_limited")
    assert actions[-1] == CloseClient(RATE_LIMIT_CLOSE, machine.rates.problem())
    assert not _changes(actions) and not any(isinstance(a, ToUpstream) for a in actions)


def test_an_agent_update_of_a_locked_field_is_refused_and_the_rest_goes() -> None:
    machine = agent(locks=("system_prompt",))
    update = {"type": "session.update", "session": {"system_prompt": "x", "greeting": "hi"}}
    actions = machine.client_text(json.dumps(update), 1.0)
    refusal = ClientRefusal({"system_prompt": "x"}, update,
                            "system_prompt locked by policy p v3")  # fmt: skip
    assert actions[0] == ClientChange(ClientUpdate("sent", {}, None, refusal=refusal))
    assert isinstance(actions[1], ToClient)
    error = json.loads(actions[1].text)
    assert (error["code"], error["param"]) == ("immutable_field", "system_prompt")
    rest = {"type": "session.update", "session": {"greeting": "hi"}}
    assert actions[2:] == [ToUpstream(json.dumps(rest))]  # outstanding: logged on its answer


def test_an_agent_update_of_locked_fields_only_sends_nothing() -> None:
    machine = agent(locks=("system_prompt",))
    update = {"type": "session.update", "session": {"system_prompt": "x"}}
    actions = machine.client_text(json.dumps(update), 1.0)
    assert not any(isinstance(a, ToUpstream) for a in actions)
    assert machine.acks is not None and machine.acks.model.outstanding is None


def test_a_malformed_agent_update_goes_upstream_without_its_locked_fields() -> None:
    machine = agent(locks=("system_prompt",))
    update = {"type": "session.update", "session": {"system_prompt": "x", "input": {
        "turn_detection": {"min_silence": "not a number"}}}}  # fmt: skip
    actions = machine.client_text(json.dumps(update), 1.0)
    [refused] = _changes(actions)
    assert refused.refusal is not None and "malformed update" in refused.refusal.error
    [sent] = [a for a in actions if isinstance(a, ToUpstream)]
    assert "system_prompt" not in json.loads(sent.text)["session"]


# -- upstream frames, pushes ---------------------------------------------------------------
def test_a_streaming_turn_is_forwarded_and_reported_as_a_boundary() -> None:
    turn = json.dumps({"type": "Turn", "end_of_turn": True, "transcript": "hi", "words": []})
    assert streaming().upstream_text(turn, 0) == [ToClient(turn), TurnBoundary()]


def test_a_streaming_push_goes_upstream_and_updates_the_upstreams_model() -> None:
    machine = streaming()
    wire = {"type": "UpdateConfiguration", "keyterms_prompt": ["b"]}
    push = Push(2, {"keyterms": ("b",)}, {}, (), "policy", (), None, {})
    assert machine.push(push, wire, json.dumps(wire), 0) == [ToUpstream(json.dumps(wire))]
    assert machine.streaming is not None and machine.streaming.view()["keyterms"] == ("b",)


def test_after_the_clients_terminate_a_push_is_refused_and_client_frames_go_unrecorded() -> None:
    machine = streaming()
    assert machine.client_text('{"type": "Terminate"}', 0) == [ToUpstream('{"type": "Terminate"}')]
    wire = {"type": "UpdateConfiguration", "keyterms_prompt": ["b"]}
    push = Push(2, {"keyterms": ("b",)}, {}, (), "policy", (), None, {})
    with pytest.raises(ConnectionError, match="Terminate"):
        machine.push(push, wire, json.dumps(wire), 0)
    assert machine.streaming is not None and machine.streaming.view().get("keyterms") is None
    late = json.dumps({"type": "UpdateConfiguration", "keyterms_prompt": ["c"]})
    assert machine.client_text(late, 0) == [ToUpstream(late)]  # the upstream runs none of it


def test_the_echo_of_our_agent_push_is_consumed_and_acknowledged() -> None:
    machine = agent()
    ls = machine.ls
    ls.push.want({"system_prompt": "A"}, (LOCK,), "policy")
    push = ls.push.take(1.0)
    assert push is not None
    wire = {"type": "session.update", "session": {"system_prompt": "A"}}
    assert machine.push(push, wire, "", 1.0) == [Written(push), ToUpstream(json.dumps(wire))]
    assert machine.next_deadline() == 6.0
    echo = json.dumps({"type": "session.updated", "config": {**START, "system_prompt": "A"}})
    assert machine.upstream_text(echo, 1.2) == [Acknowledge(PushApplied())]
    assert machine.next_deadline() is None


def test_an_agent_client_update_unanswered_ends_unverified_at_its_deadline() -> None:
    machine = agent()
    machine.client_text(json.dumps({"type": "session.update", "session": {"greeting": "x"}}), 1)
    assert machine.on_timer(5.9) == []
    [update] = _changes(machine.on_timer(6.0))
    assert update.status == "unverified"


def test_a_streaming_begin_reports_the_upstreams_id_and_sends_what_is_pending() -> None:
    begin = json.dumps({"type": "Begin", "id": "up7", "expires_at": 1})
    assert streaming().upstream_text(begin, 0) == [Ready("up7"), ToClient(begin), Kick()]


def test_upstream_text_that_is_not_json_reaches_the_client_untouched() -> None:
    assert agent().upstream_text("not json", 0) == [ToClient("not json")]


def test_the_connects_answer_is_reported_before_the_client_sees_session_ready() -> None:
    ls = _session("voice-agent-v1")
    acks = AgentAcks(ack_timeout=5.0)
    refs = (PolicyRef("joiners", 1, variant="warm"),)
    acks.first({"type": "session.update", "session": {}}, 0.0, refs)
    acks.push_state = ls.push
    machine = ProxySession(ls, rates=_rates(), acks=acks)
    ready = json.dumps({"type": "session.ready", "session_id": "up1", "config": START})
    assert machine.upstream_text(ready, 0.1) == [
        Ready("up1"), ConnectAnswer(PushApplied(), refs), ToClient(ready), Kick()]  # fmt: skip


def test_after_a_refused_connect_a_client_update_is_a_new_connect_without_lock_refusals() -> None:
    ls = _session("voice-agent-v1", locks=("system_prompt",))
    acks = AgentAcks(ack_timeout=5.0)
    refs = (PolicyRef("joiners", 1),)
    acks.first({"type": "session.update", "session": {}}, 0.0, refs)
    acks.push_state = ls.push
    machine = ProxySession(ls, rates=_rates(), acks=acks)
    error = json.dumps({"type": "session.error", "code": "invalid_value", "message": "no",
                        "param": "input.voice_focus"})  # fmt: skip
    actions = machine.upstream_text(error, 0.1)
    assert isinstance(actions[0], ConnectAnswer) and actions[1] == ToClient(error, quiet=True)
    resume = {"type": "session.resume", "session_id": "up0"}
    refused = machine.client_text(json.dumps(resume), 0.15)  # nothing goes upstream
    assert refused == [Count("invalid_frame"), ToClient(agent_error("invalid_format",
                       RESUME_AFTER_REFUSAL), quiet=True)]  # fmt: skip
    retry = {"type": "session.update", "session": {"system_prompt": "mine"}}
    # merged like a first message (the policy's value written in): no immutable_field refusal
    assert machine.client_text(json.dumps(retry), 0.2) == [Reconnect(retry)]
    bad = machine.reconnected("system_prompt: must be a string", 0.3)
    assert len(bad) == 1 and isinstance(bad[0], ToClient)
    assert json.loads(bad[0].text)["code"] == "invalid_config"
    first = {"type": "session.update", "session": {"system_prompt": "locked"}}
    assert machine.reconnected((first, refs, 2), 0.4) == [ToUpstream(json.dumps(first))]
    echo = {**START, "system_prompt": "locked"}
    ready = json.dumps({"type": "session.ready", "session_id": "up1", "config": echo})
    assert ConnectAnswer(PushApplied(), refs, 2) in machine.upstream_text(ready, 0.5)
