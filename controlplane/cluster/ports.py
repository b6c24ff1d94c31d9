"""What one replica does for the cluster, and what it needs from the others.

``ClusterPorts`` is everything ``ControlPlane`` may ask of other replicas: the authoritative
last version of a policy (the policy stream), the owner router, the durable audit reader, the
other replicas' rollout counts, and extra readiness checks. Every port is optional: embedded
mode has none, and each works without the others (docs/distributed.md, modes).

``ClusterUpkeep`` (shared registry only) owns one task that, on its own cadence:
- heartbeats this node (``registry.heartbeat``) every ``heartbeat_interval_s`` (< TTL);
- ends the sessions of nodes whose heartbeat lapsed (``expire_dead_nodes``, cause
  ``node_lost``); every replica runs it, the registry's transactions make that safe;
- publishes this replica's rollout counts (one hash per node with the TTL) every
  ``rollout_sync_interval_s``, so any replica's rollout status sums every replica's sessions.
On start it ends sessions the registry still lists for this node id from a previous run
(cause ``node_restarted``): a restarted replica holds no socket, and its fresh heartbeats
would otherwise keep them live forever. Redis failures only flip ``redis_ok`` (readiness);
the push path never waits for Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from controlplane.audit.reader import AuditReader
from controlplane.cluster.routing import OwnerRouter
from controlplane.tasks import raise_if_cancelled, stop_task
from sessions.clock import Clock
from sessions.exposures import ExposureStore
from sessions.registry import Registry

__all__ = [
    "NODE_RESTARTED",
    "ClusterPorts",
    "ClusterUpkeep",
    "NodeStats",
    "RolloutPeers",
    "StatsRollout",
    "VersionAuthority",
    "VersionWaiters",
]

log = logging.getLogger(__name__)

NODE_RESTARTED: Final = "node_restarted"
ROLLOUT_DOC_PREFIX: Final = "rollout:"
_CLEANUP_PAGE: Final = 500


class VersionAuthority(Protocol):
    async def last_version(self, policy_id: str) -> int | None:
        """The last version stored for the policy by any replica (None: none known)."""
        ...


class RolloutPeers(Protocol):
    """The other replicas' published counts for one policy (their rows, node by node)."""

    async def rollout_rows(self, policy_id: str) -> list[list[dict[str, Any]]]: ...


class NodeStats(Protocol):
    async def publish(self, node: str, documents: dict[str, Any]) -> None: ...

    async def collect(self, name: str, *, exclude: str | None = None) -> dict[str, Any]: ...

    async def close(self) -> None: ...


@dataclass
class ClusterPorts:
    """Optional dependencies on the other replicas (module docstring)."""

    versions: VersionAuthority | None = None
    router: OwnerRouter | None = None
    audit: AuditReader | None = None
    peers: RolloutPeers | None = None
    exposures: ExposureStore | None = None  # experiment exposures shared by the replicas
    checks: dict[str, Callable[[], bool]] = field(default_factory=dict)  # gate readiness
    # gate readiness with a reason: None when healthy, else why (controlplane.health)
    probes: dict[str, Callable[[], str | None]] = field(default_factory=dict)
    facts: dict[str, Callable[[], Any]] = field(default_factory=dict)  # shown, not gating


class VersionWaiters:
    """Callers waiting until this replica applied a policy version (read-your-writes after a
    publish whose event comes back through the stream)."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}

    async def wait(self, policy_id: str, version: int, at_most_s: float) -> bool:
        """True once ``reached`` reported ``version`` or later; False after ``at_most_s``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (version, future)
        self._waiting.setdefault(policy_id, []).append(entry)
        try:
            async with asyncio.timeout(at_most_s):
                await future
            return True
        except TimeoutError:
            return False
        finally:
            waiting = self._waiting.get(policy_id, [])
            if entry in waiting:
                waiting.remove(entry)
            if not waiting:
                self._waiting.pop(policy_id, None)

    def reached(self, policy_id: str, current: int) -> None:
        for version, future in self._waiting.get(policy_id, ()):
            if version <= current and not future.done():
                future.set_result(None)


