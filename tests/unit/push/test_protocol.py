"""The sans-I/O push state, step by step: coalescing, one in flight, quarantine, holds."""

from __future__ import annotations

from controlplane.push.protocol import PushState
from policies.fields import Config
from policies.provenance import PolicyRef

REF = (PolicyRef("p", 1),)


def agent(config: Config | None = None) -> PushState:
    state = PushState.start(acknowledging=True, config=dict(config or {}), refs=(), version=1)
    state.ready = True
    return state


def streaming() -> PushState:
    state = PushState.start(acknowledging=False, config={}, refs=(), version=1)
    state.ready = True
    return state


def test_unchanged_config_is_not_a_new_version() -> None:
    s = agent({"prompt": "a"})
    assert s.want({"prompt": "a"}, REF, "policy") is None
    assert s.take(0.0) is None


def test_push_carries_the_diff_from_what_the_upstream_runs() -> None:
    s = agent({"prompt": "a", "keyterms": ("x",)})
    assert s.want({"prompt": "b"}, REF, "policy") == 2
    push = s.take(0.0)
    assert push is not None
    assert push.delta == {"prompt": "b", "keyterms": None}
    assert s.state == "pending"


def test_one_in_flight_and_latest_wins_after_the_ack() -> None:
    s = agent()
    s.want({"prompt": "v1"}, REF, "policy")
    first = s.take(0.0)
    assert first is not None and first.version == 2
    for n in range(2, 11):
        s.want({"prompt": f"v{n}"}, REF, "policy")
        assert s.take(0.1) is None  # one unacknowledged push at a time
    outcome = s.acked(0.5)
    assert outcome is not None and outcome.status == "acked" and outcome.latency == 0.5
    second = s.take(0.6)
    assert second is not None
    assert second.delta == {"prompt": "v10"}
    assert second.superseded == tuple(range(3, 11))  # versions 3..10 minus the sent one
    assert second.version == 11
    assert s.take(0.7) is None


def test_rejected_version_is_quarantined_and_never_repushed() -> None:
    s = agent({"prompt": "old"})
    s.want({"prompt": "bad"}, REF, "policy")
    push = s.take(0.0)
    assert push is not None
    outcome = s.rejected("invalid_config", "no", 0.2)
    assert outcome is not None and outcome.status == "rejected"
    assert push.version in s.quarantined
    assert s.state == "rejected"
    assert s.take(1.0) is None and s.take(100.0) is None
    assert s.base == {"prompt": "old"}  # the upstream kept its config
    # a newer version is pushed, diffed against the last acknowledged config
    s.want({"prompt": "good"}, REF, "policy")
    again = s.take(2.0)
    assert again is not None and again.delta == {"prompt": "good"}


def test_timeout_ends_unverified_and_keeps_the_base() -> None:
    s = agent()
    s.want({"prompt": "x"}, REF, "policy")
    assert s.take(0.0) is not None
    assert s.timed_out(4.9, 5.0) is None
    outcome = s.timed_out(5.0, 5.0)
    assert outcome is not None and outcome.status == "unverified"
    assert s.base == {} and s.state == "unverified"
    assert s.acked(6.0) is None  # a late acknowledgement changes nothing


def test_a_queued_push_is_timed_from_its_write_and_not_sent_if_it_never_goes() -> None:
    s = agent()
    s.want({"prompt": "x"}, REF, "policy")
    push = s.take(0.0)
    assert push is not None
    s.queued(push)  # the transport holds it behind another session.update
    assert s.next_deadline(5.0) is None and s.timed_out(60.0, 5.0) is None
    s.written(push, 60.0)
    assert s.next_deadline(5.0) == 65.0 and s.timed_out(64.9, 5.0) is None
    outcome = s.acked(61.0)
    assert outcome is not None and outcome.status == "acked" and outcome.latency == 1.0
    s.want({"prompt": "y"}, REF, "policy")
    second = s.take(62.0)
    assert second is not None
    s.queued(second)
    ended = s.abandoned("gone")
    assert ended is not None and ended.status == "rejected"
    assert ended.error is not None and ended.error.startswith("not sent")
    assert s.base == {"prompt": "x"}


