"""The console adds no path to a write and no ambient credential (docs/security.md): its pages
only read the REST API (GET), each call carries the user's bearer token in a header (kept in
``sessionStorage``, never a cookie or a URL), so the REST checks are the console's checks.
Nothing sets a cookie and the API takes no cookie as a credential, so a cross-site request
(CSRF) carries nothing the API accepts; no CORS header lets another origin read an answer."""

from __future__ import annotations

import re
from importlib import resources

from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest

_FETCH = re.compile(r"fetch\(([^;]*?)\}\s*\)", re.S)


def _scripts() -> dict[str, str]:
    root = resources.files("controlplane.console").joinpath("static")
    return {e.name: e.read_text(encoding="utf-8") for e in root.iterdir()
            if e.name.endswith((".js", ".html"))}  # fmt: skip


def test_every_console_request_is_a_get_with_the_bearer_header_and_nothing_ambient() -> None:
    scripts = _scripts()
    calls = [(name, call) for name, text in scripts.items() for call in _FETCH.findall(text)]
    assert len(calls) >= 2, "the console's REST calls were found"
    for name, call in calls:
        assert "Authorization: `Bearer ${token()}`" in call, (name, call)
        assert "method" not in call and "credentials" not in call, (name, call)
    for name, text in scripts.items():
        assert text.count("fetch(") == sum(1 for n, _ in calls if n == name), name
        for ambient in ("document.cookie", "localStorage", "EventSource(", "XMLHttpRequest",
                        "<form", "method: \"POST\""):  # fmt: skip
            assert ambient not in text, (name, ambient)


async def test_no_cookie_is_set_or_accepted_and_no_other_origin_may_read(
    cp: ControlPlaneUnderTest,
) -> None:
    evil = {"Origin": "https://evil.example", "Cookie": f"token={ADMIN}; session={ADMIN}"}
    for path in ("/ui/", "/ui/static/app.js", "/v1/policies", "/openapi.json"):
        async with cp.http.get(cp.base + path, headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 200, path
            assert "Set-Cookie" not in r.headers, path
            assert "Access-Control-Allow-Origin" not in r.headers, path
    # a cross-site write: the browser sends cookies and an Origin, never our header
    doc = {"id": "csrf", "set": {"prompt": "x"}}
    async with cp.http.post(cp.base + "/v1/policies", json=doc, headers=evil) as r:
        assert r.status == 401
        assert "Access-Control-Allow-Origin" not in r.headers
    async with cp.http.options(cp.base + "/v1/policies", headers={
            **evil, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"}) as r:  # fmt: skip
        assert "Access-Control-Allow-Origin" not in r.headers
        assert "Access-Control-Allow-Headers" not in r.headers
    await cp.call("GET", "/v1/policies/csrf", expect=404)
