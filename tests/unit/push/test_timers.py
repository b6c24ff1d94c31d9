"""``Timers``: the sweeper's view of acknowledgement timeouts and next-turn holds. A sweep
yields exactly the sessions whose deadline has passed (not every watched one), once each,
and follows a session whose deadline moved or that stopped needing a timer."""

from __future__ import annotations

from typing import Any

from controlplane.push.live import LiveSession
from controlplane.push.protocol import Push, PushState
from controlplane.push.timers import Timers
from policies.provenance import PolicyRef
from sessions.dialects import dialect_for
from sessions.model import Session

REF = (PolicyRef("p", 1),)
TIMEOUT = 5.0


class _Transport:
    acknowledging = True

    def congested(self) -> bool:
        return False

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        raise AssertionError("not written in these tests")


def _live(i: int) -> LiveSession:
    session = Session(id=f"s{i}", kind="voice-agent-v1", model="voice-agent")
    push = PushState.start(acknowledging=True, config={}, refs=(), version=1)
    push.ready = True
    return LiveSession(session=session, push=push, transport=_Transport(),
                       dialect=dialect_for("voice-agent-v1"))  # fmt: skip


def _sent(ls: LiveSession, at: float, prompt: str = "x") -> None:
    """A push taken at ``at`` and awaiting its acknowledgement."""
    ls.push.want({"prompt": prompt}, REF, "policy")
    assert ls.push.take(at) is not None


def test_only_sessions_past_their_ack_deadline_are_yielded() -> None:
    timers = Timers(TIMEOUT)
    sessions = [_live(i) for i in range(5)]
    for i, ls in enumerate(sessions):
        _sent(ls, at=float(i))  # deadlines 5, 6, 7, 8, 9
        timers.track(ls)
    assert len(timers) == 5
    assert list(timers.due(4.9)) == []
    due = list(timers.due(7.0))
    assert [ls for ls, _ in due] == sessions[:3]
    assert all(o is not None and o.status == "unverified" for _, o in due)
    assert len(timers) == 2  # the rest are still watched
    assert [ls for ls, _ in timers.due(100.0)] == sessions[3:]
    assert len(timers) == 0 and list(timers.due(200.0)) == []


def test_an_acknowledged_or_forgotten_session_is_not_yielded() -> None:
    timers = Timers(TIMEOUT)
    acked, ended, waiting = _live(1), _live(2), _live(3)
    for ls in (acked, ended, waiting):
        _sent(ls, at=0.0)
        timers.track(ls)
    assert acked.push.acked(1.0) is not None
    timers.track(acked)  # the engine syncs the session: no timer needed any more
    timers.forget(ended)  # detached
    assert [ls for ls, _ in timers.due(10.0)] == [waiting]


def test_a_moved_deadline_is_followed_and_the_old_one_ignored() -> None:
    timers = Timers(TIMEOUT)
    ls = _live(1)
    _sent(ls, at=0.0)  # deadline 5
    timers.track(ls)
    assert ls.push.acked(1.0) is not None
    _sent(ls, at=3.0, prompt="y")  # the next push: deadline 8
    timers.track(ls)
    assert list(timers.due(6.0)) == []  # the stale filing under 5 is dropped
    assert [s for s, _ in timers.due(8.0)] == [ls]


def test_a_hold_deadline_comes_due_as_sendable_then_stops_being_watched() -> None:
    timers = Timers(TIMEOUT)
    ls = _live(1)
    ls.push.want({"prompt": "held"}, REF, "policy", hold_until=2.0)
    timers.track(ls)
    assert list(timers.due(1.0)) == []
    assert list(timers.due(2.5)) == [(ls, None)]  # may be sent now
    assert ls.push.take(2.5) is not None
    timers.track(ls)  # now awaiting its acknowledgement: deadline 7.5
    assert len(timers) == 1 and list(timers.due(7.0)) == []
    assert [s for s, _ in timers.due(7.5)] == [ls]


def test_each_due_session_is_yielded_once_per_sweep_even_when_filed_again() -> None:
    timers = Timers(TIMEOUT)
    sessions = [_live(i) for i in range(3)]
    for ls in sessions:
        _sent(ls, at=0.0)
        timers.track(ls)
    seen = []
    for ls, outcome in timers.due(5.0):
        seen.append(ls)
        assert outcome is not None
        _sent(ls, at=5.0, prompt="again")  # the engine queues the next push at once...
        timers.track(ls)  # ...and syncs the session: filed again under 10
    assert seen == sessions
    assert list(timers.due(9.9)) == [] and len(timers) == 3


def test_a_chunk_filed_together_comes_due_at_its_latest_deadline_once_per_member() -> None:
    """``track_all``: one filing for the sessions a write-ahead chunk just wrote, under the
    latest of their deadlines; a member acknowledged or re-tracked meanwhile leaves it."""
    timers = Timers(TIMEOUT)
    chunk = [_live(i) for i in range(4)]
    for i, ls in enumerate(chunk):
        _sent(ls, at=0.001 * i)  # written one after another: deadlines 5.000 .. 5.003
    idle = _live(9)  # nothing in flight: no timer, not filed
    timers.track_all([*chunk, idle])
    assert len(timers) == 4
    assert chunk[0].push.acked(1.0) is not None
    timers.track(chunk[0])  # acknowledged: no timer any more
    assert chunk[1].push.acked(1.0) is not None
    _sent(chunk[1], at=2.0, prompt="y")  # its next push: filed alone under 7
    timers.track(chunk[1])
    assert list(timers.due(5.002)) == []  # not before the chunk's latest deadline
    due = list(timers.due(5.003))
    assert [ls for ls, _ in due] == chunk[2:]
    assert all(o is not None and o.status == "unverified" for _, o in due)
    assert [ls for ls, _ in timers.due(7.0)] == [chunk[1]] and len(timers) == 0
