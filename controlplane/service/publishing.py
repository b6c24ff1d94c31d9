"""Policy intake from the API: publish, retire, roll back, wave steps by hand.

Each call checks what it may (ownership, locks, reasons: docs/policies.md#ownership, #locks),
puts one event on the bus and returns once this replica applied it (read-your-writes, bounded
by ``publish_apply_wait_s``). It never applies the event itself: the bus delivers it to the
event handler (``controlplane.service.events``), here as on every other replica.
``role`` is the caller's (the REST token's); internal callers act as admin; ``None`` is the
rollout guard acting for the policy's owner. ``team`` is the token's team (docs/security.md
#teams); ``None`` (internal callers, the guard) acts for the owner team.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from controlplane.cluster.ports import ClusterPorts, VersionWaiters
from controlplane.config import Settings
from controlplane.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unavailable,
    ValidationFailed,
)
from controlplane.intake.authority import (
    acting_role,
    acting_team,
    check_key,
    check_locks,
    check_owner,
    check_transfer,
)
from controlplane.intake.bus import PolicyBus, PolicyEvent, rfc3339
from controlplane.intake.store import PolicyStore
from controlplane.intake.team_locks import key_refusal, lock_refusal
from controlplane.roles import Role, Team, canonical_team, owner_refusal
from controlplane.rollouts.waves import Waves, wave_status
from policies.model import Policy, parse_policy
from sessions.clock import Clock

__all__ = ["Publisher"]

log = logging.getLogger(__name__)

# a publish without a version that loses a race for the next one (another replica took it)
# takes the next free version again, as a publish on one replica would: last writer wins
PUBLISH_ATTEMPTS = 3


class Publisher:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        store: PolicyStore,
        bus: PolicyBus,
        cluster: ClusterPorts,
        waiters: VersionWaiters,
        waves: Waves,
        draining: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._store = store
        self._bus = bus
        self._cluster = cluster
        self._waiters = waiters
        self._waves = waves
        self._draining = draining

    async def publish_policy(
        self, doc: Mapping[str, Any], *, actor: str, role: Role = Role.ADMIN,
        team: Team | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        self._require_accepting()
        parsed = parse_policy(doc)
        check_owner(self._store, parsed.id, role, "publish", team)
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                return await self._publish_once(parsed, actor=actor, role=role, team=team)
            except Conflict as exc:  # another replica published this id first
                if parsed.version is not None or exc.code != "version_conflict":
                    raise
                last = exc
        lost = f"{PUBLISH_ATTEMPTS} attempts lost to concurrent publishes of this policy"
        raise Conflict(f"{last.message} ({lost})", details=last.details) from last

    async def _publish_once(
        self, parsed: Policy, *, actor: str, role: Role, team: Team | None
    ) -> dict[str, Any]:
        """One attempt; without a version in the document it takes the next one free."""
        same = self._store.unchanged(parsed)
        if same is not None:  # identical to the current version: no new version
            return {"id": same.policy.id, "version": same.version, "unchanged": True,
                    "digest": same.policy.digest, "warnings": []}  # fmt: skip
        self._require_reason(parsed, parsed.reason, "publish")
        policy = self._store.prepare(parsed)
        assert policy.version is not None
        stored = await self._stored_version(policy.id)
        if stored >= policy.version:  # this replica has not applied the latest version yet
            if parsed.version is not None:
                raise Conflict(
                    f"policy {policy.id!r} version {policy.version} is not above the current "
                    f"version {stored}; publish version {stored + 1} or omit version",
                    details={"id": policy.id, "version": policy.version, "current": stored},
                )
            policy = policy.with_version(stored + 1)
        check_key(self._store, policy, role, team)
        warnings = check_locks(self._store, policy, role, team)
        result = await self.publish(policy, "policy.published", actor, "policy", role, team)
        result["warnings"] = warnings
        return result

    async def retire_policy(
        self,
        policy_id: str,
        *,
        actor: str,
        role: Role | None = Role.ADMIN,
        reason: str | None = None,
        team: Team | None = None,
    ) -> dict[str, Any]:
        """``role`` None: the rollout guard, acting for the policy's owner."""
        self._require_accepting()
        latest = self._store.latest(policy_id)
        role = acting_role(self._store, policy_id, role, "retire", latest.policy, team)
        if latest.retired:
            raise Conflict(f"policy {policy_id!r} is already retired", code="already_retired")
        self._require_reason(latest.policy, reason, "retire")
        version = max(latest.version, await self._stored_version(policy_id)) + 1
        policy = latest.policy.with_version(version).with_reason(reason)
        return await self.publish(policy, "policy.retired", actor, "retire", role, team)

    async def rollback_policy(
        self,
        policy_id: str,
        to_version: int,
        *,
        actor: str,
        role: Role | None = Role.ADMIN,
        reason: str | None = None,
        team: Team | None = None,
    ) -> dict[str, Any]:
        """``role`` None: the rollout guard, acting for the policy's owner (no lock check)."""
        self._require_accepting()
        target = self._store.version(policy_id, to_version)
        guard = role is None
        role = acting_role(self._store, policy_id, role, "roll back", target.policy, team)
        if target.retired:  # a state of the policy, not a malformed request: 409
            raise Conflict(
                f"version {to_version} of {policy_id!r} is a retirement; roll back to a "
                "published version",
                code="not_a_published_version",
            )
        self._require_reason(self._store.latest(policy_id).policy, reason, "rollback")
        self._require_reason(target.policy, reason, "rollback")
        current = max(self._store.current_version(policy_id),
                      await self._stored_version(policy_id))  # fmt: skip
        policy = target.policy.with_version(current + 1).with_reason(reason)
        if not guard:
            check_key(self._store, policy, role, team)
        warnings = [] if guard else check_locks(self._store, policy, role, team)
        result = await self.publish(policy, "policy.published", actor, "rollback", role, team)
        result["rolled_back_to"] = to_version
        result["warnings"] = warnings
        return result

    async def guard_rollback(self, policy_id: str, to_version: int | None) -> None:
        """The rollout guard's automatic rollback (``Halts``), or retirement when the policy
        has no earlier good version."""
        actor = f"guard:{self._settings.node_id}"
        reason = "rollout guard: failures over the limit"
        if to_version is None:  # no earlier good version: the policy stops applying
            await self.retire_policy(policy_id, actor=actor, role=None, reason=reason)
        else:
            await self.rollback_policy(policy_id, to_version, actor=actor, role=None,
                                       reason=reason)  # fmt: skip

    async def wave_action(
        self, policy_id: str, action: str, *, actor: str, role: Role = Role.ADMIN,
        team: Team | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """``promote`` / ``pause`` / ``resume`` the current version's waves (docs/policies.md
        #waves); experimenters only on experiment policies their team owns, like a rollback."""
        self._require_accepting()
        latest = self._store.latest(policy_id)
        acting_role(self._store, policy_id, role, action, latest.policy, team)
        await self._waves.by_hand(policy_id, action, actor=actor, role=role,
                                  team=acting_team(self._store, policy_id, team))  # fmt: skip
        return {"id": policy_id, "version": latest.version,
                "waves": wave_status(self._store, policy_id)}  # fmt: skip

    async def transfer_policy(
        self, policy_id: str, team: str, *, actor: str, role: Role, reason: str
    ) -> dict[str, Any]:
        """An admin hands ``policy_id`` (its locks, its experiment key) to ``team``: its
        current document again as the next version (cause ``transfer``; retired stays
        retired), the owner role unchanged (docs/security.md#transfers)."""
        self._require_accepting()
        if role < Role.ADMIN:  # the route requires admin; internal callers must too
            raise Forbidden("transferring a policy to another team needs role admin",
                            details={"required_role": "admin", "role": role.label})  # fmt: skip
        try:
            team = canonical_team(team)
        except ValueError as exc:
            raise BadRequest(f'"team": {exc}', details={"field": "team"}) from None
        latest = self._store.latest(policy_id)
        version = max(latest.version, await self._stored_version(policy_id)) + 1
        policy = latest.policy.with_version(version).with_reason(reason)
        check_transfer(self._store, policy, team)
        before = latest.owner_team
        kind = "policy.retired" if latest.retired else "policy.published"
        result = await self.publish(policy, kind, actor, "transfer", role, Team(team))
        if self._store.owner_team(policy_id) != team:  # refused here (a race): say why
            check_transfer(self._store, policy, team)
            raise Conflict(f"policy {policy_id!r} was changed while transferring; try again",
                           details={"id": policy_id, "team": team})  # fmt: skip
        log.warning("policy %s v%d transferred from team %r to team %r (role %s) by %s: %s",
                    policy_id, version, before, team, latest.owner_role, actor, reason)  # fmt: skip
        return result

    async def publish(
        self, policy: Policy, kind: str, actor: str, cause: str, role: Role,
        team: Team | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Put one event on the bus and wait (bounded) until this replica applied it."""
        event = PolicyEvent(
            kind,  # type: ignore[arg-type]
            policy.document(),
            actor,
            rfc3339(self._clock.now()),
            cause=cause,
            role=role.label,
            team=acting_team(self._store, policy.id, team),
        )
        owner = self._store.owner_role(policy.id), self._store.owner_team(policy.id)
        await self._bus.publish(event)
        assert policy.version is not None
        await self._applied_here(policy.id, policy.version, role, event.team)
        with contextlib.suppress(NotFound):  # not applied here yet: nothing to compare
            if self._store.version(policy.id, policy.version).event.event_id != event.event_id:
                raise Conflict(
                    f"policy {policy.id!r} version {policy.version} was taken by a concurrent "
                    "publish; publish again",
                    details={"id": policy.id, "version": policy.version},
                )
        if self._store.current_version(policy.id) < policy.version:
            # a higher role took the id over, or another team locked a field this version
            # sets, while this publish was in flight: every replica's store refuses the event
            # (docs/policies.md#ownership, docs/security.md#locks-and-teams)
            check_owner(self._store, policy.id, role, "publish", team)
            if key_refusal(self._store, event, policy) is not None:
                check_key(self._store, policy, role, team)  # 403 naming the key's policy
            if lock_refusal(self._store, event, policy) is not None:
                check_locks(self._store, policy, role, team)  # 409 naming the lock's holder
        result = {"id": policy.id, "version": policy.version, "event_id": event.event_id,
                  "type": kind, "unchanged": False, "digest": policy.digest}  # fmt: skip
        return result | self._owner_change(policy.id, policy.version, owner, actor, cause)

    def _owner_change(
        self, policy_id: str, version: int, before: tuple[Role | None, str | None], actor: str,
        cause: str,
    ) -> dict[str, Any]:  # fmt: skip
        """No silent takeover (docs/security.md#transfers): when this version changed the
        policy's owner (a higher role's publish, rollback or retirement; a transfer), the
        answer says so and the replica logs it; {} when the owner stayed (or it is new)."""
        role, team = self._store.owner_role(policy_id), self._store.owner_team(policy_id)
        was_role, was_team = before
        if was_role is None or role is None or (role, team) == before:
            return {}
        if cause != "transfer":  # (transfer_policy logs its own line, with the reason)
            log.warning("policy %s v%d taken over by %s: owner role %s team %r, was role %s "
                        "team %r", policy_id, version, actor, role, team, was_role,
                        was_team)  # fmt: skip
        return {"owner_role": role.label, "owner_team": team,
                "previous_owner_role": was_role.label, "previous_owner_team": was_team}  # fmt: skip

    def _require_accepting(self) -> None:
        if self._draining():
            raise Unavailable("the control plane is shutting down", code="draining")

    def _require_reason(self, policy: Policy, reason: str | None, action: str) -> None:
        """With ``require_reason_for_locks``, a change to a policy with ``lock`` needs one."""
        if self._settings.require_reason_for_locks and policy.lock and not reason:
            where = "a top-level 'reason'" if action == "publish" else "a reason"
            raise ValidationFailed(
                f"policy {policy.id!r} locks {', '.join(policy.lock)}: {action} needs {where} "
                "(this deployment requires one for policies with lock)",
                code="reason_required",
                details={"id": policy.id, "action": action, "lock": list(policy.lock)},
            )

    async def _stored_version(self, policy_id: str) -> int:
        """The last version any replica stored (0 without a shared policy stream)."""
        if self._cluster.versions is None:
            return 0
        return await self._cluster.versions.last_version(policy_id) or 0

    async def _applied_here(
        self, policy_id: str, version: int, role: Role, team: str | None
    ) -> None:
        """Read-your-writes: wait (bounded) until this replica applied what it published (not
        for an event the store refuses for its role or team: a takeover raced the owner
        check)."""
        owner, owner_team = self._store.owner_role(policy_id), self._store.owner_team(policy_id)
        if owner_refusal(role, team, owner, owner_team) is not None:
            return
        if self._store.current_version(policy_id) < version:
            wait_s = self._settings.publish_apply_wait_s
            if not await self._waiters.wait(policy_id, version, wait_s):
                log.info("policy %s v%d stored but not applied here within %.1fs",
                         policy_id, version, wait_s)  # fmt: skip
