"""The Voice Agent connect's own answer, step by step without sockets: the first
``session.update`` (carrying the session's effective config) is acknowledged by
``session.ready`` — applied when the echo carries what it sent, unverified otherwise — refused
by a ``session.error``, or left unverified (no answer in time, or the session ended first);
each exactly once, as a ``ConnectAnswer`` naming the policy versions the connect carried. A
``session.resume`` is never answered for the record."""

from __future__ import annotations

import copy
import json
from typing import Any

from controlplane.push.acks import PushApplied, PushRejected, PushUnverified
from controlplane.push.actions import ConnectAnswer, Reconnect, ToClient, ToUpstream
from controlplane.push.agent_acks import AgentAcks
from controlplane.push.protocol import PushState
from policies.provenance import PolicyRef
from sessions.dialects.voice_agent_v1_config import TABLE_SETTINGS, default_config, merge

TIMEOUT = 5.0
REFS = (PolicyRef("joiners", 1, variant="warm"),)
SENT = {"system_prompt": "Be kind.", "input": {"keyterms": ["welcome"]}}
FIRST = {"type": "session.update", "session": SENT}


def _acks(first: dict[str, Any] = FIRST, refs: tuple[PolicyRef, ...] | None = REFS) -> AgentAcks:
    acks = AgentAcks(ack_timeout=TIMEOUT)
    acks.first(copy.deepcopy(first), 0.0, refs)
    acks.push_state = PushState.start(acknowledging=True, config={}, refs=(), version=1)
    return acks


def _answers(actions: list[Any]) -> list[ConnectAnswer]:
    return [a for a in actions if isinstance(a, ConnectAnswer)]


def _ready(config: dict[str, Any]) -> dict[str, Any]:
    return {"type": "session.ready", "session_id": "u1", "config": config}


def test_session_ready_echoing_the_connect_acknowledges_it_once() -> None:
    acks = _acks()
    echo = merge(default_config(TABLE_SETTINGS), SENT)
    assert _answers(acks.ready(_ready(echo), 0.1)) == [ConnectAnswer(PushApplied(), REFS)]
    # a second session.ready (never expected) answers nothing more, nor does the clock
    assert _answers(acks.ready(_ready(echo), 0.2)) == []
    assert _answers(acks.on_timer(TIMEOUT + 1)) == []
    assert _answers(acks.close()) == []


def test_session_ready_that_does_not_echo_the_connect_leaves_it_unverified() -> None:
    acks = _acks()
    echo = merge(default_config(TABLE_SETTINGS), {**SENT, "input": {"keyterms": ["other"]}})
    [answer] = _answers(acks.ready(_ready(echo), 0.1))
    assert isinstance(answer.ack, PushUnverified) and answer.refs == REFS
    assert "keyterms is" in answer.ack.reason and "welcome" in answer.ack.reason


def test_a_session_error_to_the_first_message_refuses_the_connect() -> None:
    acks = _acks()
    parsed = {"type": "session.error", "code": "invalid_value", "message": "bad focus",
              "param": "input.voice_focus"}  # fmt: skip
    actions = acks.answer(parsed, json.dumps(parsed), 0.1)
    [answer] = _answers(actions)
    assert answer.refs == REFS and answer.version == 1
    assert answer.ack == PushRejected("invalid_value", "bad focus", None)
    # logged, then the client gets the upstream's error; the session stays open, as the
    # upstream's does
    assert actions == [answer, ToClient(json.dumps(parsed), quiet=True)]
    assert acks.refused and acks.next_deadline() is None
    assert _answers(acks.close()) == []


