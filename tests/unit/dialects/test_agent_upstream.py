"""AgentUpstream: one update outstanding, answers attributed by echo and param, never guessed."""

from __future__ import annotations

import copy
from typing import Any

from sessions.dialects.voice_agent_v1_config import TABLE_SETTINGS, default_config
from sessions.dialects.voice_agent_v1_upstream import OWED_MAX, AgentUpstream, Update

START = default_config(TABLE_SETTINGS)


def _ready() -> AgentUpstream:
    up = AgentUpstream()
    up.first({"type": "session.update", "session": {}})
    verdict = up.on_ready(START)
    assert verdict.forward and verdict.status == "acked"
    return up


def _update(owner: str, session: dict[str, Any]) -> Update:
    return Update(owner, {"type": "session.update", "session": session})  # type: ignore[arg-type]


def _echo(up: AgentUpstream, **changes: Any) -> dict[str, Any]:
    config = copy.deepcopy(up.config or {})
    config.update(changes)
    return config


def test_one_update_outstanding_the_other_queued() -> None:
    up = _ready()
    ours = _update("ours", {"system_prompt": "A"})
    client = _update("client", {"output": {"volume": 10}})
    up.submit(ours)
    up.submit(client)
    assert up.next_to_send() is ours
    assert up.next_to_send() is None  # the client's waits
    verdict = up.on_updated(_echo(up, system_prompt="A"))
    assert (verdict.update, verdict.status, verdict.forward) == (ours, "acked", False)
    assert up.next_to_send() is client


def test_an_error_for_another_path_is_not_the_outstanding_updates() -> None:
    up = _ready()
    ours = _update("ours", {"system_prompt": "A"})
    up.submit(ours)
    up.next_to_send()
    verdict = up.on_error("invalid_value", "call_id", "unknown call_id")
    assert verdict.forward and verdict.update is None
    assert up.outstanding is ours
    assert up.on_error("invalid_value", "system_prompt", "bad").status == "rejected"


def test_a_no_param_error_is_attributed_only_when_nothing_else_could_have_drawn_it() -> None:
    up = _ready()
    ours = _update("ours", {"system_prompt": "A"})
    up.submit(ours)
    up.next_to_send()
    verdict = up.on_error("invalid_config", None, "rejected (fault)")
    assert (verdict.update, verdict.status, verdict.forward) == (ours, "rejected", False)

    up.client_other()  # e.g. a conversation.message
    again = _update("ours", {"system_prompt": "B"})
    up.submit(again)
    up.next_to_send()
    doubt = up.on_error("invalid_value", None, "role must be user|system")
    assert doubt.forward and doubt.status is None and up.outstanding is again
    assert again.doubts
    assert up.on_updated(_echo(up, system_prompt="B")).status == "acked"


def test_predicted_immutable_errors_keep_the_update_until_the_last_one() -> None:
    up = _ready()
    client = _update("client", {"greeting": "Hi", "output": {"voice": "james"}})
    up.submit(client)
    up.next_to_send()
    ours = _update("ours", {"system_prompt": "A"})
    up.submit(ours)
    first = up.on_error("immutable_field", "greeting", "cannot change")
    assert first.forward and first.status is None and up.next_to_send() is None
    second = up.on_error("immutable_field", "output.voice", "cannot change")
    assert second.status == "rejected" and second.params == ("greeting", "output.voice")
    assert up.next_to_send() is ours


def test_an_echo_that_matches_nothing_is_unverified_never_acked() -> None:
    up = _ready()
    ours = _update("ours", {"system_prompt": "A"})
    up.submit(ours)
    up.next_to_send()
    verdict = up.on_updated(_echo(up, system_prompt="something else"))
    assert verdict.update is ours and verdict.status == "unverified"
    assert verdict.reason is not None and "system_prompt" in verdict.reason
    assert up.config is not None and up.config["system_prompt"] == "something else"


