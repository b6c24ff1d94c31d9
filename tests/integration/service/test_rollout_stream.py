"""Issue 24: ``GET /v1/policies/{id}/rollout/stream`` (server-sent events) against the real
service with live control-channel sessions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.integration.service.conftest import ControlPlaneUnderTest
from tests.integration.service.fleet import Fleet


@pytest.fixture
async def fleet(cp: ControlPlaneUnderTest) -> AsyncIterator[Fleet]:
    f = Fleet(cp.ws_base)
    try:
        yield f
    finally:
        await f.close()


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """(event name, decoded data) of each event; comments come as ("comment", text)."""
    name, data = "message", ""
    while line := (await resp.content.readline()).decode():
        line = line.rstrip("\n")
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif not line:
            if data:
                yield name, json.loads(data)
            name, data = "message", ""


def url(cp: ControlPlaneUnderTest, policy_id: str) -> str:
    return f"{cp.base}/v1/policies/{policy_id}/rollout/stream"


async def test_stream_emits_a_new_rollout_within_a_second_of_a_publish(
    cp: ControlPlaneUnderTest, fleet: Fleet
) -> None:
    await fleet.open_apps(3, "ack", labels={"team": "s"})
    doc = {"id": "live", "match": {"labels": {"team": ["s"]}}, "set": {"system_prompt": "v1"}}
    await cp.publish(doc)
    headers = {"Authorization": "Bearer tok-viewer"}
    async with cp.http.get(url(cp, "live"), headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        stream = events(resp)
        name, first = await asyncio.wait_for(anext(stream), 5)
        assert name == "rollout" and first["id"] == "live" and first["version"] == 1
        doc["set"] = {"system_prompt": "v2"}
        await cp.publish(doc)
        published = time.monotonic()
        while True:  # the first event that shows version 2
            name, body = await asyncio.wait_for(anext(stream), 5)
            if name == "rollout" and body["version"] == 2:
                break
        assert time.monotonic() - published < 1.0
        # then it follows the rollout until every live session acknowledged version 2
        while not any(r["version"] == 2 and r["acknowledged"] == 3 for r in body["versions"]):
            name, body = await asyncio.wait_for(anext(stream), 5)
            assert name == "rollout"


async def test_stream_refuses_a_bad_token_and_an_unknown_policy(cp: ControlPlaneUnderTest) -> None:
    doc = {"id": "shut", "match": {"labels": {"team": ["x"]}}, "set": {"system_prompt": "v1"}}
    await cp.publish(doc)
    for headers in ({"Authorization": "Bearer nope"}, {}):
        async with cp.http.get(url(cp, "shut"), headers=headers) as resp:
            assert resp.status == 401
            assert not resp.headers["Content-Type"].startswith("text/event-stream")
    viewer = {"Authorization": "Bearer tok-viewer"}
    async with cp.http.get(url(cp, "nosuch"), headers=viewer) as resp:
        assert resp.status == 404
    async with cp.http.get(url(cp, "shut") + "?x=1", headers=viewer) as resp:
        assert resp.status == 400


async def test_stream_ends_with_an_end_event_when_the_service_drains(
    cp: ControlPlaneUnderTest,
) -> None:
    doc = {"id": "drain", "match": {"labels": {"team": ["x"]}}, "set": {"system_prompt": "v1"}}
    await cp.publish(doc)
    async with cp.http.get(url(cp, "drain"), headers={"Authorization": "Bearer tok-viewer"}) as r:
        stream = events(r)
        assert (await asyncio.wait_for(anext(stream), 5))[0] == "rollout"
        cp.service.draining = True
        try:
            name, body = await asyncio.wait_for(anext(stream), 5)
        finally:
            cp.service.draining = False
        assert (name, body) == ("end", {"reason": "draining"})
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(stream), 5)
