"""``PolicySets`` (controlplane.service.events): halts as data the event handler reads. With
nothing halted every session resolves with the active set, in one group (one fan-out); after
a halt the sessions running the halted version keep it and the others get its fallback; a
newer version ends the halt and the split."""

from __future__ import annotations

from typing import Any

from controlplane.intake.bus import PolicyEvent
from controlplane.intake.store import PolicyStore
from controlplane.push.engine import LiveSession
from controlplane.push.protocol import Push, PushState
from controlplane.service.events import PolicySets
from sessions.dialects import dialect_for
from sessions.model import Session


class _Transport:
    acknowledging = True

    def congested(self) -> bool:
        return False

    async def write(self, push: Push, wire: dict[str, Any], text: str) -> None:
        raise AssertionError("not written in these tests")


def _live(session_id: str, status: str | None = None) -> LiveSession:
    session = Session(id=session_id, kind="voice-agent-v1", model="m", labels={})
    push = PushState.start(acknowledging=True, config={}, refs=(), version=1)
    ls = LiveSession(session=session, push=push, transport=_Transport(),
                     dialect=dialect_for("voice-agent-v1"))  # fmt: skip
    if status is not None:
        ls.policy_status["p"] = (2, None, status)
    return ls


def _published(version: int) -> PolicyEvent:
    doc = {"id": "p", "version": version, "set": {"system_prompt": f"v{version}"}}
    return PolicyEvent("policy.published", doc, "admin:t", "2026-01-01T00:00:00Z")


def _versions(policies: list[Any]) -> list[tuple[str, int]]:
    return [(p.id, p.version) for p in policies]


def test_with_nothing_halted_every_session_is_in_one_group_with_the_active_set() -> None:
    store = PolicyStore()
    store.apply(_published(1))
    store.apply(_published(2))
    sets = PolicySets(store)
    live = [_live("a", "acked"), _live("b", "pending"), _live("c")]
    [(policies, members)] = sets.groups(live)
    assert _versions(policies) == [("p", 2)]
    assert members == live
    assert all(_versions(sets.for_session(ls)) == [("p", 2)] for ls in live)


def test_a_halt_keeps_its_version_for_the_sessions_running_it_and_falls_back_for_others() -> None:
    store = PolicyStore()
    store.apply(_published(1))
    store.apply(_published(2))
    sets = PolicySets(store)
    acked, sent, pending, fresh = (_live("a", "acked"), _live("s", "sent"),
                                   _live("p", "pending"), _live("f"))  # fmt: skip
    halt = PolicyEvent("policy.halted", {"id": "p", "version": 2}, "guard:n", "t",
                       cause="guard", halt={})  # fmt: skip
    assert store.halt(halt) is not None
    sets.pin("p", 2, [acked, sent, pending, fresh])
    groups = {tuple(ls.session.id for ls in members): _versions(policies)
              for policies, members in sets.groups([acked, sent, pending, fresh])}  # fmt: skip
    assert groups == {("a", "s"): [("p", 2)], ("p", "f"): [("p", 1)]}
    assert _versions(sets.for_session(acked)) == [("p", 2)]
    assert _versions(sets.for_session(_live("late"))) == [("p", 1)]  # a late joiner

    store.apply(_published(3))  # a newer version ends the halt: one group again
    [(policies, members)] = sets.groups([acked, pending])
    assert _versions(policies) == [("p", 3)] and len(members) == 2
    assert sets.pins(acked) == frozenset()
