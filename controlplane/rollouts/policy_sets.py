"""Which policies each live session resolves with: halts and waves as data, not as a layer.

With nothing halted and no version between waves every session resolves with the store's
active set (``groups`` answers one group: one ``engine.reconcile`` call). Otherwise a session's
set is ``PolicyStore.resolution_set(pins, outside)``:

- **pins** (docs/policies.md#guard): the halted ``(policy, version)`` pairs this session keeps.
  When a halt is applied here (``pin``), the sessions that had been written that version, had
  acknowledged it or needed no change for it (their rollout status, ``DELIVERED``) keep it;
  every other session, late joiners included, resolves with the halted policy's fallback.
- **outside** (docs/policies.md#waves): the policies whose current wave this session is not
  in; it resolves their previous version.

Read by the policy event handler (``controlplane.service.events``) for a fan-out and by the
edges for one session (``ControlPlane.policies_for``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from controlplane.intake.store import PolicyStore
from controlplane.push.engine import LiveSession
from policies.model import Policy

__all__ = ["DELIVERED", "PolicySets"]

# rollout statuses (LiveSession.policy_status) meaning the session runs that version
DELIVERED: Final = frozenset({"sent", "acked", "unverified", "skipped", "unchanged"})

Group = tuple[list[Policy], list[LiveSession]]


class PolicySets:
    def __init__(self, store: PolicyStore) -> None:
        self._store = store
        self._pinned: dict[tuple[str, int], set[str]] = {}  # halted version -> session ids

    def pin(self, policy_id: str, version: int, live: Iterable[LiveSession]) -> None:
        """A halt of ``(policy_id, version)`` was applied: the sessions running it keep it."""
        self._pinned[(policy_id, version)] = {
            ls.session.id for ls in live if _runs(ls, policy_id, version)
        }

    def pins(self, ls: LiveSession) -> frozenset[tuple[str, int]]:
        """The halted versions this session runs (and keeps)."""
        return frozenset(
            key
            for key, sessions in self._pinned.items()
            if ls.session.id in sessions and self._store.is_halted(*key)
        )

    def for_session(self, ls: LiveSession) -> list[Policy]:
        if not self._store.has_halts:
            self._pinned.clear()  # every halt ended (a newer version, or retired)
            return self._store.for_session(ls.session.id, ls.session.labels)
        return self._store.resolution_set(self.pins(ls), self._outside(ls))

    def groups(self, sessions: Iterable[LiveSession]) -> list[Group]:
        """The sessions by policy set: one group (the active set) when nothing is halted and
        no version is between waves, else one per distinct pins and waves outside (rarely
        more than a few)."""
        if not self._store.has_halts:
            self._pinned.clear()
            if not self._store.has_waves:
                return [(self._store.active(), list(sessions))]
        by_key: dict[tuple[frozenset[tuple[str, int]], frozenset[str]], list[LiveSession]] = {}
        for ls in sessions:
            by_key.setdefault((self.pins(ls), self._outside(ls)), []).append(ls)
        return [
            (self._store.resolution_set(pins, outside), members)
            for (pins, outside), members in by_key.items()
        ]

    def _outside(self, ls: LiveSession) -> frozenset[str]:
        """The policies whose current wave this session is not in (docs/policies.md#waves)."""
        return self._store.outside_waves(ls.session.id, ls.session.labels)


def _runs(ls: LiveSession, policy_id: str, version: int) -> bool:
    status = ls.policy_status.get(policy_id)
    return status is not None and status[0] == version and status[2] in DELIVERED