def test_after_a_refused_connect_the_next_update_is_a_new_connect_answered_the_same_way() -> None:
    acks = _acks()
    parsed = {"type": "session.error", "code": "invalid_value", "message": "bad focus",
              "param": "input.voice_focus"}  # fmt: skip
    acks.answer(parsed, json.dumps(parsed), 0.1)
    retry = {"type": "session.update", "session": {"system_prompt": "Be kind."}}
    assert acks.client_update(retry, 0.2) == [Reconnect(retry)]  # no upstream session yet
    merged = {"type": "session.update", "session": SENT}
    assert acks.first(merged, 0.3, REFS, 2) == [ToUpstream(json.dumps(merged))]
    assert not acks.refused and acks.next_deadline() == 0.3 + TIMEOUT
    echo = merge(default_config(TABLE_SETTINGS), SENT)
    assert _answers(acks.ready(_ready(echo), 0.4)) == [ConnectAnswer(PushApplied(), REFS, 2)]


def test_an_update_sent_before_the_refusal_came_is_the_upstreams_next_first_message() -> None:
    acks = _acks()
    early = {"type": "session.update", "session": {"system_prompt": "Hi."}}
    assert acks.client_update(early, 0.05) == []  # waits: one update outstanding
    parsed = {"type": "session.error", "code": "invalid_value", "message": "bad focus",
              "param": "input.voice_focus"}  # fmt: skip
    actions = acks.answer(parsed, json.dumps(parsed), 0.1)
    assert actions[-1] == Reconnect(early) and not acks.model.queue


def test_a_refused_resume_is_relayed_and_not_answered_for_the_record() -> None:
    acks = _acks({"type": "session.resume", "session_id": "gone"}, refs=None)
    parsed = {"type": "session.error", "code": "session_not_found", "message": "gone"}
    actions = acks.answer(parsed, json.dumps(parsed), 0.1)
    assert actions == [ToClient(json.dumps(parsed), quiet=True)]
    assert acks.refused


def test_no_answer_in_time_or_the_session_ending_first_leaves_the_connect_unverified() -> None:
    acks = _acks()
    assert acks.next_deadline() == TIMEOUT
    assert _answers(acks.on_timer(TIMEOUT - 1)) == []
    [answer] = _answers(acks.on_timer(TIMEOUT))
    assert answer.ack == PushUnverified(f"no session.ready within {TIMEOUT:g}s")
    # (was: a late session.ready answered nothing, the record stayed unverified for ever)
    late = merge(default_config(TABLE_SETTINGS), SENT)
    assert _answers(acks.ready(_ready(late), TIMEOUT + 1)) == [
        ConnectAnswer(PushApplied(), REFS, late=True)]  # fmt: skip
    assert _answers(acks.ready(_ready(late), TIMEOUT + 2)) == []  # once

    ended = _acks()
    [answer] = _answers(ended.close())
    assert answer.ack == PushUnverified("the session ended before the upstream answered")


def test_a_resumed_session_is_not_answered_for_the_record() -> None:
    resume = {"type": "session.resume", "session_id": "u1"}
    acks = _acks(resume, refs=None)
    assert _answers(acks.ready(_ready(default_config(TABLE_SETTINGS)), 0.1)) == []
    assert _answers(_acks(resume, refs=None).close()) == []


def test_a_late_session_error_to_the_first_message_refuses_the_connect_late() -> None:
    acks = _acks()
    [answer] = _answers(acks.on_timer(TIMEOUT))
    assert isinstance(answer.ack, PushUnverified)
    retry = {"type": "session.update", "session": {"system_prompt": "again"}}
    acks.client_update(copy.deepcopy(retry), TIMEOUT + 0.5)  # waits: no session yet
    parsed = {"type": "session.error", "code": "invalid_value", "message": "no",
              "param": "system_prompt"}  # fmt: skip
    actions = acks.answer(parsed, json.dumps(parsed), TIMEOUT + 1)
    [late] = _answers(actions)
    assert late.late and late.refs == REFS
    assert late.ack == PushRejected("invalid_value", "no", frozenset({"system_prompt"}))
    assert acks.refused  # the upstream waits for another first message: the queued retry
    assert actions[-2:] == [ToClient(json.dumps(parsed), quiet=True), Reconnect(retry)]
    assert _answers(acks.ready(_ready(default_config(TABLE_SETTINGS)), TIMEOUT + 2)) == []
