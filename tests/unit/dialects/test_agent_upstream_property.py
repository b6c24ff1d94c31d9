"""AgentUpstream against a simulated upstream that knows the truth: whatever the interleaving
of our pushes, the client's updates and other client messages, an answer the model attributes
(``acked`` / ``rejected``) was caused by that very update, answers to our pushes never reach
the client (but for one documented ambiguity: a ``param``-less error while another client
message is unanswered), and answers to the client's messages always do.

The simulated upstream answers in order, like the emulator's default (``reject_message``):
validation problem -> one ``session.error``; immutable paths -> one error each; a fault ->
an error without ``param``; else ``session.updated`` with the merged config. A bad
``tool.result`` draws ``invalid_value`` / ``call_id``; a bad ``conversation.message`` draws
``invalid_value`` without ``param``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sessions.dialects.voice_agent_v1_config import (
    TABLE_SETTINGS,
    default_config,
    immutable_changes,
    merge,
    resolve_formats,
    validate,
)
from sessions.dialects.voice_agent_v1_upstream import AgentUpstream, Update, canonical_view

BODIES: list[dict[str, Any]] = [
    {"system_prompt": "A"},
    {"system_prompt": "B", "input": {"turn_detection": {"min_silence": 700}}},
    {"output": {"volume": 20}},
    {"greeting": "Hi"},
    {"greeting": "Yo", "output": {"voice": "james"}},
    {"input": {"turn_detection": {"vad_threshold": 7}}},  # invalid_value, param
    {"input": {"keyterms": ["a", "b"]}},
]
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["ours", "client", "tool", "message", "deliver", "deliver"]),
        st.integers(0, len(BODIES) - 1),
        st.booleans(),  # fault: refuse this update without a param
    ),
    max_size=40,
)


class Upstream:
    def __init__(self) -> None:
        self.config = default_config(TABLE_SETTINGS)
        self.answers: deque[tuple[dict[str, Any], Any]] = deque()  # (answer, its cause)

    def error(self, cause: Any, code: str, param: str | None = None) -> None:
        answer = {"type": "session.error", "code": code, "message": code}
        if param is not None:
            answer["param"] = param
        self.answers.append((answer, cause))

    def receive(self, cause: Any, message: dict[str, Any], fault: bool) -> None:
        kind = message["type"]
        if kind == "tool.result":
            self.error(cause, "invalid_value", "call_id")
            return
        if kind == "conversation.message":
            self.error(cause, "invalid_value")
            return
        body = message["session"]
        if fault:
            self.error(cause, "invalid_config")
            return
        problem = validate(body, TABLE_SETTINGS)
        if problem is not None:
            self.error(cause, problem.code, problem.param)
            return
        refused = immutable_changes(self.config, body)
        for path in refused:
            self.error(cause, "immutable_field", path)
        if refused:
            return
        self.config = resolve_formats(merge(self.config, body))
        self.answers.append(({"type": "session.updated", "config": self.config}, cause))


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_attributed_answers_belong_to_their_update(steps: list[tuple[str, int, bool]]) -> None:
    upstream = Upstream()
    model = AgentUpstream()
    model.first({"type": "session.update", "session": {}})
    model.on_ready(upstream.config)
    faults: dict[int, bool] = {}

    def pump() -> None:
        while (update := model.next_to_send()) is not None:
            upstream.receive(update, update.message, faults.get(id(update), False))
            return

    for action, index, fault in steps:
        if action == "ours" or action == "client":
            update = Update(action, {"type": "session.update", "session": BODIES[index]})
            faults[id(update)] = fault
            model.submit(update)
            pump()
        elif action == "tool":
            model.client_other()
            upstream.receive("client-other", {"type": "tool.result"}, False)
        elif action == "message":
            model.client_other()
            upstream.receive("client-other", {"type": "conversation.message"}, False)
        elif upstream.answers:
            answer, cause = upstream.answers.popleft()
            if answer["type"] == "session.updated":
                verdict = model.on_updated(answer["config"])
            else:
                verdict = model.on_error(answer["code"], answer.get("param"), answer["message"])
            ours = isinstance(cause, Update) and cause.owner == "ours"
            if ours and verdict.forward:
                # the one documented ambiguity: an error without param while another client
                # message was unanswered goes to the client, the push stays unconfirmed
                assert "param" not in answer and verdict.status is None, (answer, verdict)
                assert isinstance(cause, Update) and verdict.update is cause and cause.doubts
            else:
                assert verdict.forward is not ours, (answer, cause, verdict)
            if verdict.status in ("acked", "rejected"):
                assert verdict.update is cause, (answer, cause, verdict)
            pump()


STEPS_WITH_TIMEOUTS = st.lists(
    st.tuples(
        # no "message" (a client message drawing a param-less error): with one of those
        # unanswered, which update a later answer belongs to is ambiguous after a timeout
        # (docs/architecture.md, known limits)
        st.sampled_from(["ours", "client", "tool", "deliver", "deliver", "timeout"]),
        st.integers(0, len(BODIES) - 1),
        st.booleans(),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(STEPS_WITH_TIMEOUTS)
# perf's falsifying example (11:17): a late refusal of an owed update left the updates sent
# after it expecting it applied, so the next owed push's echo was pinned on an earlier one
@example([("ours", 0, False), ("ours", 1, True), ("timeout", 0, False), ("timeout", 0, False),
          ("ours", 0, False), ("ours", 0, True), ("timeout", 0, False), ("deliver", 0, False),
          ("deliver", 0, False), ("deliver", 0, False), ("deliver", 0, False)])  # fmt: skip
# the stale-owed cases fixed in f3a473b (a param-less error while a client message was
# unanswered; more timeouts than owed used to keep)
@example([("tool", 0, False), ("ours", 0, True), ("ours", 0, False), ("deliver", 0, False),
          ("timeout", 0, False), ("deliver", 0, False), ("deliver", 0, False)])  # fmt: skip
def test_answers_after_a_timeout_still_belong_to_their_update(
    steps: list[tuple[str, int, bool]],
) -> None:
    """The same, with acknowledgement timeouts: the outstanding update may end unanswered at
    any step (``expire``) and its answer comes later, in order. An answer the model pins on
    an update (``acked`` / ``rejected``, in time or late) was caused by that very update, or
    (``acked``) by another that expected the same canonical config (no echo tells them apart;
    the record's config is true either way);
    docs/architecture.md, "Owed answers first": an update whose answer may have gone to the
    client is owed no more."""
    upstream = Upstream()
    model = AgentUpstream()
    model.first({"type": "session.update", "session": {}})
    model.on_ready(upstream.config)
    faults: dict[int, bool] = {}

    def pump() -> None:
        while (update := model.next_to_send()) is not None:
            upstream.receive(update, update.message, faults.get(id(update), False))
            return

    for action, index, fault in steps:
        if action in ("ours", "client"):
            update = Update(action, {"type": "session.update", "session": BODIES[index]})
            faults[id(update)] = fault
            model.submit(update)
            pump()
        elif action == "tool":
            model.client_other()
            upstream.receive("client-other", {"type": "tool.result"}, False)
        elif action == "message":
            model.client_other()
            upstream.receive("client-other", {"type": "conversation.message"}, False)
        elif action == "timeout":
            if model.outstanding is not None:
                model.expire(model.outstanding)
            pump()
        elif upstream.answers:
            answer, cause = upstream.answers.popleft()
            if answer["type"] == "session.updated":
                verdict = model.on_updated(answer["config"])
            else:
                verdict = model.on_error(answer["code"], answer.get("param"), answer["message"])
            if verdict.status in ("acked", "rejected") and verdict.update is not cause:
                # an echo cannot tell apart two updates that expect the very same config: the
                # one pinned runs what it asked for all the same (no config is claimed that
                # does not run); anything else is a false attribution
                assert verdict.status == "acked" and isinstance(cause, Update), (answer, verdict)
                pinned = verdict.update
                assert pinned is not None and pinned.expected is not None, (answer, verdict)
                assert canonical_view(pinned.expected) == canonical_view(answer["config"])
            pump()
