"""Distributed-mode wiring of one replica (used only by the composition root, ``app.py``).

With ``nats_url``: the JetStream policy bus (``CP_POLICY``), the audit shipper tailing the
local JSONL log into ``CP_AUDIT``, and the audit stream as reader of other replicas' logs.
With ``redis_url`` too: the shared Redis registry, owner routing over NATS request/reply,
heartbeats and node expiry, and rollout counts shared through Redis (docs/distributed.md).

Lifecycle, driven by app.py around ``ControlPlane.start/close``::

    connect()        NATS, before the service starts (the bus replays on start)
    start()          after the service started: shipper, owner requests, upkeep
    stop_serving()   before the service closes: no more owner requests or heartbeats
    close()          after the service closed (its log is flushed): last ship, NATS closed
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from controlplane.audit.shipper import AuditShipper
from controlplane.cluster.nats_audit import NatsAuditStream
from controlplane.cluster.nats_bus import NatsConnection, NatsPolicyBus
from controlplane.cluster.nats_rpc import NatsRpc
from controlplane.cluster.ports import ClusterPorts, ClusterUpkeep, StatsRollout
from controlplane.cluster.routing import OwnerRouter
from controlplane.config import Settings
from controlplane.health import ShippingWatch
from controlplane.metrics import Metrics
from sessions.clock import Clock
from sessions.redis_exposures import RedisExposureStore
from sessions.redis_nodestats import RedisNodeStats
from sessions.redis_nonces import RedisNonces
from sessions.redis_registry import RedisRegistry
from sessions.registry import MemoryRegistry, Registry
from sessions.versionlog.core import VersionLog

__all__ = ["ClaimFence", "Distributed", "build_registry", "cursor_path"]

CURSOR_FILE = "audit-shipped.json"
DAY_S = 86_400.0


def build_registry(settings: Settings, clock: Clock) -> Registry:
    if settings.redis_url:
        return RedisRegistry(
            settings.redis_url, clock, ttl_s=settings.session_ttl_s, prefix=settings.redis_prefix,
            claim_ttl_s=settings.audit_max_age_days * DAY_S,  # the trail's lifetime
            pool_size=settings.redis_pool_size, pool_timeout_s=settings.redis_pool_timeout_s,
        )  # fmt: skip
    return MemoryRegistry(clock, ttl_s=settings.session_ttl_s)


class ClaimFence:
    """The audit shipper's fence (``audit.shipper.AuditFence``): the ids whose claim another
    node holds in the registry. Asked once per chunk the shipper reads (one MGET); a registry
    failure fails the chunk, which is retried (the lines wait on disk)."""

    def __init__(self, registry: Registry, node: str) -> None:
        self._registry = registry
        self._node = node

    async def foreign(self, session_ids: Collection[str]) -> set[str]:
        ids = list(session_ids)
        holders = await self._registry.holders(ids)
        return {sid for sid, h in zip(ids, holders, strict=True) if h not in (None, self._node)}


def cursor_path(settings: Settings) -> Path:
    """Where the shipper remembers how far the local log is shipped (next to ``audit/``)."""
    return settings.data_dir / CURSOR_FILE


@dataclass
class Distributed:
    nats: NatsConnection
    bus: NatsPolicyBus
    audit: NatsAuditStream
    shipper: AuditShipper
    router: OwnerRouter | None
    upkeep: ClusterUpkeep | None
    ports: ClusterPorts

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        clock: Clock,
        metrics: Metrics,
        versionlog: VersionLog,
        registry: Registry,
    ) -> Distributed:
        """The pieces; ``upkeep.counts`` / ``upkeep.on_rejoin`` are set once the service
        exists (app.py)."""
        node = settings.node_id
        nats = NatsConnection(settings, name=f"controlplane {node}", clock=clock)
        bus = NatsPolicyBus(nats, node_id=node, metrics=metrics, clock=clock)
        audit = NatsAuditStream(nats)
        shipper = AuditShipper(
            settings.data_dir / "audit", cursor_path(settings), audit,
            flush=versionlog.flush, metrics=metrics, interval_s=settings.audit_ship_interval_s,
            clock=clock, fence=ClaimFence(registry, node) if settings.redis_url else None,
        )  # fmt: skip
        ports = ClusterPorts(versions=bus, audit=audit)
        ports.checks["policies_replayed"] = lambda: bus.replayed
        ports.probes["policy_feed"] = bus.problem
        ports.probes["nats"] = nats.problem
        ports.probes["audit_shipping"] = ShippingWatch(
            shipper, clock, settings.readiness_stall_s
        ).problem
        ports.facts["nats_connected"] = lambda: nats.connected
        ports.facts["audit_backlog_bytes"] = lambda: shipper.backlog_bytes
        ports.facts["policy_events_pending"] = lambda: bus.watch.pending
        router = upkeep = None
        if settings.redis_url:
            ports.exposures = RedisExposureStore(settings.redis_url, prefix=settings.redis_prefix)
            nonces = RedisNonces(settings.redis_url, prefix=settings.redis_prefix)
            router = ports.router = OwnerRouter(NatsRpc(nats, nonces=nonces), node)
            stats = RedisNodeStats(
                settings.redis_url, ttl_s=settings.session_ttl_s, prefix=settings.redis_prefix,
                pool_size=settings.redis_pool_size, pool_timeout_s=settings.redis_pool_timeout_s,
            )  # fmt: skip
            ports.peers = StatsRollout(stats, node)
            upkeep = ClusterUpkeep(
                node_id=node, registry=registry, clock=clock,
                heartbeat_interval_s=settings.heartbeat_interval_s, stats=stats,
                rollout_interval_s=settings.rollout_sync_interval_s,
                ttl_s=settings.session_ttl_s,
            )  # fmt: skip
            ports.checks["registry"] = lambda: upkeep is not None and upkeep.redis_ok
        return cls(nats, bus, audit, shipper, router, upkeep, ports)

    async def connect(self) -> None:
        await self.nats.connect()

    async def start(self) -> None:
        await self.audit.ensure()
        await self.shipper.start()
        if self.router is not None:
            await self.router.start()
        if self.upkeep is not None:
            await self.upkeep.start()

    async def stop_serving(self) -> None:
        if self.router is not None:
            await self.router.close()
        if self.upkeep is not None:
            await self.upkeep.close()

    async def close(self) -> None:
        try:
            await self.shipper.close(final_timeout_s=self.nats.settings.nats_request_timeout_s)
        finally:
            await self.nats.close()
