"""Per-token limits on the expensive reads (docs/security.md#rate-limits), through the real
REST API: a token polling a session's log (a flush and a read of the session's files per
request) past its burst gets 429 ``rate_limited`` with ``Retry-After``, naming the limit and
the settings; other tokens are not slowed down; the bucket refills; the metric counts it;
and the default is far above what real use makes."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable

from controlplane.config import Settings
from controlplane.edges.client import ControlClient
from tests.integration.service.conftest import ControlPlaneUnderTest, serving

TOKENS = {
    "tok-viewer": "viewer",
    "tok-viewer-2": "viewer",
    "tok-compliance": "compliance",
    "tok-app": "app",
    "tok-admin": "admin",
}


async def _get(cp: ControlPlaneUnderTest, path: str, token: str) -> tuple[int, dict[str, str], str]:
    headers = {"Authorization": f"Bearer {token}"}
    async with cp.http.get(cp.base + path, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def _limited(cp: ControlPlaneUnderTest) -> float:
    async with cp.http.get(cp.base + "/metrics") as resp:
        text = await resp.text()
    found = re.findall(r'^controlplane_rate_limited_total\{route="session_log"\} (\S+)$', text,
                       re.MULTILINE)  # fmt: skip
    return float(found[0]) if found else 0.0


async def test_a_token_polling_a_session_log_past_its_burst_gets_429_naming_the_limit(
    cp_settings: Callable[..., Settings],
) -> None:
    settings = cp_settings(tokens=TOKENS, expensive_read_burst=3, expensive_read_rate_per_s=0.5)
    async with serving(settings) as cp:
        app = ControlClient(cp.ws_base + "/v1/control", token="tok-app", kind="voice-agent-v1",
                            model="voice-agent", labels={"tenant": "acme"})  # fmt: skip
        async with app:
            log = f"/v1/sessions/{app.session_id}/log"
            for _ in range(3):
                assert (await _get(cp, log, "tok-viewer"))[0] == 200
            status, headers, text = await _get(cp, log, "tok-viewer")
            assert status == 429, text
            assert headers["Retry-After"] == "2"
            error = json.loads(text)["error"]
            assert error["code"] == "rate_limited"
            assert error["details"] == {"route": "session_log", "burst": 3, "rate_per_s": 0.5,
                                        "retry_after_s": 2}  # fmt: skip
            assert "expensive_read_burst" in error["message"] and "at most 3" in error["message"]
            assert await _limited(cp) == 1.0
            # one bucket per token: another viewer, and the other expensive routes' tokens
            assert (await _get(cp, log, "tok-viewer-2"))[0] == 200
            at = f"/v1/sessions/{app.session_id}/config-at?at=2000-01-01T00:00:00Z"
            assert (await _get(cp, at, "tok-compliance"))[0] in (200, 404)
            # the same bucket for every expensive route of the token
            export = "/v1/experiments/any/assignments"
            assert (await _get(cp, export, "tok-viewer"))[0] == 429
            assert (await _get(cp, "/v1/audit/verify", "tok-viewer"))[0] == 403  # role first
            # cheap reads are never limited; a filtered list (it may walk the index) is
            for _ in range(10):
                assert (await _get(cp, f"/v1/sessions/{app.session_id}", "tok-viewer"))[0] == 200
                assert (await _get(cp, "/v1/sessions?limit=5", "tok-viewer"))[0] == 200
            assert (await _get(cp, "/v1/sessions?selector=tenant=x", "tok-viewer"))[0] == 429
            await asyncio.sleep(2.1)  # one read every 2 s: one read back
            assert (await _get(cp, log, "tok-viewer"))[0] == 200
            assert (await _get(cp, log, "tok-viewer"))[0] == 429
            assert await _limited(cp) == 2.0  # session_log's (the export's is its own)


async def test_the_default_limit_is_far_above_real_use(cp: ControlPlaneUnderTest) -> None:
    """``sessions log --follow`` polls once a second; a dashboard a few times: the default
    lets 600 reads go at once and 20 a second after that."""
    settings = cp.service.settings
    assert (settings.expensive_read_burst, settings.expensive_read_rate_per_s) == (600, 20.0)
    for _ in range(50):
        assert (await _get(cp, "/v1/sessions/nobody/log", "tok-viewer"))[0] == 404
