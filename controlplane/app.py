"""Composition root: builds the whole service from one frozen Settings object.

Embedded defaults (no NATS/Redis URL): in-memory registry, in-process policy bus, JSONL audit
files under ``<data_dir>/audit``. Distributed mode (``nats_url``, optionally ``redis_url``;
``controlplane.cluster.wiring``): JetStream policy bus, the same JSONL files as write-ahead log
shipped to ``CP_AUDIT``, Redis registry, owner routing. Nothing here is a module-level global.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from typing import Final

import aiohttp
from aiohttp import web

from controlplane.api.limits import ReadLimits
from controlplane.api.routes import add_routes
from controlplane.audit.keys import checkpointing
from controlplane.cluster.ports import ClusterPorts
from controlplane.cluster.wiring import Distributed, build_registry
from controlplane.config import Settings
from controlplane.console import add_console_routes
from controlplane.edges.admission import ConnectionSlots
from controlplane.edges.control_channel import ControlChannel
from controlplane.edges.gateway import Gateway
from controlplane.edges.token_proxy import TokenProxy
from controlplane.health import versionlog_problem
from controlplane.intake.bus import InProcessBus, PolicyBus
from controlplane.intake.files import PolicyFiles
from controlplane.metrics import Metrics, PushMetrics
from controlplane.service.plane import ControlPlane
from sessions.clock import Clock, SystemClock
from sessions.exposures import FileExposureStore
from sessions.redis_rates import RedisBuckets
from sessions.redis_tokens import RedisTokenLabels
from sessions.versionlog.file import FileVersionLog

__all__ = ["DRAIN_ON_SIGNALS", "SERVICE", "build_app"]

log = logging.getLogger(__name__)

SERVICE: Final = web.AppKey("controlplane.service.plane", ControlPlane)
GATEWAY: Final = web.AppKey("controlplane.edges.gateway", Gateway)
CONTROL: Final = web.AppKey("controlplane.control", ControlChannel)
# set by `controlplane serve`: the drain takes over SIGINT / SIGTERM (a second one closes the
# remaining sessions at once, a third one stops the process)
DRAIN_ON_SIGNALS: Final = web.AppKey("controlplane.drain_on_signals", bool)
DRAIN_POLL_S = 0.1
DRAIN_REPORT_S = 5.0
RESTART_CLOSE_CODE = 1012
MAX_REQUEST_LINE: Final = 64 * 1024


def build_app(settings: Settings, *, clock: Clock | None = None) -> web.Application:
    """Raises ``SettingsError`` for a combination of settings that cannot work."""
    settings.check()
    clock = clock or SystemClock()
    # a request line as long as the longest query /openapi.json allows (a 4096-character
    # selector of 4-byte characters is 49 KiB URL-encoded); aiohttp's default is 8190 bytes
    app = web.Application(
        client_max_size=2 * 1024 * 1024, handler_args={"max_line_size": MAX_REQUEST_LINE}
    )
    metrics = Metrics()
    registry = build_registry(settings, clock)
    versionlog = FileVersionLog(settings.data_dir / "audit", clock,
                                checkpointing=checkpointing(settings),
                                spill_dir=settings.audit_spill_dir)  # fmt: skip
    dist = None
    bus: PolicyBus = InProcessBus()
    if settings.nats_url:
        dist = Distributed.build(
            settings, clock=clock, metrics=metrics, versionlog=versionlog, registry=registry
        )
        bus = dist.bus
    elif settings.policy_signing_key is not None or settings.policy_signing_key_file is not None:
        log.warning("policy signing key set without --nats-url: nothing to verify (policies "
                    "come only from this replica's REST API)")  # fmt: skip
    ports = dist.ports if dist is not None else ClusterPorts()
    ports.probes["audit_log"] = lambda: versionlog_problem(versionlog, clock)
    # embedded mode keeps policies under the data directory (CP_POLICY does it with NATS)
    files = None if dist is not None else PolicyFiles(settings.data_dir / "policies")
    if ports.exposures is None:  # embedded (or NATS without Redis): under the data directory
        ports.exposures = FileExposureStore(settings.data_dir / "experiments" / "exposures.jsonl")
    service = ControlPlane(
        settings, clock=clock, metrics=metrics, registry=registry, versionlog=versionlog,
        bus=bus, cluster=ports, policy_files=files,
        push_observer=PushMetrics(metrics),  # the engine's metrics, as callbacks
    )  # fmt: skip
    if dist is not None and dist.upkeep is not None:
        dist.upkeep.counts = service.rollout_counts
        dist.upkeep.on_rejoin = service.engine.resync_registry
    app[SERVICE] = service
    # expensive-read buckets: shared by every replica through Redis (docs/security.md#rate-limits)
    buckets = None
    if dist is not None and settings.redis_url:
        buckets = RedisBuckets(settings.redis_url, prefix=settings.redis_prefix)
    limits = ReadLimits(clock, burst=settings.expensive_read_burst,
                        rate_per_s=settings.expensive_read_rate_per_s,
                        counted=lambda route: metrics.rate_limited.labels(route).inc(),
                        shared=buckets, fallback=metrics.rate_limit_fallback.inc)  # fmt: skip
    add_routes(app, service, settings, limits=limits)
    add_console_routes(app)  # the web console at /ui/ (docs/console.md)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": settings.node_id})

    async def metrics_view(_: web.Request) -> web.Response:
        service.engine.flush_metrics()
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)

    http_holder: list[aiohttp.ClientSession] = []
    closed: list[bool] = []
    slots = ConnectionSlots(settings.max_connections)  # one cap over both kinds of socket
    # minted tokens' credential labels: shared through Redis so every replica honours them
    token_labels = None
    if settings.redis_url and settings.credential_labels_file is not None:
        token_labels = RedisTokenLabels(settings.redis_url, prefix=settings.redis_prefix)
    gateway = Gateway(service, http=None, slots=slots, token_labels=token_labels)
    control = ControlChannel(service, slots)
    gateway.add_routes(app)
    TokenProxy(gateway).add_routes(app)
    control.add_routes(app)
    app[GATEWAY] = gateway
    app[CONTROL] = control

    async def on_startup(_: web.Application) -> None:
        try:
            # one upstream socket per gateway session: no pool limit (the default is 100)
            http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=settings.upstream_connect_timeout_s
                ),
            )
            http_holder.append(http)
            gateway.http = http
            if dist is not None:
                await dist.connect()  # the bus replays CP_POLICY in service.start()
            await service.start()
            if dist is not None:
                await dist.start()
        except BaseException:
            await on_cleanup(app)  # aiohttp does not clean up after a failed start
            raise
        # Start-up objects live for the whole process: move them out of the collector's view
        # so full collections stay short with thousands of live sockets (DESIGN.md §6).
        gc.collect()
        gc.freeze()

    async def on_shutdown(_: web.Application) -> None:
        await drain(service, gateway, control, settings.shutdown_grace_s,
                    on_signals=app.get(DRAIN_ON_SIGNALS, False))  # fmt: skip

    async def on_cleanup(_: web.Application) -> None:
        if closed:
            return
        closed.append(True)
        try:
            if dist is not None:
                await dist.stop_serving()
            await service.close()
        finally:
            try:
                if dist is not None:
                    await dist.close()  # after the log's last flush: the last ship
            finally:
                await registry.close()  # after the last ship's claim fence
            for http in http_holder:
                await http.close()
            if token_labels is not None:
                with contextlib.suppress(Exception):
                    await token_labels.close()
            if buckets is not None:
                with contextlib.suppress(Exception):
                    await buckets.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


async def drain(
    service: ControlPlane,
    gateway: Gateway,
    control: ControlChannel,
    grace_s: float,
    *,
    on_signals: bool = False,
) -> None:
    """Not ready, accept no new sessions, let live ones finish up to ``grace_s``, then close
    the rest with 1012 (service restart). The audit log is flushed on close. Says what it
    waits for and how long; with ``on_signals``, a second SIGINT / SIGTERM ends the wait (the
    sessions are closed now) and a third one stops the process at once."""
    service.draining = True
    service.metrics.ready.set(0)
    loop = asyncio.get_running_loop()
    hurry = asyncio.Event()
    if on_signals:
        _second_signal_closes_now(loop, hurry, service)
    deadline = loop.time() + grace_s
    live = len(service.engine.live)
    if live:
        log.warning(
            "draining: not ready, refusing new sessions; waiting up to %.0fs for %d live "
            "session(s) to end, then closing the rest (1012 service restart)%s", grace_s, live,
            "; Ctrl-C / SIGTERM again closes them now" if on_signals else "",
        )  # fmt: skip
    else:
        log.warning("draining: no live sessions, stopping")
    report = loop.time() + DRAIN_REPORT_S
    while service.engine.live and loop.time() < deadline and not hurry.is_set():
        await asyncio.sleep(DRAIN_POLL_S)
        if loop.time() >= report and service.engine.live:
            report += DRAIN_REPORT_S
            log.warning("draining: %d live session(s), %.0fs left of the grace",
                        len(service.engine.live), max(0.0, deadline - loop.time()))  # fmt: skip
    remaining = list(gateway.connections) + list(control.connections)
    if remaining:
        why = "on a second signal" if hurry.is_set() else f"after the {grace_s:.0f}s grace"
        log.warning("closing %d session(s) still open %s", len(remaining), why)
    for ws in remaining:
        with contextlib.suppress(Exception):
            await ws.close(code=RESTART_CLOSE_CODE, message=b"control plane restarting")
    try:
        await service.versionlog.flush()
        log.warning("drained: audit log flushed")
    except Exception as exc:  # (the disk failing: the log's close says what it could not)
        log.error("drained: the audit log could not be flushed: %s", exc)


def _second_signal_closes_now(
    loop: asyncio.AbstractEventLoop, hurry: asyncio.Event, service: ControlPlane
) -> None:
    def second() -> None:
        log.warning("second signal: closing the %d live session(s) now; a third one stops "
                    "the process at once", len(service.engine.live))  # fmt: skip
        hurry.set()
        for sig in (signal.SIGINT, signal.SIGTERM):  # back to the defaults: the third kills
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, second)
