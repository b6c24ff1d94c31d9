"""Composition root: builds the service from one frozen Settings object."""

from __future__ import annotations

from aiohttp import web

from controlplane.config import Settings

__all__ = ["build_app"]


def build_app(settings: Settings) -> web.Application:
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": settings.node_id})

    app.router.add_get("/healthz", healthz)
    return app