def test_a_late_echo_after_a_timeout_goes_to_its_owner() -> None:
    up = _ready()
    client = _update("client", {"output": {"volume": 10}})
    up.submit(client)
    up.next_to_send()
    assert up.expire(client)
    ours = _update("ours", {"system_prompt": "A"})
    up.submit(ours)
    up.next_to_send()
    echo = copy.deepcopy(up.config or {})
    echo["output"] = {**echo["output"], "volume": 10}
    late = up.on_updated(echo)
    assert late.update is client and late.late and late.forward
    assert up.outstanding is ours


def test_an_echo_without_config_verifies_nothing_and_keeps_the_known_config() -> None:
    up = _ready()
    ours = _update("ours", {"system_prompt": "A"})
    up.submit(ours)
    up.next_to_send()
    verdict = up.on_updated({})
    assert verdict.update is ours and verdict.status == "unverified"
    assert up.config == START


def test_an_upstream_that_applies_the_rest_ends_a_partly_refused_update_with_its_echo() -> None:
    up = AgentUpstream(applies_rest=True)
    up.first({"type": "session.update", "session": {}})
    up.on_ready(START)
    ours = _update("ours", {"system_prompt": "A", "output": {"volume": 10}})
    up.submit(ours)
    up.next_to_send()
    verdict = up.on_error("invalid_value", "system_prompt", "bad")
    assert verdict.update is ours and verdict.status is None  # its session.updated comes
    assert up.outstanding is ours
    output = {**START["output"], "volume": 10}
    verdict = up.on_updated(_echo(up, output=output))
    assert (verdict.update, verdict.status, verdict.params) == (ours, "partial", ("system_prompt",))
    assert up.outstanding is None
    # an update refused whole (every path it touches) is rejected, also when echoed
    whole = _update("ours", {"system_prompt": "B"})
    up.submit(whole)
    up.next_to_send()
    up.on_error("invalid_value", "system_prompt", "bad")
    assert up.on_updated(_echo(up)).status == "rejected"


def test_an_answer_owed_to_a_timed_out_update_comes_before_the_outstanding_ones() -> None:
    """In order: after ``ours`` timed out, the first answer touching its path is its own,
    even when the update now outstanding touches the same path (it was sent later)."""
    up = _ready()
    ours = _update("ours", {"system_prompt": "A"})
    later = _update("ours", {"system_prompt": "A", "input": {"keyterms": ["k"]}})
    up.submit(ours)
    up.next_to_send()
    assert up.expire(ours) and list(up.owed) == [ours]
    up.submit(later)
    assert up.next_to_send() is later
    verdict = up.on_error("invalid_value", "system_prompt", "bad")
    assert (verdict.update, verdict.status, verdict.late) == (ours, "rejected", True)
    assert up.outstanding is later and not up.owed
    verdict = up.on_error("invalid_value", "system_prompt", "bad")  # its own answer
    assert (verdict.update, verdict.status, verdict.late) == (later, "rejected", False)


def test_a_no_param_error_while_an_answer_is_owed_is_never_pinned_on_the_outstanding() -> None:
    up = _ready()
    up.client_other()  # a tool.result, unanswered: it may draw a param-less error
    ours = _update("ours", {"system_prompt": "A"})
    later = _update("ours", {"system_prompt": "B"})
    up.submit(ours)
    up.next_to_send()
    up.expire(ours)
    up.submit(later)
    up.next_to_send()
    verdict = up.on_error("invalid_config", None, "rejected (fault)")
    assert verdict.status is None and verdict.forward and up.outstanding is later
    # the tool.result's answer or the owed update's (in order: never the outstanding one's):
    # that update is owed no more, its doubt said; the outstanding one is not in doubt
    assert ours.doubts and not later.doubts and not up.owed
    verdict = up.on_updated(_echo(up, system_prompt="B"))  # the outstanding's
    assert (verdict.update, verdict.status) == (later, "acked") and not up.owed


