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
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any

__all__ = ["ROLE_NAMES", "Role", "event_role", "publish_refusal"]


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