def test_a_push_in_flight_when_the_session_ends_is_unverified_once() -> None:
    s = agent()
    assert s.abandoned("gone") is None  # nothing in flight: nothing to end
    s.want({"prompt": "x"}, REF, "policy")
    push = s.take(0.0)
    outcome = s.abandoned("gone")
    assert outcome is not None and outcome.push is push
    assert (outcome.status, outcome.error) == ("unverified", "gone")
    assert s.in_flight is None and s.base == {} and s.state == "unverified"
    assert s.abandoned("gone") is None and s.acked(1.0) is None


def test_streaming_has_no_acknowledgement_and_never_claims_acked() -> None:
    s = streaming()
    s.want({"prompt": "x"}, REF, "policy")
    push = s.take(0.0)
    assert push is not None
    assert s.in_flight is None and s.base == {"prompt": "x"}
    assert s.acked_version == 1 and s.sent_version == 2
    assert s.state == "unverified"
    s.want({"prompt": "y"}, REF, "policy")
    assert s.take(0.1) is not None  # no waiting on a dialect without acknowledgements


def test_next_turn_holds_until_the_boundary_or_the_deadline() -> None:
    s = agent()
    s.want({"prompt": "x"}, REF, "policy", hold_until=10.0)
    assert s.take(1.0) is None
    s.turn_boundary()
    assert s.take(1.1) is not None
    s.acked(1.2)
    s.want({"prompt": "y"}, REF, "policy", hold_until=10.0)
    assert s.take(9.9) is None
    assert s.next_deadline(5.0) == 10.0
    assert s.take(10.0) is not None  # deadline reached


def test_an_immediate_change_releases_a_held_one() -> None:
    s = agent()
    s.want({"prompt": "x"}, REF, "policy", hold_until=10.0)
    s.want({"prompt": "x", "keyterms": ("k",)}, REF, "policy")
    push = s.take(0.0)
    assert push is not None and push.delta == {"prompt": "x", "keyterms": ("k",)}


def test_nothing_is_sent_before_the_upstream_is_ready() -> None:
    s = PushState.start(acknowledging=True, config={}, refs=(), version=1)
    s.want({"prompt": "x"}, REF, "connect")
    assert s.take(0.0) is None
    s.ready = True
    assert s.take(0.0) is not None


def test_client_change_moves_the_base_without_a_push() -> None:
    s = agent({"prompt": "p"})
    s.client_changed({"keyterms": ("a",)}, {"prompt": "p", "keyterms": ("a",)})
    assert s.base == {"prompt": "p", "keyterms": ("a",)}
    assert s.take(0.0) is None


def test_sessions_sharing_their_configs_share_the_delta_and_others_get_their_own() -> None:
    """Configs are values: takes diffing the very same pair reuse one delta; a different
    base (same desired object) gets its own, correct delta."""
    shared_base: Config = {"prompt": "a"}
    shared_desired: Config = {"prompt": "b", "keyterms": ("x",)}
    other_base: Config = {"prompt": "b"}
    pushes = []
    for base in (shared_base, shared_base, other_base, shared_base):
        s = PushState.start(acknowledging=True, config={}, refs=(), version=1)
        s.base, s.desired, s.ready = base, {}, True
        s.want(shared_desired, REF, "policy")
        push = s.take(0.0)
        assert push is not None
        pushes.append(push)
    assert pushes[0].delta == {"prompt": "b", "keyterms": ("x",)}
    assert pushes[1].delta is pushes[0].delta
    assert pushes[2].delta == {"keyterms": ("x",)}
    assert pushes[3].delta == pushes[0].delta


OWNERS = {"prompt": PolicyRef("p", 1), "keyterms": PolicyRef("k", 1)}


