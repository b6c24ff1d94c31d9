"""Policy, rollout and experiment queries (read-only; REST ``GET``s and preview)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controlplane.cluster.ports import ClusterPorts
from controlplane.errors import BadRequest, NotFound
from controlplane.intake.authority import acting_team, check_key, check_locks, check_owner
from controlplane.intake.store import PolicyStore
from controlplane.intake.team_locks import lock_team, owner_after
from controlplane.push.engine import PushEngine
from controlplane.roles import Role, Team
from controlplane.rollouts.assignments import AssignmentBook
from controlplane.rollouts.counts import local_counts, rollout_body
from controlplane.rollouts.experiments import ExperimentBook, merge_exposures
from controlplane.rollouts.halts import Halts
from controlplane.rollouts.preview import preview
from controlplane.rollouts.waves import wave_status
from controlplane.service.backend import backend
from policies.model import Policy, parse_policy

__all__ = ["PolicyQueries"]


class PolicyQueries:
    def __init__(
        self,
        *,
        store: PolicyStore,
        engine: PushEngine,
        halts: Halts,
        cluster: ClusterPorts,
        experiments: ExperimentBook,
        assignments: AssignmentBook,
    ) -> None:
        self._store = store
        self._engine = engine
        self._halts = halts
        self._cluster = cluster
        self._experiments = experiments
        self._assignments = assignments

    # -- policies ------------------------------------------------------------------------
    def list_policies(self, *, include_retired: bool = False) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self._store.records() if include_retired or not r.retired]

    def get_policy(self, policy_id: str) -> dict[str, Any]:
        return self._store.latest(policy_id).as_dict()

    def policy_versions(
        self, policy_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Change records, oldest first, ``limit`` at a time; the cursor is the last version
        of the previous page."""
        if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 16):
            raise BadRequest("query parameter 'cursor' is not a cursor returned by this endpoint")
        after = 0 if cursor is None else int(cursor)
        records = [r for r in self._store.changes(policy_id) if r["version"] > after]
        page = records[:limit]
        return page, str(page[-1]["version"]) if len(records) > limit else None

    async def preview_policy(
        self, doc: Mapping[str, Any], *, role: Role = Role.ADMIN, team: Team | None = None
    ) -> dict[str, Any]:
        """What publishing ``doc`` as ``role`` of ``team`` would do: the same ownership (403)
        and lock (409) checks, then the live sessions it would change, locks winning."""
        policy = parse_policy(doc)
        check_owner(self._store, policy.id, role, "publish", team)
        policy = policy.with_version(self._store.current_version(policy.id) + 1)
        check_key(self._store, policy, role, team)
        warnings = check_locks(self._store, policy, role, team)
        rank, owner_team = owner_after(self._store, policy.id, role,
                                       acting_team(self._store, policy.id, team))  # fmt: skip
        policy = policy.with_rank(int(rank), lock_team(rank, owner_team))
        policies = [p for p in self._store.active() if p.id != policy.id] + [policy]
        answer = preview(policy, policies, self._engine.live.values(), self._engine.resolve)
        answer["warnings"] = warnings
        return answer

    # -- rollouts ------------------------------------------------------------------------
    async def rollout_status(self, policy_id: str) -> dict[str, Any]:
        latest = self._store.latest(policy_id)
        parts = self._halts.local_rows(policy_id)
        if self._cluster.peers is not None:
            with backend("rollout counts of the other replicas"):
                parts += await self._cluster.peers.rollout_rows(policy_id)
        body = rollout_body(policy_id, latest.version, latest.retired, parts)
        body.update(self._halts.status(policy_id))  # state, halt, guard (issue #8)
        body["waves"] = wave_status(self._store, policy_id)  # progressive waves (issue #21)
        return body

    def rollout_counts(self) -> dict[str, list[dict[str, Any]]]:
        """This replica's rollout rows per policy (what it publishes for the others)."""
        return self._halts.with_failures(local_counts(self._engine.live.values()))

    # -- experiments ---------------------------------------------------------------------
    def _experiment_policy(self, key: str) -> Policy:
        """The active policy running experiment ``key``, else the last one that did."""
        found: Policy | None = None
        for record in self._store.records():
            exp = record.policy.experiment
            if exp is not None and exp.key == key:
                active = self._store.active_policy(record.policy.id)
                active_exp = None if active is None else active.experiment
                if active is not None and active_exp is not None and active_exp.key == key:
                    return active
                found = found or record.policy
        if found is None:
            raise NotFound(f"no experiment {key!r}", code="experiment_not_found")
        return found

    async def experiment_summary(self, key: str) -> dict[str, Any]:
        return await self._experiments.summary(self._experiment_policy(key))

    async def experiment_timeline(self, key: str) -> dict[str, Any]:
        return await self._experiments.timeline(self._experiment_policy(key))

    async def experiment_assignments(self, key: str) -> list[dict[str, Any]]:
        """Every assignment of experiment ``key`` over its whole history: live and ended
        sessions, and sessions that left it (exposure rows), in (session id, iteration) order."""
        policy = self._experiment_policy(key)
        policies = {p.id: p for p in self._store.active()}
        rows = self._assignments.rows(key, self._engine.live.values(), policies)
        return merge_exposures(rows, await self._experiments.exposures(key), policy)