class StatsRollout:
    """``RolloutPeers`` over ``NodeStats``: the rows other replicas published."""

    def __init__(self, stats: NodeStats, node_id: str) -> None:
        self._stats = stats
        self._node = node_id

    async def rollout_rows(self, policy_id: str) -> list[list[dict[str, Any]]]:
        found = await self._stats.collect(ROLLOUT_DOC_PREFIX + policy_id, exclude=self._node)
        return [rows for _, rows in sorted(found.items()) if isinstance(rows, list)]


class ClusterUpkeep:
    def __init__(
        self,
        *,
        node_id: str,
        registry: Registry,
        clock: Clock,
        heartbeat_interval_s: float,
        stats: NodeStats | None = None,
        counts: Callable[[], dict[str, list[dict[str, Any]]]] | None = None,
        rollout_interval_s: float = 1.0,
        ttl_s: float = 30.0,
    ) -> None:
        self._node = node_id
        self._registry = registry
        self._clock = clock
        self._beat_every = heartbeat_interval_s
        self._stats = stats
        self.counts = counts  # this replica's rollout rows per policy (set by the wiring)
        # called when heartbeats resume after failing or after a gap of a TTL or more: other
        # replicas may have ended our sessions meanwhile, or Redis may have lost them
        self.on_rejoin: Callable[[], None] | None = None
        self._ttl_s = ttl_s
        self._last_ok: float | None = None
        self._rollout_every = rollout_interval_s
        self._task: asyncio.Task[None] | None = None
        self.redis_ok = False
        self.expired_total = 0

    async def start(self) -> None:
        try:
            ended = await self._end_previous_run()
            await self._registry.heartbeat(self._node)
            self.redis_ok = True
            self._last_ok = self._clock.monotonic()
            if ended:
                log.warning("ended %d session(s) left live by a previous run of node %s",
                            ended, self._node)  # fmt: skip
        except Exception as exc:
            log.warning("shared registry unreachable at start (not ready until it is): %s", exc)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster-upkeep")

    async def close(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        if self._stats is not None:
            with contextlib.suppress(Exception):
                await self._stats.publish(self._node, {})  # our counts leave with us
            with contextlib.suppress(Exception):
                await self._stats.close()

    async def _end_previous_run(self) -> int:
        ended = 0
        cursor: str | None = None
        while True:
            page = await self._registry.list(
                lambda s: s.node == self._node, limit=_CLEANUP_PAGE, cursor=cursor
            )
            for session in page.items:
                await self._registry.end(session.id, cause=NODE_RESTARTED, at=self._clock.now())
                ended += 1
            if page.next is None:
                return ended
            cursor = page.next

    async def _run(self) -> None:
        tick = min(self._beat_every, self._rollout_every)
        next_beat = next_rollout = self._clock.monotonic()
        while True:
            now = self._clock.monotonic()
            if now >= next_beat:
                next_beat = now + (self._beat_every if await self._beat() else min(1.0, tick))
            if self._stats is not None and self.counts is not None and now >= next_rollout:
                next_rollout = now + self._rollout_every
                await self._publish_counts()
            raise_if_cancelled()
            await asyncio.sleep(tick)

    async def _beat(self) -> bool:
        try:
            await self._registry.heartbeat(self._node)
            expired = await self._registry.expire_dead_nodes()
        except Exception as exc:
            if self.redis_ok:
                log.warning("shared registry unreachable: %s", exc)
            self.redis_ok = False
            return False
        now = self._clock.monotonic()
        gap = None if self._last_ok is None else now - self._last_ok
        if not self.redis_ok or (gap is not None and gap >= self._ttl_s):
            log.info("shared registry reachable again; re-syncing this replica's sessions")
            if self.on_rejoin is not None:
                self.on_rejoin()
        self.redis_ok = True
        self._last_ok = now
        if expired:
            self.expired_total += len(expired)
            log.warning("ended %d session(s) of lost replicas (no heartbeat for the TTL)",
                        len(expired))  # fmt: skip
        return True

    async def _publish_counts(self) -> None:
        assert self._stats is not None and self.counts is not None
        docs = {ROLLOUT_DOC_PREFIX + pid: rows for pid, rows in self.counts().items()}
        try:
            await self._stats.publish(self._node, docs)
        except Exception as exc:
            log.debug("rollout counts not published: %s", exc)
