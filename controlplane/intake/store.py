"""The active policy set and every version's history, fed by policy events.

Idempotent: an event whose ``(id, version)`` was seen, or whose version is not above the
policy's current version, changes nothing (duplicates and regressions from the bus).

Halts (``policy.halted``, docs/policies.md#guard): a halted version stays the policy's
current version, but resolution for a session not already running it uses the policy's
*fallback* instead: the latest earlier version that was published and not halted, or nothing
when the policy was retired (or did not exist) before it. ``active()`` is that set for new
sessions; ``resolution_set(pins)`` the set for a session pinned to halted versions it runs.
Publishing a newer version (or retiring) ends the halt.

Waves (``policy.wave``, docs/policies.md#waves): a version with ``rollout.waves`` has a
``WaveState`` (the current wave, paused or not, its steps). A session whose bucket is outside
the current wave resolves the policy's *previous* version (its fallback when published),
like a session a halt does not pin: ``outside_waves`` names those policies for one session,
``resolution_set(pins, outside)`` gives its set.

Ownership (docs/policies.md#ownership, docs/security.md#teams): a policy's owner role is the
highest role among its events, its owner team the ``team`` of the event that created it or
raised that role (``default`` for none), or of an admin's ``transfer``. An event below the owner
role, or at it below admin for another team, changes nothing (``roles.owner_refusal``), nor one
its role may not publish (``roles.publish_refusal``) or crossing another team's lock, experiment
key or transfer rule (``controlplane.intake.team_locks``); one without a role (an operator's
tool) keeps the owner. Each stored version carries its owner's rank (``Policy.rank``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from controlplane.errors import Conflict, NotFound
from controlplane.intake.bus import PolicyEvent
from controlplane.intake.team_locks import (
    key_refusal,
    lock_refusal,
    lock_team,
    owner_after,
    transfer_refusal,
)
from controlplane.roles import DEFAULT_TEAM, Role, event_role, owner_refusal, publish_refusal
from policies.bucketing import bucket, percent_to_units, units_in_rollout
from policies.limits import BUCKET_BY_SESSION
from policies.model import Policy, parse_policy

__all__ = ["Change", "Halt", "PolicyRecord", "PolicyStore", "RolloutState", "WaveState"]

RolloutState = Literal["active", "halted", "rolled_back", "retired"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyRecord:
    """One stored version of a policy."""

    policy: Policy
    event: PolicyEvent
    retired: bool
    owner_team: str = DEFAULT_TEAM  # the policy's owner team as of this version

    @property
    def version(self) -> int:
        assert self.policy.version is not None
        return self.policy.version

    @property
    def role(self) -> Role:
        """The role that published this version (an operator's tool: the owner's)."""
        return event_role(self.event.role, self.event.actor) or self.owner_role

    @property
    def owner_role(self) -> Role:
        """The policy's owner role as of this version."""
        return Role(self.policy.rank)

    @property
    def action(self) -> str:
        """``publish``, ``rollback``, ``retire`` or ``transfer``: what made this version."""
        if self.event.cause == "transfer":  # an admin handed the id to another team
            return "transfer"
        if self.retired:
            return "retire"
        return "rollback" if self.event.cause == "rollback" else "publish"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.policy.id,
            "version": self.version,
            "status": "retired" if self.retired else "active",
            "cause": self.event.cause,
            "action": self.action,
            "actor": self.event.actor,
            "role": self.role.label,
            "owner_role": self.owner_role.label,
            "team": self.event.team,
            "owner_team": self.owner_team,
            "at": self.event.published_at,
            "published_at": self.event.published_at,
            "reason": self.policy.reason,
            "event_id": self.event.event_id,
            "digest": self.policy.digest,
            "policy": self.policy.document(),
        }

    def change(self, previous: PolicyRecord | None) -> dict[str, Any]:
        """The change record: ``as_dict`` plus ``before`` / ``after``, the documents in
        effect before and after this version (``None``: the policy was not in effect)."""
        before = None if previous is None or previous.retired else previous.policy.document()
        after = None if self.retired else self.policy.document()
        return {**self.as_dict(), "before": before, "after": after}


@dataclass(frozen=True)
class Halt:
    """A version the rollout guard stopped: the event that said so and its reason."""

    policy_id: str
    version: int
    event: PolicyEvent

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "at": self.event.published_at,
                "actor": self.event.actor, **dict(self.event.halt or {})}  # fmt: skip


