"""The web console (issue #24): static pages at ``/ui/`` that read the REST API.

Every page is the same shell (``static/index.html``) plus ES modules; the browser router picks
the page from the path (``/ui/``, ``/ui/policies/{id}``, ``/ui/sessions/{id}``), and each page
polls the REST API about once a second (the policy page follows its rollout's server-sent event
stream, polling only while the stream is down) with the user's token (``sessionStorage``, or a
``#token=`` fragment). The assets ship inside the package (no CDN, no external fonts, no build
step). Nothing here authenticates: the pages hold no data, the REST API checks every call.
docs/console.md lists the pages and their ``data-testid`` attributes.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Final

from aiohttp import web

__all__ = ["STATIC_FILES", "add_console_routes"]

_CONTENT_TYPES: Final = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\.(?:js|css|svg)")
# the pages are same-origin only: no inline script, no third-party source of anything
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _load() -> dict[str, bytes]:
    root = resources.files(__package__).joinpath("static")
    return {entry.name: entry.read_bytes() for entry in root.iterdir() if entry.is_file()}


STATIC_FILES: Final = tuple(sorted(_load()))


def _headers(content_type: str) -> dict[str, str]:
    return {
        "Content-Type": f"{content_type}; charset=utf-8",
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def add_console_routes(app: web.Application) -> None:
    """Mount ``/ui/`` (every page path answers the shell), ``/ui/static/{name}`` and a
    redirect from ``/`` and ``/ui`` to ``/ui/``."""
    files = _load()
    shell = files["index.html"]

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=shell, headers=_headers("text/html"))

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = files.get(name) if _NAME.fullmatch(name) else None
        if body is None:
            raise web.HTTPNotFound(text=f"no console file {name[:64]!r}")
        suffix = name[name.rindex(".") :]
        return web.Response(body=body, headers=_headers(_CONTENT_TYPES[suffix]))

    async def to_console(_: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    app.router.add_get("/", to_console, name="console.root")
    app.router.add_get("/ui", to_console, name="console.bare")
    app.router.add_get("/ui/static/{name}", static, name="console.static")
    app.router.add_get("/ui/", page, name="console.overview")
    app.router.add_get("/ui/{page:(?:policies|sessions|experiments)/[^/]+}", page,
                       name="console.page")  # fmt: skip
