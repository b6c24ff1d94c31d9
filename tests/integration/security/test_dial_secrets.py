"""A gateway connect whose upstream dial times out (session 11's connect write-ahead records why
a connect never reached an upstream session): aiohttp's connect timeout names the whole URL,
and a Streaming v3 client's temporary ``?token=`` rides in it. Neither the replica's log nor
the session's ``connect`` ``rejected`` entry (REST, the files under the data dir) may carry
it (docs/security.md#secrets). The upstream is a real listener whose accept queue is full, so
the TCP connect really times out."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Callable, Iterator

import aiohttp
import pytest

from controlplane.config import Settings
from controlplane.edges.gateway import unreachable
from tests.integration.service.conftest import eventually, serving

TEMP_TOKEN = "tmp-" + secrets.token_hex(16)
STREAM = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose listener never accepts, its queue already full: a connect's SYN waits."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()


async def test_a_timed_out_dial_keeps_the_clients_temporary_token_out_of_logs_and_record(
    cp_settings: Callable[..., Settings], blackhole: int, caplog: pytest.LogCaptureFixture
) -> None:
    settings = cp_settings(upstream_streaming_url=f"ws://127.0.0.1:{blackhole}/v3/ws",
                           upstream_connect_timeout_s=0.3)  # fmt: skip
    caplog.set_level(logging.DEBUG)
    async with serving(settings) as cp:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await cp.http.ws_connect(f"{cp.ws_base}{STREAM}&token={TEMP_TOKEN}")
        assert refused.value.status == 502

        async def ended() -> str | None:
            body = await cp.call("GET", "/v1/sessions?state=ended", expect=200)
            return str(body["items"][0]["id"]) if body["items"] else None

        session_id = await eventually(ended)
        entry = (await cp.log(session_id))[-1]
        assert (entry["cause"], entry["status"]) == ("connect", "rejected")
        assert entry["error"].startswith("not connected: cannot reach the upstream (")
        assert "timeout" in entry["error"].lower() and "?***" in entry["error"]
        await asyncio.sleep(0.1)
    on_disk = "".join(p.read_text(errors="replace") for p in settings.data_dir.rglob("*")
                      if p.is_file())  # fmt: skip
    # (``serving`` keeps aiohttp's access log, which prints every query string; ``controlplane
    # serve`` runs without one: test_secret_leaks)
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records
                       if r.name != "aiohttp.access")  # fmt: skip
    assert "cannot reach the upstream" in logged
    for where, text in (("entry", str(entry)), ("data dir", on_disk), ("log", logged)):
        assert TEMP_TOKEN not in text, where


def test_a_dial_error_is_said_without_a_query_or_user_password() -> None:
    exc = aiohttp.ConnectionTimeoutError(
        "Connection timeout to host wss://user:pa55@upstream:443/v3/ws?a=1&token=T0K (x)"
    )
    assert unreachable(exc) == "Connection timeout to host wss://***@upstream:443/v3/ws?*** (x)"
    assert unreachable(OSError("[Errno 111] Connect call failed ('127.0.0.1', 1)")) == (
        "[Errno 111] Connect call failed ('127.0.0.1', 1)"
    )
