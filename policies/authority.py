"""Locks as a ceiling, checked when a policy is published (docs/policies.md#locks).

A field locked by a policy owned by a role of rank ``r`` (``Policy.rank``) holds against every
policy of a lower rank on every session both target; resolution enforces it
(:mod:`policies.resolve`). This module answers the publish-time question: would a new version
set a field that a higher-ranked policy locks, on sessions that lock covers?

The answer is decided on the two ``match`` selectors alone (rollout and experiment splits are
sticky per session, so some sessions are in both):

- ``none``: no session can satisfy both (a kind, model or label condition excludes the other);
- ``certain``: one selector contains the other, so every session of the narrower one is
  targeted by both;
- ``labels``: the selectors overlap only on sessions carrying a particular combination of
  labels; whether any does depends on live labels.

The containment test is conservative: when it cannot prove containment it answers ``labels``.

Teams (docs/security.md#locks-and-teams): a lock bound to its owner team (``Policy.team``, set
below admin) holds against the other teams of its own rank too: a version of another team at
that rank that would set the field crosses it like a lower rank's, and one that would LOCK the
field too (``LockClash.locks``) is a clash wherever both may meet (``labels`` included): two
teams never share a field's lock, which resolution would settle by priority.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from policies.fields import FIELDS
from policies.model import Match, Policy

__all__ = ["LockClash", "Overlap", "lock_clashes", "overlap", "set_fields"]

Overlap = Literal["none", "certain", "labels"]


@dataclass(frozen=True, slots=True)
class LockClash:
    """``policy`` (version ``version``, owner rank ``rank``, lock bound to team ``team``)
    locks ``field``, which the new version sets (or, ``locks``, locks too: only another team
    of the same rank) on sessions it also covers; ``certain`` unless that depends on live
    labels."""

    field: str
    policy: str
    version: int
    rank: int
    certain: bool
    team: str | None = None
    locks: bool = False

    @property
    def refused(self) -> bool:
        """Whether publishing is refused (409): certain, or a second team's lock."""
        return self.certain or self.locks


def set_fields(policy: Policy) -> set[str]:
    """Every field the policy may set on some session (``set``, every variant's ``set`` and
    ``defaults``: a default under a higher role's lock would never apply either)."""
    names = set(policy.set) | set(policy.defaults)
    if policy.experiment is not None:
        for variant in policy.experiment.variants:
            names.update(variant.set)
    return names


def lock_clashes(
    policy: Policy, rank: int, active: Iterable[Policy], team: str | None = None
) -> list[LockClash]:
    """The locks of ``active`` policies that ``policy`` (owned at ``rank`` by ``team``) would
    cross: those of a higher rank, and those of its rank bound to another team; sorted by
    field (canonical order), then locking policy id. ``policy``'s own id is skipped (its
    earlier versions are replaced, not crossed)."""
    sets = set_fields(policy)
    own_locks = set(policy.lock)
    out: list[LockClash] = []
    if not sets and not own_locks:
        return out
    for other in active:
        if other.id == policy.id or other.rank < rank or not other.lock:
            continue
        if other.rank == rank and (other.team is None or other.team == team):
            continue  # the same rank: only another team's bound lock holds
        crossed = sets.intersection(other.lock)
        relocked = own_locks.intersection(other.lock) if other.rank == rank else set()
        if not crossed and not relocked:
            continue
        kind = overlap(policy.match, other.match)
        if kind == "none":
            continue
        assert other.version is not None
        for name in crossed | relocked:
            out.append(LockClash(name, other.id, other.version, other.rank, kind == "certain",
                                 other.team, name in relocked))  # fmt: skip
    order = {name: index for index, name in enumerate(FIELDS)}
    out.sort(key=lambda c: (order.get(c.field, len(order)), c.policy))
    return out


def overlap(a: Match, b: Match) -> Overlap:
    """Whether sessions targeted by both ``a`` and ``b`` exist for sure, maybe, or never."""
    if _disjoint(a, b):
        return "none"
    if _contains(a, b) or _contains(b, a):
        return "certain"
    return "labels"


def _disjoint(a: Match, b: Match) -> bool:
    if a.kind and b.kind and not set(a.kind) & set(b.kind):
        return True
    if a.model and b.model and not set(a.model) & set(b.model):
        return True
    return _labels_exclude(a, b) or _labels_exclude(b, a)


def _labels_exclude(a: Match, b: Match) -> bool:
    """Whether ``a``'s required labels contradict ``b``'s conditions."""
    for name, values in a.labels.items():
        other = b.labels.get(name)
        if other is not None and not set(values) & set(other):
            return True
        if name in b.labels_absent:
            return True
        banned = b.labels_not.get(name)
        if banned is not None and set(values) <= set(banned):
            return True
    return False


def _contains(outer: Match, inner: Match) -> bool:
    """Whether every session satisfying ``inner`` satisfies ``outer`` (conservative)."""
    if outer.kind and not (inner.kind and set(inner.kind) <= set(outer.kind)):
        return False
    if outer.model and not (inner.model and set(inner.model) <= set(outer.model)):
        return False
    for name, values in outer.labels.items():
        required = inner.labels.get(name)
        if required is None or not set(required) <= set(values):
            return False
    for name in outer.labels_absent:
        if name not in inner.labels_absent:
            return False
    for name, banned in outer.labels_not.items():
        required = inner.labels.get(name)
        if required is not None and not set(required) & set(banned):
            continue
        if name in inner.labels_absent:
            continue
        if set(banned) <= set(inner.labels_not.get(name, ())):
            continue
        return False
    return True
