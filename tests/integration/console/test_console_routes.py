"""The console's HTTP side without a browser: the shell on every page path, packaged assets
with a same-origin-only content security policy, unknown names refused, and ``/`` leading to
the console (issue #24: ``GET /`` used to be a 404)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from controlplane.console import STATIC_FILES, add_console_routes
from tests.integration.service.conftest import _serve


async def test_pages_assets_and_refusals() -> None:
    app = web.Application()
    add_console_routes(app)
    runner, port = await _serve(app)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/ui/", "/ui/policies/eu-disclosure", "/ui/sessions/cps_1",
                         "/ui/experiments/greeting"):  # fmt: skip
                async with http.get(base + path) as resp:
                    assert resp.status == 200, path
                    assert resp.content_type == "text/html"
                    assert '<script type="module" src="/ui/static/app.js">' in await resp.text()
                    csp = resp.headers["Content-Security-Policy"]
                    assert "script-src 'self'" in csp and "default-src 'none'" in csp
            for name in STATIC_FILES:
                if name == "index.html":
                    continue
                async with http.get(f"{base}/ui/static/{name}") as resp:
                    assert resp.status == 200, name
                    assert resp.headers["X-Content-Type-Options"] == "nosniff"
                    # the SVG namespace name (createElementNS) is an identifier, never fetched
                    body = (await resp.text()).replace('"http://www.w3.org/2000/svg"', "")
                    # offline: nothing is fetched from another origin
                    assert "http://" not in body and "https://" not in body, name
            async with http.get(f"{base}/ui/static/app.js") as resp:
                assert resp.content_type == "text/javascript"
            for bad in ("/ui/static/nope.js", "/ui/static/index.html", "/ui/static/..%2fapp.py",
                        "/ui/nowhere/x/y"):  # fmt: skip
                async with http.get(base + bad) as resp:
                    assert resp.status == 404, bad
            for start in ("/", "/ui"):
                async with http.get(base + start, allow_redirects=False) as resp:
                    assert resp.status == 302
                    assert resp.headers["Location"] == "/ui/"
    finally:
        await runner.cleanup()


def test_the_package_ships_every_page_module() -> None:
    assert {"index.html", "app.js", "dom.js", "console.css", "overview.js", "policy.js",
            "session.js", "experiment.js"} <= set(STATIC_FILES)  # fmt: skip