def event_time(event: PolicyEvent) -> float:
    """The event's ``published_at`` as epoch seconds (0.0 when unreadable)."""
    try:
        return datetime.fromisoformat(event.published_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


@dataclass
class WaveState:
    """Where a version with ``rollout.waves`` stands (changed only by its events)."""

    policy: Policy
    previous: Policy | None  # what sessions outside the current wave resolve with
    started_at: float  # epoch seconds: when the current wave started (or resumed)
    index: int = 0
    seq: int = 0
    paused: bool = False
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def waves(self) -> tuple[Decimal, ...]:
        assert self.policy.rollout is not None and self.policy.rollout.waves is not None
        return self.policy.rollout.waves

    @property
    def percent(self) -> Decimal:
        return self.waves[self.index]

    @property
    def complete(self) -> bool:
        return self.index >= len(self.waves) - 1

    def contains(self, session_id: str, labels: Mapping[str, str]) -> bool:
        """Whether the session is in the current wave (nested: bucket < wave percent)."""
        if self.complete:
            return True
        rollout = self.policy.rollout
        assert rollout is not None
        value = session_id if rollout.bucket_by == BUCKET_BY_SESSION else labels.get(
            rollout.bucket_by
        )  # fmt: skip
        if not value:
            return False
        units = percent_to_units(self.percent)
        return units_in_rollout(bucket(self.policy.id, rollout.effective_salt, value), units)


@dataclass(frozen=True)
class Change:
    """What an accepted event changed: the policy before and after (None = not active).

    ``fallback``: what sessions not pinned to a halted ``before`` were resolved with.
    """

    policy_id: str
    before: Policy | None
    after: Policy | None
    record: PolicyRecord
    fallback: Policy | None = None


class PolicyStore:
    def __init__(self) -> None:
        self._history: dict[str, list[PolicyRecord]] = {}
        self._active: dict[str, Policy] = {}
        self._halts: dict[tuple[str, int], Halt] = {}  # every halt ever applied
        self._halted: dict[str, Policy | None] = {}  # halted active policy id -> fallback
        self._waves: dict[str, WaveState] = {}  # active versions with rollout.waves
        self._keys: dict[str, set[str]] = {}  # experiment key -> every policy id that ran it

    # -- reads ---------------------------------------------------------------------------
    def active(self) -> list[Policy]:
        """What resolution uses for a session not pinned to any halted version."""
        if not self._halted:
            return list(self._active.values())
        return self.resolution_set(())

    def resolution_set(
        self, pins: Collection[tuple[str, int]], outside: Collection[str] = ()
    ) -> list[Policy]:
        """The active set for a session running the halted ``(id, version)`` pairs ``pins``:
        those stay, every other halted version is replaced by its fallback (or left out);
        a policy in ``outside`` (the session is outside its current wave) by its previous
        version (or left out)."""
        out = []
        for policy_id, policy in self._active.items():
            if policy_id in self._halted and (policy_id, policy.version) not in pins:
                fallback = self._halted[policy_id]
                if fallback is not None:
                    out.append(fallback)
            elif policy_id in outside and policy_id not in self._halted:
                previous = self._waves[policy_id].previous
                if previous is not None:
                    out.append(previous)
            else:
                out.append(policy)
        return out

    # -- waves ---------------------------------------------------------------------------
    @property
    def has_waves(self) -> bool:
        """Whether some active version is still short of its last wave."""
        return any(not w.complete for w in self._waves.values())

    def waves(self, policy_id: str) -> WaveState | None:
        """The wave state of the policy's active version (None: it has no waves)."""
        return self._waves.get(policy_id)

    def wave_states(self) -> list[WaveState]:
        return list(self._waves.values())

    def outside_waves(self, session_id: str, labels: Mapping[str, str]) -> frozenset[str]:
        """The policies whose current wave this session is not in (resolves their previous
        version)."""
        if not self._waves:
            return frozenset()
        return frozenset(
            pid for pid, w in self._waves.items() if not w.contains(session_id, labels)
        )

    def for_session(self, session_id: str, labels: Mapping[str, str]) -> list[Policy]:
        """The set a session that runs no halted version resolves with."""
        if not self.has_waves:
            return self.active()
        return self.resolution_set((), self.outside_waves(session_id, labels))

    def wave_accepts(self, event: PolicyEvent) -> bool:
        """Whether :meth:`wave` would apply this ``policy.wave`` event: it names the active,
        unhalted version with waves, is its next step (``seq`` = last + 1) and is possible
        (an advance to the next wave, a pause when running, a resume when paused)."""
        state = self._waves.get(event.policy_id)
        step = event.wave or {}
        if state is None or state.policy.version != event.version:
            return False
        if event.policy_id in self._halted or step.get("seq") != state.seq + 1:
            return False
        if self.refusal(event) is not None:
            return False  # a role below the owner's, or another team (docs/security.md#teams)
        action = step.get("action")
        if action in ("advance", "promote"):
            return not state.complete and step.get("index") == state.index + 1
        return (action == "pause" and not state.paused) or (action == "resume" and state.paused)

    def wave(self, event: PolicyEvent) -> WaveState | None:
        """Apply a ``policy.wave`` event; None when :meth:`wave_accepts` says no."""
        if not self.wave_accepts(event):
            return None
        state = self._waves[event.policy_id]
        step = dict(event.wave or {})
        action = step["action"]
        if action in ("advance", "promote"):
            state.index += 1
            state.started_at = event_time(event)
        elif action == "pause":
            state.paused = True
        else:
            state.paused = False
            state.started_at = event_time(event)  # a full interval from the resume
        state.seq += 1
        state.steps.append({**step, "percent": _percent(state.percent), "at":
                            event.published_at, "actor": event.actor})  # fmt: skip
        return state

    @property
    def has_halts(self) -> bool:
        """Whether any active version is halted (else every session resolves alike)."""
        return bool(self._halted)

    def halted(self, policy_id: str) -> Halt | None:
        """The halt of the policy's active version, if it is halted."""
        policy = self._active.get(policy_id)
        if policy is None or policy_id not in self._halted:
            return None
        assert policy.version is not None
        return self._halts.get((policy_id, policy.version))

    def is_halted(self, policy_id: str, version: int) -> bool:
        halt = self.halted(policy_id)
        return halt is not None and halt.version == version

    def fallback(self, policy_id: str) -> PolicyRecord | None:
        """The latest version before the current one that was published and not halted;
        None when a retirement (or the start of the history) comes first."""
        for record in reversed(self._history.get(policy_id, [])[:-1]):
            if record.retired:
                return None
            if (policy_id, record.version) not in self._halts:
                return record
        return None

    def rollout_state(self, policy_id: str) -> tuple[RolloutState, Halt | None]:
        """``active``, ``halted`` (the current version), ``rolled_back`` (the current version
        is a rollback published right after a halted one) or ``retired``; with the halt that
        explains it (a retirement right after a halted version keeps it too)."""
        history = self.history(policy_id)
        latest = history[-1]
        halt = self._halts.get((policy_id, latest.version))
        before = self._halts.get((policy_id, history[-2].version)) if len(history) > 1 else None
        if latest.retired:
            return "retired", before
        if halt is not None:
            return "halted", halt
        if latest.event.cause == "rollback" and before is not None:
            return "rolled_back", before
        return "active", None

    def owner_role(self, policy_id: str) -> Role | None:
        """The role owning ``policy_id`` (None: no such policy)."""
        history = self._history.get(policy_id)
        return history[-1].owner_role if history else None

    def owner_team(self, policy_id: str) -> str | None:
        """The team owning ``policy_id`` (None: no such policy)."""
        history = self._history.get(policy_id)
        return history[-1].owner_team if history else None

    def key_holders(self, key: str) -> frozenset[str]:
        """Every policy id that ran experiment ``key`` in some version."""
        return frozenset(self._keys.get(key, ()))

    def refusal(self, event: PolicyEvent) -> str | None:
        """Why the event's role and team may not change its policy (``roles.owner_refusal``),
        logged; None: they may."""
        policy_id = event.policy_id
        found = owner_refusal(event_role(event.role, event.actor), event.team,
                              self.owner_role(policy_id), self.owner_team(policy_id))  # fmt: skip
        if found is None:
            return None
        log.warning("policy event %s refused: %s", event.msg_id, found[0])
        return found[0]

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

    def changes(self, policy_id: str) -> list[dict[str, Any]]:
        """Every version's change record (``PolicyRecord.change``), oldest first."""
        history = self.history(policy_id)
        return [r.change(history[i - 1] if i else None) for i, r in enumerate(history)]

    def version(self, policy_id: str, version: int) -> PolicyRecord:
        for record in self.history(policy_id):
            if record.version == version:
                return record
        raise NotFound(f"policy {policy_id!r} has no version {version}", code="version_not_found")

    def records(self) -> list[PolicyRecord]:
        return [history[-1] for _, history in sorted(self._history.items())]

    def unchanged(self, policy: Policy) -> PolicyRecord | None:
        """The current version when ``policy`` is identical to it (``Policy.content``: all
        but version and reason) and it is in effect (not retired, not halted), and the
        document names no version or not an older one; else None (a publish goes ahead)."""
        history = self._history.get(policy.id)
        if not history:
            return None
        latest = history[-1]
        if latest.retired or policy.id in self._halted:
            return None
        if policy.version is not None and policy.version < latest.version:
            return None
        return latest if policy.content() == latest.policy.content() else None

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

    def accepts(self, event: PolicyEvent, policy: Policy | None = None) -> bool:
        """Whether :meth:`apply` would store this published/retired event (``policy``: its
        parsed document, when at hand): its version is above the current one, its role is not
        below the policy's owner role (nor another team at it) and it crosses no other team's
        lock (``lock_refusal``)."""
        if event.version <= self.current_version(event.policy_id):
            return False
        if self.refusal(event) is not None:
            return False
        role = event_role(event.role, event.actor)
        refusal = None if role is None else publish_refusal(role, event.policy)
        if refusal is not None:  # what the REST API refuses that role (roles.publish_refusal)
            log.warning("policy event %s refused: %s", event.msg_id, refusal)
            return False
        policy = parse_policy(event.policy) if policy is None else policy
        return all(check(self, event, policy) is None
                   for check in (transfer_refusal, lock_refusal, key_refusal))  # fmt: skip

    def apply(self, event: PolicyEvent) -> Change | None:
        """Apply a validated event; None when it is a duplicate, a regression or comes from a
        role below the owner's."""
        policy = parse_policy(event.policy)
        if policy.version is None or not self.accepts(event, policy):
            return None
        role, team = owner_after(self, policy.id, event_role(event.role, event.actor),
                                 event.team, transfer=event.cause == "transfer")  # fmt: skip
        policy = policy.with_rank(int(role), lock_team(role, team))
        retired = event.type == "policy.retired"
        record = PolicyRecord(policy, event, retired, team)
        self._history.setdefault(policy.id, []).append(record)
        if policy.experiment is not None:
            self._keys.setdefault(policy.experiment.key, set()).add(policy.id)
        before = self._active.get(policy.id)
        fallback = self._halted.pop(policy.id, None)  # a new version ends the halt
        previous_waves = self._waves.pop(policy.id, None)
        if retired:
            self._active.pop(policy.id, None)
            after = None
        else:
            self._active[policy.id] = policy
            after = policy
            if policy.rollout is not None and policy.rollout.waves is not None:
                earlier = self.fallback(policy.id)
                self._waves[policy.id] = WaveState(
                    policy, None if earlier is None else earlier.policy, event_time(event)
                )
                if event.cause == "transfer" and previous_waves is not None:  # complete: stays
                    self._waves[policy.id] = replace(previous_waves, policy=policy)
        if previous_waves is not None and fallback is None and before is not None:
            fallback = previous_waves.previous  # sessions outside its wave ran that one
        return Change(policy.id, before, after, record, fallback)

    def halt_accepts(self, event: PolicyEvent) -> bool:
        """Whether :meth:`halt` would apply this ``policy.halted`` event: it names the active
        version, that version is not halted yet (duplicates, halts overtaken by a newer
        version) and its role is not below the owner's (the guard's halts carry none)."""
        policy = self._active.get(event.policy_id)
        if policy is None or policy.version != event.version or event.policy_id in self._halted:
            return False
        return self.refusal(event) is None

    def halt(self, event: PolicyEvent) -> Halt | None:
        """Apply a ``policy.halted`` event; None when :meth:`halt_accepts` says no."""
        if not self.halt_accepts(event):
            return None
        policy_id, version = event.policy_id, event.version
        halt = self._halts[(policy_id, version)] = Halt(policy_id, version, event)
        fallback = self.fallback(policy_id)
        self._halted[policy_id] = None if fallback is None else fallback.policy
        return halt

    @staticmethod
    def parse(doc: Mapping[str, Any]) -> Policy:
        return parse_policy(doc)


def _percent(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)
