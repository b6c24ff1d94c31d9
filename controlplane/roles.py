"""Roles and what they may do with policies (docs/api.md#roles, docs/policies.md#ownership).

Roles are ordered ``viewer < app < experimenter < compliance < admin``; compare with ``>=``:

- ``viewer``: read-only REST;
- ``app``: what ``viewer`` may, plus registering sessions and reporting on them on the control
  channel (``/v1/control``); it publishes nothing;
- ``experimenter``: publishes, previews, rolls back and retires experiment policies without a
  lock that it (or another experimenter) owns;
- ``compliance`` and ``admin``: every policy action, within ownership.

Ownership: a policy id is owned by the role that created it; a higher role that publishes a
version of it (or rolls it back, or retires it) takes it over, so the owner role only rises.
A lower role than the owner may not publish, roll back or retire it. Each policy event carries
its publisher's role (``role``), so every replica's store derives the same owner; an event
without one (an operator's tool on the policy stream) keeps the owner (compliance for a new id).

A policy's *rank* (``Policy.rank``, used by resolution for locks) is its owner role's value.

Teams (docs/security.md#teams): a token acts for a team (``role@team:TOKEN`` in the token
configuration; a token without one, and an event without ``team``, acts for ``default``), and
may be granted others (``role@team+other:TOKEN``). A policy's *owner team* is the team that
created it (or took it over with a higher role). At the owner role, below admin, only the
owner team (or a token granted it) may change the policy; another team needs a higher role
(:func:`owner_refusal`). Each policy event carries the team it acts for (``team``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

__all__ = [
    "DEFAULT_TEAM",
    "ROLE_NAMES",
    "TEAM_NAME",
    "TEAM_RULE",
    "Role",
    "Team",
    "canonical_app",
    "canonical_team",
    "event_role",
    "owner_refusal",
    "parse_grant",
    "publish_refusal",
]

# a team name as written (``default`` included: the team of every token configured without
# one); ASCII only, so no look-alike letter, space or control character can make a second team
TEAM_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
TEAM_RULE: Final = (
    "a team name is 1-63 ASCII letters, digits, '.', '_' or '-', starting with a letter or "
    "digit (case does not matter: read in lower case)"
)
DEFAULT_TEAM: Final = "default"  # tokens without a team, events without ``team``


def canonical_team(value: object) -> str:
    """The one spelling of a team name, wherever a team enters (the token configuration,
    signing-key scopes, policy events, stored events replayed): :data:`TEAM_NAME`, in lower
    case, so ``Legal`` and ``legal`` are one team (docs/security.md#team-names). Anything else
    (a space, a look-alike letter, too long) raises ValueError, never quoting the value."""
    if not isinstance(value, str) or not value.isascii() or not TEAM_NAME.fullmatch(value):
        raise ValueError(TEAM_RULE)
    return value.lower()


def canonical_app(identity: str | None) -> str | None:
    """A stored control-channel app identity (``Session.registered_by``) in today's spelling:
    a team name in lower case (records from before canonical team names kept the configured
    case); a team-less token's ``token:<sha256[:8]>`` and anything else as it is."""
    if identity is None or identity.startswith("token:"):
        return identity
    try:
        return canonical_team(identity)
    except ValueError:
        return identity


class Role(IntEnum):
    """viewer < app < experimenter < compliance < admin; compare with ``>=``."""

    VIEWER = 1
    APP = 2
    EXPERIMENTER = 3
    COMPLIANCE = 4
    ADMIN = 5

    @property
    def label(self) -> str:
        return self.name.lower()

    def __str__(self) -> str:
        return self.label

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            roles = ", ".join(r.label for r in cls)
            raise ValueError(f"unknown role {name!r} (roles: {roles})") from None


ROLE_NAMES: tuple[str, ...] = tuple(r.label for r in Role)


def event_role(role: str | None, actor: str) -> Role | None:
    """The publisher's role of a policy event: its ``role``; for events published before that
    field existed, the role prefix of its ``actor`` (``experimenter:1a2b3c``). None for an
    event with neither (an operator's tool writing to the policy stream, DESIGN.md §4): it is
    trusted like the stream itself and leaves the owner as it is (compliance for a new id).
    """
    for name in (role, actor.partition(":")[0]):
        if name:
            try:
                return Role.parse(name)
            except ValueError:
                continue
    return None


def publish_refusal(role: Role, doc: Mapping[str, Any]) -> str | None:
    """Why ``role`` may not publish ``doc`` (None: it may). Below compliance only experiment
    policies without a lock may be published (rolled back to, retired)."""
    if role >= Role.COMPLIANCE:
        return None
    if role < Role.EXPERIMENTER:
        return f"role {role.label} may not publish policies"
    experiment = doc.get("experiment")
    if not isinstance(experiment, Mapping) or not experiment:
        return "this document has no 'experiment' block"
    if doc.get("lock"):
        return "this document has a 'lock'"
    return None


@dataclass(frozen=True, slots=True)
class Team:
    """The team a token acts for (``name``: recorded as the owner team of what it creates)
    and the other teams it was granted (``grants``: it may change their policies as theirs)."""

    name: str
    grants: frozenset[str] = frozenset()

    def acting_for(self, owner_team: str | None) -> str:
        """The team a change of a policy owned by ``owner_team`` is made for: that team when
        this token was granted it, else the token's own."""
        return owner_team if owner_team is not None and owner_team in self.grants else self.name


def parse_grant(value: str) -> tuple[Role, tuple[str, ...]]:
    """A token entry's ``role`` or ``role@team[+team...]`` -> (role, canonical teams:
    :func:`canonical_team`); ValueError never quotes the value (in a reversed entry it is the
    token)."""
    name, at, teams = value.partition("@")
    role = Role.parse(name) if name.strip().lower() in ROLE_NAMES else None
    if role is None:
        raise ValueError(f"unknown role (roles: {', '.join(ROLE_NAMES)})")
    try:
        names = tuple(canonical_team(t.strip()) for t in teams.split("+")) if at else ()
    except ValueError:
        raise ValueError(f"{TEAM_RULE} (role@team)") from None
    return role, tuple(dict.fromkeys(names))  # ``a+A``: one team


def owner_refusal(
    role: Role | None, team: str | None, owner: Role | None, owner_team: str | None
) -> tuple[str, Role] | None:
    """Why ``role`` acting for ``team`` may not change a policy owned by role ``owner`` and
    team ``owner_team``, with the role it would need; None: it may. Below the owner role:
    refused. At the owner role below admin, for another team: refused (no team, either side,
    is :data:`DEFAULT_TEAM`). A higher role, admin, no role (an operator's tool) or no owner
    (a new policy id): allowed."""
    if role is None or owner is None:
        return None
    if role < owner:
        return f"role {role.label} is below the owner role {owner.label}", owner
    team, owner_team = team or DEFAULT_TEAM, owner_team or DEFAULT_TEAM
    if role == owner < Role.ADMIN and team != owner_team:
        needed = Role(owner + 1)
        return (f"it is owned by team {owner_team!r} (role {owner.label}); team {team!r} needs "
                f"role {needed.label} or a token granted team {owner_team!r}"), needed  # fmt: skip
    return None