def test_a_refused_value_is_never_sent_again_whatever_wants_it() -> None:
    s = agent({"prompt": "old"})
    s.desired_owners = OWNERS
    s.want({"prompt": "bad"}, REF, "policy")
    assert s.take(0.0) is not None
    outcome = s.rejected("invalid_value", "no", 0.1)
    assert outcome is not None and outcome.fields == ("prompt",)
    assert ("prompt", "bad") in s.quarantine
    # another policy's change: delivered without the refused pair, which is held back
    s.want({"prompt": "bad", "keyterms": ("x",)}, REF, "policy")
    push = s.take(1.0)
    assert push is not None
    assert push.delta == {"keyterms": ("x",)} and push.held == ("prompt",)
    assert push.config == {"prompt": "old", "keyterms": ("x",)}  # what the upstream runs after
    assert s.acked(1.1) is not None
    assert s.base == {"prompt": "old", "keyterms": ("x",)} and s.state == "rejected"
    # a different value of the same field is not quarantined
    s.want({"prompt": "fine", "keyterms": ("x",)}, REF, "policy")
    again = s.take(2.0)
    assert again is not None and again.delta == {"prompt": "fine"} and again.held == ()
    s.acked(2.1)
    assert s.state == "synced"


def test_a_refusal_naming_a_field_queues_the_rest_again() -> None:
    s = agent({})
    s.want({"prompt": "bad", "keyterms": ("x",)}, REF, "policy")
    first = s.take(0.0)
    assert first is not None
    outcome = s.rejected("invalid_value", "no", 0.1, frozenset({"prompt", "vad_threshold"}))
    assert outcome is not None and outcome.fields == ("prompt",)
    assert s.quarantine == {("prompt", "bad")}
    retry = s.take(0.2)
    assert retry is not None and retry.version == first.version + 1
    assert retry.delta == {"keyterms": ("x",)} and retry.held == ("prompt",)
    # refused again without a field named: the rest is quarantined too, nothing queued
    s.rejected("invalid_config", "no", 0.3)
    assert s.quarantine == {("prompt", "bad"), ("keyterms", ("x",))}
    assert s.take(0.4) is None and s.state == "rejected"


def test_nothing_left_to_send_after_the_quarantine_is_an_empty_push() -> None:
    s = agent({})
    s.want({"prompt": "bad"}, REF, "policy")
    s.take(0.0)
    s.rejected("invalid_config", "no", 0.1)
    s.want({"prompt": "bad", "keyterms": ("x",)}, REF, "policy")
    s.want({"prompt": "bad"}, REF, "policy")  # reverted before it was sent
    push = s.take(1.0)
    assert push is not None and push.delta == {} and push.held == ("prompt",)
    assert push.superseded == (push.version - 1,)
    assert s.in_flight is None and s.state == "rejected"


def test_a_push_that_never_went_is_owed_as_a_new_version() -> None:
    """``wire_failed`` (send timed out, or refused before sending): nothing reached the
    upstream, so ``resend`` queues what it still misses as a new version; the failed
    version is never re-pushed. Nothing is owed once a newer push carried it."""
    s = agent({"prompt": "a"})
    s.want({"prompt": "b"}, REF, "policy")
    push = s.take(0.0)
    assert push is not None and push.version == 2
    outcome = s.wire_failed(push, "send timed out")
    assert outcome.status == "rejected" and s.base == {"prompt": "a"}
    assert s.take(0.0) is None  # nothing pending by itself
    assert s.resend() is True
    again = s.take(0.0)
    assert again is not None and again.version == 3 and again.delta == {"prompt": "b"}
    assert s.resend() is False  # in flight already
    s.acked(1.0)
    assert s.resend() is False and s.state == "synced"  # nothing missing


def test_a_streaming_push_that_never_went_leaves_the_base_as_it_was() -> None:
    """Without acknowledgements a push counts as running when it is taken; if its frame
    never went (``wire_failed``), the base goes back, and what it carried is owed."""
    s = streaming()
    s.want({"prompt": "b"}, REF, "policy")
    push = s.take(0.0)
    assert push is not None and s.base == {"prompt": "b"}
    s.wire_failed(push, "not sent: the version log could not be written")
    assert s.base == {}
    assert s.resend() is True
    again = s.take(0.0)
    assert again is not None and again.delta == {"prompt": "b"}
