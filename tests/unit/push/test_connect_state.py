"""PushState around a connect the upstream answers itself (Voice Agent ``session.ready``): not
acknowledged until it answers, and a new connect after a refused one (``restart``)."""

from __future__ import annotations

from controlplane.push.protocol import PushState
from policies.provenance import PolicyRef

OLD = (PolicyRef("p", 1),)
NEW = (PolicyRef("p", 2),)


def test_a_connect_the_upstream_answers_is_acknowledged_only_by_its_answer() -> None:
    state = PushState.start(acknowledging=True, config={"keyterms": ("a",)}, refs=OLD,
                            version=1, answers_connect=True)  # fmt: skip
    assert (state.sent_version, state.acked_version) == (1, 0)
    state.connect_answered(1, "acked")
    assert state.acked_version == 1 and state.state == "synced"
    # a connect nobody answers for (Streaming v3, the control channel) is as before
    plain = PushState.start(acknowledging=False, config={}, refs=(), version=1)
    assert plain.acked_version == 1


def test_an_unanswered_or_refused_connect_is_said_in_the_state() -> None:
    state = PushState.start(acknowledging=True, config={}, refs=OLD, version=1,
                            answers_connect=True)  # fmt: skip
    state.connect_answered(1, "unverified")
    assert state.acked_version == 0 and state.state == "unverified"
    state.connect_answered(1, "rejected")
    assert state.state == "rejected"


def test_a_new_connect_after_a_refused_one_starts_on_its_config_with_the_next_version() -> None:
    state = PushState.start(acknowledging=True, config={"keyterms": ("a",)}, refs=OLD,
                            version=1, answers_connect=True)  # fmt: skip
    state.connect_answered(1, "rejected")
    assert state.want({"keyterms": ("b",)}, NEW, "policy") == 2  # never sent: not ready
    version = state.restart({"keyterms": ("c",)}, NEW)
    assert version == 3
    assert state.base == state.desired == {"keyterms": ("c",)}
    assert (state.desired_version, state.sent_version, state.acked_version) == (3, 3, 0)
    assert state.desired_refs == NEW and state.desired_cause == "connect"
    assert state.state == "synced" and state.in_flight is None
    state.ready = True
    assert state.take(0.0) is None  # nothing left to send: version 2 was never sent
    state.connect_answered(3, "acked")
    assert state.acked_version == 3
