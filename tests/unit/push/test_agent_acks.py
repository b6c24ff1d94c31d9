"""AgentAcks, step by step without sockets: one Voice Agent ``session.update`` outstanding,
each answer attributed to the update it ends, and what that means for our push (a PushAck)
and for the client's own update (a ClientUpdate), as the actions the pump executes."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from controlplane.push.acks import (
    ClientUpdate,
    PushApplied,
    PushPartlyApplied,
    PushRejected,
)
from controlplane.push.actions import (
    Acknowledge,
    Action,
    ClientChange,
    LateAnswer,
    Queued,
    ToClient,
    ToUpstream,
    Written,
)
from controlplane.push.agent_acks import AgentAcks, UpdateQueueFull, param_fields
from controlplane.push.protocol import Push, PushState
from policies.provenance import PolicyRef
from sessions.dialects.voice_agent_v1 import VOICE_AGENT_V1
from sessions.dialects.voice_agent_v1_config import TABLE_SETTINGS, default_config

START = default_config(TABLE_SETTINGS)
TIMEOUT = 5.0
REF = (PolicyRef("p", 1),)


def _acks(*, applies_rest: bool = False) -> tuple[AgentAcks, PushState]:
    acks = AgentAcks(ack_timeout=TIMEOUT, applies_rest=applies_rest)
    first = {"type": "session.update", "session": {}}
    assert acks.first(first, 0.0) == [ToUpstream(json.dumps(first))]
    assert acks.next_deadline() == TIMEOUT  # the first message waits for session.ready
    state = PushState.start(acknowledging=True, config={}, refs=(), version=1)
    state.ready = True
    acks.push_state = state
    assert acks.ready({"type": "session.ready", "config": START}, 0.1) == []
    assert acks.next_deadline() is None
    return acks, state


def _push(state: PushState, **config: Any) -> tuple[Push, dict[str, Any]]:
    state.want(config, REF, "policy")
    push = state.take(1.0)
    assert push is not None
    wire = VOICE_AGENT_V1.encode(push.delta).message
    assert wire is not None
    return push, wire


def _updated(acks: AgentAcks, **changes: Any) -> tuple[dict[str, Any], str]:
    config = copy.deepcopy(acks.model.config or {})
    config.update(changes)
    parsed = {"type": "session.updated", "config": config}
    return parsed, json.dumps(parsed)


def _error(code: str, param: str | None = None) -> tuple[dict[str, Any], str]:
    parsed: dict[str, Any] = {"type": "session.error", "code": code, "message": "no"}
    if param is not None:
        parsed["param"] = param
    return parsed, json.dumps(parsed)


def _client_changes(actions: list[Action]) -> list[ClientUpdate]:
    return [a.update for a in actions if isinstance(a, ClientChange)]


def test_our_push_goes_at_once_and_its_echo_acknowledges_it_unseen_by_the_client() -> None:
    acks, state = _acks()
    push, wire = _push(state, system_prompt="A")
    assert acks.push(push, wire, 1.0) == [Written(push), ToUpstream(json.dumps(wire))]
    assert acks.next_deadline() == 1.0 + TIMEOUT
    parsed, text = _updated(acks, system_prompt="A")
    assert acks.answer(parsed, text, 1.5) == [Acknowledge(PushApplied())]  # not forwarded
    assert acks.next_deadline() is None


def test_a_push_waits_behind_the_clients_update_and_goes_when_that_is_answered() -> None:
    acks, state = _acks()
    client = {"type": "session.update", "session": {"system_prompt": "mine"}}
    assert acks.client_update(client, 1.0) == [ToUpstream(json.dumps(client))]
    push, wire = _push(state, keyterms=("x",))
    assert acks.push(push, wire, 1.2) == [Queued(push)]  # no acknowledgement timer yet
    parsed, text = _updated(acks, system_prompt="mine")
    actions = acks.answer(parsed, text, 2.0)
    assert actions[0] == ToClient(text, quiet=True)  # the client's own answer
    [update] = _client_changes(actions)
    assert (update.status, update.delta, update.wire) == ("acked", {"system_prompt": "mine"},
                                                          client)  # fmt: skip
    assert actions[-2:] == [Written(push), ToUpstream(json.dumps(wire))]
    assert acks.next_deadline() == 2.0 + TIMEOUT


def test_an_error_naming_a_path_of_our_push_rejects_it_with_those_fields() -> None:
    acks, state = _acks()
    push, wire = _push(state, system_prompt="A", keyterms=("x",))
    acks.push(push, wire, 1.0)
    parsed, text = _error("invalid_value", "input.keyterms")
    assert acks.answer(parsed, text, 1.1) == [
        Acknowledge(PushRejected("invalid_value", "no", frozenset({"keyterms"})))
    ]


def test_a_tool_result_error_is_the_clients_and_our_push_is_then_acked() -> None:
    acks, state = _acks()
    push, wire = _push(state, system_prompt="A")
    acks.push(push, wire, 1.0)
    acks.client_other('{"type": "tool.result", "call_id": "nope"}')
    parsed, text = _error("invalid_value", "call_id")
    assert acks.answer(parsed, text, 1.1) == [ToClient(text, quiet=True)]
    parsed, text = _updated(acks, system_prompt="A")
    assert acks.answer(parsed, text, 1.2) == [Acknowledge(PushApplied())]


def test_an_error_without_param_is_never_pinned_on_our_push_while_another_message_waits() -> None:
    acks, state = _acks()
    push, wire = _push(state, system_prompt="A")
    acks.push(push, wire, 1.0)
    acks.client_other('{"type": "conversation.message", "role": "x"}')
    parsed, text = _error("invalid_value")
    assert acks.answer(parsed, text, 1.1) == [ToClient(text, quiet=True)]  # no verdict
    # no echo comes: our push's slot frees at the deadline (the engine times the push out)
    assert acks.on_timer(1.0 + TIMEOUT - 0.01) == []
    assert acks.on_timer(1.0 + TIMEOUT) == []
    assert acks.model.outstanding is None


def test_a_two_field_immutable_error_stays_with_the_clients_update() -> None:
    acks, state = _acks()
    client = {"type": "session.update", "session": {"greeting": "Hi", "output": {"voice": "james"}}}
    acks.client_update(client, 1.0)
    push, wire = _push(state, system_prompt="A")
    assert acks.push(push, wire, 1.0) == [Queued(push)]
    parsed, text = _error("immutable_field", "greeting")
    assert acks.answer(parsed, text, 1.1) == [ToClient(text, quiet=True)]  # one more to come
    parsed, text = _error("immutable_field", "output.voice")
    actions = acks.answer(parsed, text, 1.2)
    [update] = _client_changes(actions)
    assert update.status == "rejected" and update.wire == client
    assert not any(isinstance(a, Acknowledge) for a in actions)  # not ours
    assert actions[-2:] == [Written(push), ToUpstream(json.dumps(wire))]


def test_a_partly_refused_push_whose_rest_applied_names_the_refused_fields() -> None:
    acks, state = _acks(applies_rest=True)
    push, wire = _push(state, system_prompt="A", keyterms=("x",))
    acks.push(push, wire, 1.0)
    parsed, text = _error("invalid_value", "system_prompt")
    assert acks.answer(parsed, text, 1.1) == []  # its session.updated (the rest) comes
    input_ = {**START["input"], "keyterms": ["x"]}
    parsed, text = _updated(acks, input=input_)
    assert acks.answer(parsed, text, 1.2) == [
        Acknowledge(PushPartlyApplied("invalid_value", "no", frozenset({"system_prompt"})))
    ]


def test_an_answer_after_the_engine_ended_our_push_is_a_late_answer() -> None:
    """(Was: "changes nothing" — the record then said ``unverified`` for ever while the
    upstream ran the push.) The answer is handed over as a ``LateAnswer``, never as an
    ``Acknowledge`` of whatever push is in flight now."""
    acks, state = _acks()
    push, wire = _push(state, system_prompt="A")
    acks.push(push, wire, 1.0)
    assert state.timed_out(1.0 + 30, 10.0) is not None  # the engine's own timeout
    parsed, text = _updated(acks, system_prompt="A")
    assert acks.answer(parsed, text, 40.0) == [LateAnswer(push, PushApplied())]


def test_an_answer_after_both_timers_ended_our_push_is_a_late_answer() -> None:
    acks, state = _acks()
    push, wire = _push(state, system_prompt="A")
    acks.push(push, wire, 1.0)
    assert acks.on_timer(1.0 + TIMEOUT) == []  # the link's own timer: the slot is free
    assert state.timed_out(1.0 + TIMEOUT, TIMEOUT) is not None  # the engine's
    later, later_wire = _push(state, keyterms=("k",))
    assert acks.push(later, later_wire, 7.0) == [Written(later), ToUpstream(json.dumps(
        later_wire))]  # fmt: skip
    parsed, text = _updated(acks, system_prompt="A")  # the first one's answer, late
    assert acks.answer(parsed, text, 7.5) == [LateAnswer(push, PushApplied())]
    input_ = {**START["input"], "keyterms": ["k"]}
    parsed, text = _updated(acks, system_prompt="A", input=input_)
    assert acks.answer(parsed, text, 7.6) == [Acknowledge(PushApplied())]


def test_a_late_answer_applies_the_push_to_the_state_without_touching_a_later_push() -> None:
    _, state = _acks()
    push = _push(state, system_prompt="A")[0]
    state.timed_out(100.0, TIMEOUT)
    assert state.state == "unverified"
    state.late_answer(push, dict(push.delta))
    assert state.base == {"system_prompt": "A"} and state.acked_version == push.version
    assert state.state == "synced"
    later = _push(state, system_prompt="B")[0]
    state.timed_out(200.0, TIMEOUT)
    newer = _push(state, system_prompt="C")[0]  # in flight
    state.late_answer(later, dict(later.delta))
    assert state.base == {"system_prompt": "B"} and state.in_flight is newer
    assert state.acked_version == later.version and state.state == "pending"


def test_a_clients_update_without_answer_ends_unverified_at_its_deadline() -> None:
    acks, _ = _acks()
    client = {"type": "session.update", "session": {"system_prompt": "mine"}}
    acks.client_update(client, 1.0)
    assert acks.on_timer(1.0 + TIMEOUT / 2) == []
    [update] = _client_changes(acks.on_timer(1.0 + TIMEOUT))
    assert update.status == "unverified" and update.error == f"no answer within {TIMEOUT:g}s"
    assert update.delta == {"system_prompt": "mine"}  # what it asked; not adopted
    assert not update.adopted
    assert acks.next_deadline() is None


def test_a_clients_update_outstanding_at_the_end_is_unverified() -> None:
    acks, _ = _acks()
    acks.client_update({"type": "session.update", "session": {"system_prompt": "m"}}, 1.0)
    [update] = _client_changes(acks.close())
    assert update.status == "unverified"
    assert update.error == "the session ended before the upstream answered"


def test_a_push_whose_outcome_was_recorded_while_it_waited_is_withdrawn() -> None:
    acks, state = _acks()
    client = {"type": "session.update", "session": {"system_prompt": "mine"}}
    acks.client_update(client, 1.0)
    push, wire = _push(state, keyterms=("x",))
    assert acks.push(push, wire, 1.0) == [Queued(push)]
    state.wire_failed(push, "the session ended")
    parsed, text = _updated(acks, system_prompt="mine")
    actions = acks.answer(parsed, text, 2.0)
    assert not any(isinstance(a, Written | ToUpstream) for a in actions)
    assert acks.model.outstanding is None and not acks.model.queue


def test_a_full_queue_refuses_our_push_and_answers_the_client_with_an_error() -> None:
    acks, state = _acks()
    acks.client_update({"type": "session.update", "session": {"system_prompt": "0"}}, 1.0)
    for n in range(64):
        acks.client_update({"type": "session.update", "session": {"system_prompt": str(n)}}, 1.0)
    [refused] = acks.client_update({"type": "session.update", "session": {}}, 1.0)
    assert isinstance(refused, ToClient) and "too many" in refused.text
    push, wire = _push(state, keyterms=("x",))
    with pytest.raises(UpdateQueueFull):
        acks.push(push, wire, 1.0)


def test_param_fields_names_the_canonical_fields_under_a_path() -> None:
    assert param_fields("input.turn_detection") == {
        "min_turn_silence_ms", "max_turn_silence_ms", "vad_threshold"
    }  # fmt: skip
    assert param_fields("input.turn_detection.min_silence") == {"min_turn_silence_ms"}
    assert param_fields("greeting") is None
    assert param_fields(None) is None
