"""Composition root: builds the service from one frozen Settings object."""

from __future__ import annotations

from aiohttp import web

from controlplane.config import Settings
from controlplane.metrics import Metrics

__all__ = ["build_app"]


def build_app(settings: Settings) -> web.Application:
    app = web.Application()
    metrics = Metrics()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": settings.node_id})

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    return app
