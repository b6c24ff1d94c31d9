"""The active policy set and every version's history, fed by policy events.

Idempotent: an event whose ``(id, version)`` was seen, or whose version is not above the
policy's current version, changes nothing (duplicates and regressions from the bus).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.bus import PolicyEvent
from controlplane.errors import Conflict, NotFound
from policies.model import Policy, parse_policy

__all__ = ["Change", "PolicyRecord", "PolicyStore"]


@dataclass(frozen=True)
class PolicyRecord:
    """One stored version of a policy."""

    policy: Policy
    event: PolicyEvent
    retired: bool

    @property
    def version(self) -> int:
        assert self.policy.version is not None
        return self.policy.version

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.policy.id,
            "version": self.version,
            "status": "retired" if self.retired else "active",
            "cause": self.event.cause,
            "actor": self.event.actor,
            "published_at": self.event.published_at,
            "event_id": self.event.event_id,
            "policy": self.policy.document(),
        }


@dataclass(frozen=True)
class Change:
    """What an accepted event changed: the policy before and after (None = not active)."""

    policy_id: str
    before: Policy | None
    after: Policy | None
    record: PolicyRecord


class PolicyStore:
    def __init__(self) -> None:
        self._history: dict[str, list[PolicyRecord]] = {}
        self._active: dict[str, Policy] = {}

    # -- reads ---------------------------------------------------------------------------
    def active(self) -> list[Policy]:
        return list(self._active.values())

    def active_policy(self, policy_id: str) -> Policy | None:
        return self._active.get(policy_id)

    def current_version(self, policy_id: str) -> int:
        history = self._history.get(policy_id)
        return history[-1].version if history else 0

    def latest(self, policy_id: str) -> PolicyRecord:
        history = self._history.get(policy_id)
        if not history:
            raise NotFound(f"no policy {policy_id!r}", code="policy_not_found")
        return history[-1]

    def history(self, policy_id: str) -> list[PolicyRecord]:
        self.latest(policy_id)
        return list(self._history[policy_id])

    def version(self, policy_id: str, version: int) -> PolicyRecord:
        for record in self.history(policy_id):
            if record.version == version:
                return record
        raise NotFound(f"policy {policy_id!r} has no version {version}", code="version_not_found")

    def records(self) -> list[PolicyRecord]:
        return [history[-1] for _, history in sorted(self._history.items())]

    # -- writes --------------------------------------------------------------------------
    def prepare(self, policy: Policy) -> Policy:
        """Assign the next version when absent; refuse regressions and duplicates (409)."""
        current = self.current_version(policy.id)
        if policy.version is None:
            return policy.with_version(current + 1)
        if policy.version <= current:
            raise Conflict(
                f"policy {policy.id!r} version {policy.version} is not above the current "
                f"version {current}; publish version {current + 1} or omit version",
                details={"id": policy.id, "version": policy.version, "current": current},
            )
        return policy

    def apply(self, event: PolicyEvent) -> Change | None:
        """Apply a validated event; None when it is a duplicate or a regression."""
        policy = parse_policy(event.policy)
        if policy.version is None or policy.version <= self.current_version(policy.id):
            return None
        retired = event.type == "policy.retired"
        record = PolicyRecord(policy, event, retired)
        self._history.setdefault(policy.id, []).append(record)
        before = self._active.get(policy.id)
        if retired:
            self._active.pop(policy.id, None)
            after = None
        else:
            self._active[policy.id] = policy
            after = policy
        return Change(policy.id, before, after, record)

    @staticmethod
    def parse(doc: Mapping[str, Any]) -> Policy:
        return parse_policy(doc)
