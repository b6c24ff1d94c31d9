"""Locks and teams (docs/security.md#locks-and-teams): below admin, a policy's locks are bound
to its owner team, so another team of the same role can neither set a field it locks (on
sessions both policies surely target) nor lock that field too (wherever both may meet: two
teams never share a field's lock, which resolution would settle by priority). An admin's lock
binds every lower role and no team. Used by the policy store (every replica refuses such an
event alike) and, through it, by the REST checks (``controlplane.intake.authority``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from controlplane.intake.bus import PolicyEvent
from controlplane.roles import DEFAULT_TEAM, Role, event_role
from policies.authority import LockClash, lock_clashes
from policies.model import Policy

__all__ = ["Owners", "lock_refusal", "lock_team", "owner_after", "team_clashes", "team_refusal"]

log = logging.getLogger(__name__)


class Owners(Protocol):
    """What this module reads of the policy store (``controlplane.intake.store``)."""

    def owner_role(self, policy_id: str) -> Role | None: ...

    def owner_team(self, policy_id: str) -> str | None: ...

    def active(self) -> list[Policy]: ...


def owner_after(
    store: Owners, policy_id: str, role: Role | None, team: str | None
) -> tuple[Role, str]:
    """The owner (role, team) of ``policy_id`` once ``role`` acting for ``team`` publishes
    it: a new id or a higher role takes it (its team), else the owner stays; no role (an
    operator's tool) keeps it (compliance and ``default`` for a new id)."""
    owner = store.owner_role(policy_id)
    if role is not None and (owner is None or role > owner):
        return role, team or DEFAULT_TEAM
    return owner or Role.COMPLIANCE, store.owner_team(policy_id) or DEFAULT_TEAM


def lock_refusal(store: Owners, event: PolicyEvent, policy: Policy) -> str | None:
    """Why the store may not take a published event: it crosses a lock bound to another team
    of the owner rank (logged); None: it may (retirements always may)."""
    if event.type != "policy.published":
        return None
    rank, team = owner_after(store, policy.id, event_role(event.role, event.actor), event.team)
    clash = team_refusal(team_clashes(policy, rank, team, store.active()), rank, team)
    if clash is None:
        return None
    why = (f"team {team!r} may not {'lock' if clash.locks else 'set'} field {clash.field!r}: "
           f"policy {clash.policy!r} of team {clash.team!r} locks it")  # fmt: skip
    log.warning("policy event %s refused: %s", event.msg_id, why)
    return why


def lock_team(rank: Role, team: str) -> str | None:
    """The team the locks of a policy owned at ``rank`` by ``team`` are bound to: none for
    admin (an admin lock binds every lower rank; admins of every team may set it)."""
    return None if rank >= Role.ADMIN else team


def team_clashes(
    policy: Policy, rank: Role, team: str, active: Iterable[Policy]
) -> list[LockClash]:
    """The locks ``policy``, owned at ``rank`` by ``team``, would cross (higher ranks', and
    its rank's bound to another team)."""
    return lock_clashes(policy, int(rank), active, lock_team(rank, team))


def team_refusal(clashes: Iterable[LockClash], rank: Role, team: str) -> LockClash | None:
    """The first clash that refuses a version of ``team`` at ``rank`` on every path: another
    team's lock of that rank, certain, or locked by both."""
    for clash in clashes:
        if clash.rank == rank and clash.refused:
            return clash
    return None
