"""Locks and experiment keys across teams (docs/security.md#locks-and-teams).

Below admin, a policy's locks are bound to its owner team: another team of the same role can
neither set a field it locks (on sessions both policies surely target) nor lock that field too
(wherever both may meet: two teams never share a field's lock, which resolution would settle
by priority). An admin's lock binds every lower role and no team.

An experiment key belongs to the policy ids that ran it: another policy id may run it only if
its role and team could change them (``key_holder``): a team cannot count its sessions into
another team's experiment (exposures, summary, export and SRM are per key).

A transfer (docs/security.md#transfers: cause ``transfer``) is an admin handing a policy id,
and with it its locks and experiment key, to another team; the owner role stays
(``transfer_refusal`` says which events may: admin, a policy owned below admin by another
team, the current document unchanged, not halted nor mid-waves).

Used by the policy store (every replica refuses such an event alike) and, through it, by the
REST checks (``controlplane.intake.authority``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from controlplane.intake.bus import PolicyEvent
from controlplane.roles import DEFAULT_TEAM, Role, event_role, owner_refusal
from policies.authority import LockClash, lock_clashes
from policies.model import Policy

__all__ = [
    "KeyHolder",
    "Owners",
    "Rollout",
    "Stored",
    "key_holder",
    "key_refusal",
    "lock_refusal",
    "lock_team",
    "owner_after",
    "team_clashes",
    "team_refusal",
    "transfer_problem",
    "transfer_refusal",
]

log = logging.getLogger(__name__)


class Stored(Protocol):
    """A stored version (``controlplane.intake.store.PolicyRecord``)."""

    @property
    def policy(self) -> Policy: ...

    @property
    def retired(self) -> bool: ...


class Rollout(Protocol):
    """A version's waves (``controlplane.intake.store.WaveState``)."""

    @property
    def complete(self) -> bool: ...


class Owners(Protocol):
    """What this module reads of the policy store (``controlplane.intake.store``)."""

    def owner_role(self, policy_id: str) -> Role | None: ...

    def owner_team(self, policy_id: str) -> str | None: ...

    def active(self) -> list[Policy]: ...

    def key_holders(self, key: str) -> frozenset[str]: ...

    def latest(self, policy_id: str) -> Stored: ...

    def halted(self, policy_id: str) -> object | None: ...

    def waves(self, policy_id: str) -> Rollout | None: ...


def owner_after(
    store: Owners, policy_id: str, role: Role | None, team: str | None, *, transfer: bool = False
) -> tuple[Role, str]:
    """The owner (role, team) of ``policy_id`` once ``role`` acting for ``team`` publishes
    it: a new id or a higher role takes it (its team), else the owner stays; no role (an
    operator's tool) keeps it (compliance and ``default`` for a new id). ``transfer``: the
    owner role stays and ``team`` owns it."""
    owner = store.owner_role(policy_id)
    if transfer and owner is not None:
        return owner, team or DEFAULT_TEAM
    if role is not None and (owner is None or role > owner):
        return role, team or DEFAULT_TEAM
    return owner or Role.COMPLIANCE, store.owner_team(policy_id) or DEFAULT_TEAM


def transfer_problem(store: Owners, policy_id: str, team: str) -> tuple[str, str] | None:
    """Why ``policy_id`` cannot be handed to ``team`` now, with an error code; None: it can
    (the caller checks the role: admin only, and the locks the new team would cross)."""
    owner = store.owner_role(policy_id)
    if owner is None:
        return f"there is no policy {policy_id!r}", "policy_not_found"
    if owner >= Role.ADMIN:
        why = (f"policy {policy_id!r} is owned by role admin: its locks bind no team and "
               "every admin may change it; there is nothing to transfer")  # fmt: skip
        return why, "not_transferable"
    owner_team = store.owner_team(policy_id) or DEFAULT_TEAM
    if owner_team == team:
        return f"policy {policy_id!r} is already owned by team {team!r}", "already_owned"
    waves = store.waves(policy_id)
    if store.halted(policy_id) is not None or (waves is not None and not waves.complete):
        why = (f"policy {policy_id!r} is halted or short of its last wave: roll it back, "
               "retire it or finish its waves before transferring it")  # fmt: skip
        return why, "rollout_in_progress"
    return None


def transfer_refusal(store: Owners, event: PolicyEvent, policy: Policy) -> str | None:
    """Why the store may not take a ``transfer`` event (logged); None: it may, or it is not
    one. Only an admin's; to a team (not the owner team) of a policy owned below admin; the
    current version's document (content and state) again; not halted nor mid-waves."""
    if event.cause != "transfer":
        return None
    why = None
    if event_role(event.role, event.actor) != Role.ADMIN or event.team is None:
        why = "a transfer needs role admin and the team it hands the policy to"
    else:
        found = transfer_problem(store, policy.id, event.team)
        why = None if found is None else found[0]
    if why is None:
        latest = store.latest(policy.id)
        retired = event.type == "policy.retired"
        if latest.retired != retired or latest.policy.content() != policy.content():
            why = "a transfer changes the owner team only: it carries the current document"
    if why is not None:
        log.warning("policy event %s refused: %s", event.msg_id, why)
    return why


def lock_refusal(store: Owners, event: PolicyEvent, policy: Policy) -> str | None:
    """Why the store may not take a published event: it crosses a lock bound to another team
    of the owner rank (logged); None: it may (retirements always may)."""
    if event.type != "policy.published":
        return None
    rank, team = owner_after(store, policy.id, event_role(event.role, event.actor), event.team,
                             transfer=event.cause == "transfer")  # fmt: skip
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


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """Another policy id that ran the experiment key a version would use, which its role and
    team may not act on (``roles.owner_refusal``: ``why``, and the role ``needed``)."""

    policy: str
    key: str
    owner_role: Role
    owner_team: str
    why: str
    needed: Role


def key_holder(
    store: Owners, policy: Policy, role: Role | None, team: str | None,
    grants: frozenset[str] = frozenset(),
) -> KeyHolder | None:  # fmt: skip
    """An experiment key belongs to the policies that ran it: a version of another policy id
    may run it only when its role and team could change those (a team cannot count its
    sessions into another team's experiment: exposures, summary and export are per key)."""
    if policy.experiment is None:
        return None
    key = policy.experiment.key
    for other in sorted(store.key_holders(key) - {policy.id}):
        owner, owner_team = store.owner_role(other), store.owner_team(other) or DEFAULT_TEAM
        acting = owner_team if owner_team in grants else team  # a token granted its team
        found = owner_refusal(role, acting, owner, owner_team)
        if found is not None and owner is not None:
            return KeyHolder(other, key, owner, owner_team, found[0], found[1])
    return None


def key_refusal(store: Owners, event: PolicyEvent, policy: Policy) -> str | None:
    """Why the store may not take a published event: its experiment key is another team's
    (``key_holder``), logged; None: it may."""
    if event.type != "policy.published":
        return None
    held = key_holder(store, policy, event_role(event.role, event.actor), event.team)
    if held is None:
        return None
    why = f"experiment {held.key!r} is run by policy {held.policy!r}: {held.why}"
    log.warning("policy event %s refused: %s", event.msg_id, why)
    return why