def test_an_owed_update_whose_answer_may_have_gone_to_the_client_is_owed_no_more() -> None:
    """A push refused by a param-less error that came while a client message was unanswered
    (the error went to the client): the next push asking for the same config applied, and
    its echo is its own, never the refused push's "late" acknowledgement (the property test
    with timeouts found it: the refused push was recorded acked)."""
    up = _ready()
    up.client_other()  # a tool.result: it may draw a param-less error, or nothing
    ours = _update("ours", {"system_prompt": "A"})
    again = _update("ours", {"system_prompt": "A"})  # (the engine re-sends the same fields)
    up.submit(ours)
    up.next_to_send()
    up.expire(ours)
    up.submit(again)
    up.next_to_send()
    assert up.owed[0] is ours
    verdict = up.on_error("invalid_config", None, "rejected (fault)")  # ours's, or the tool's
    assert verdict.forward and verdict.status is None and not up.owed and ours.doubts
    verdict = up.on_updated(_echo(up, system_prompt="A"))
    assert (verdict.update, verdict.status, verdict.late) == (again, "acked", False)


def test_more_timeouts_than_owed_keeps_pin_nothing_by_order() -> None:
    """Past OWED_MAX timed-out updates the order of their answers is lost: a param-less error
    is pinned on no update (it would have been on the oldest kept, not the oldest sent)."""
    up = _ready()
    updates = [_update("ours", {"system_prompt": f"v{i}"}) for i in range(OWED_MAX + 1)]
    for update in updates:
        up.submit(update)
        up.next_to_send()
        up.expire(update)
    assert up.order_lost and not up.owed
    last = _update("ours", {"system_prompt": "last"})
    up.submit(last)
    up.next_to_send()
    verdict = up.on_error("invalid_config", None, "rejected (fault)")
    assert verdict.status is None and up.outstanding is last and last.doubts
    verdict = up.on_updated(_echo(up, system_prompt="last"))  # answered in time: order back
    assert (verdict.update, verdict.status) == (last, "acked") and not up.order_lost


def test_a_no_param_error_is_the_owed_answer_when_nothing_else_could_have_drawn_it() -> None:
    up = _ready()
    ours = _update("ours", {"system_prompt": "A"})
    later = _update("ours", {"system_prompt": "B"})
    up.submit(ours)
    up.next_to_send()
    up.expire(ours)
    up.submit(later)
    up.next_to_send()
    verdict = up.on_error("invalid_config", None, "rejected (fault)")
    assert (verdict.update, verdict.status, verdict.late) == (ours, "rejected", True)
    assert up.outstanding is later and not later.doubts and not up.owed


def test_an_update_that_may_have_had_its_answer_is_not_owed_one_after_its_timeout() -> None:
    """Differential seed 18: the param-less error that may have been its answer went to the
    client; after its timeout nothing is owed, so the next update's own answer stays its."""
    up = _ready()
    up.client_other()
    ours = _update("ours", {"system_prompt": "A"})
    up.submit(ours)
    up.next_to_send()
    assert up.on_error("invalid_config", None, "rejected (fault)").status is None
    assert up.expire(ours) and not up.owed
    later = _update("ours", {"system_prompt": "B"})
    up.submit(later)
    up.next_to_send()
    assert up.on_updated(_echo(up, system_prompt="B")).update is later


def test_updates_sent_before_a_late_answer_go_on_from_its_echo() -> None:
    """Both timed out before the first was answered: the second's expectation was the
    config without the first; once the first's echo shows it applied, the second's answer
    (the first's change kept) is recognised as its own."""
    up = _ready()
    first = _update("ours", {"system_prompt": "A", "input": {"keyterms": ["k"]}})
    second = _update("ours", {"system_prompt": "B"})
    up.submit(first)
    up.next_to_send()
    up.expire(first)
    up.submit(second)
    up.next_to_send()
    up.expire(second)
    assert list(up.owed) == [first, second]
    input_ = {**START["input"], "keyterms": ["k"]}
    assert up.on_updated(_echo(up, system_prompt="A", input=input_)).update is first
    verdict = up.on_updated(_echo(up, system_prompt="B", input=input_))
    assert (verdict.update, verdict.status, verdict.late) == (second, "acked", True)
    assert not up.owed
