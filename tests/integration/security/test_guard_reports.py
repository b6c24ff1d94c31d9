"""App reports feed the rollout guard, bounded (docs/security.md, control channel): an app
reports only about the session its connection registered (another session's id: error
``not_your_session``, nothing counted), and a session counts at most ONE failure per policy
version in the guard's window however many pushes of that version it fails, and however often
it re-registers its id. Real sockets, real REST."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import websockets

from controlplane.edges.client import ControlClient, ServerPush
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, eventually

GUARDED = {
    "id": "p",
    "match": {"labels": {"g": "x"}},
    "set": {"system_prompt": "A", "keyterms": ["k"]},
    "guard": {"min_sessions": 100},
}  # fmt: skip  (counts, never halts here)


def app(cp: ControlPlaneUnderTest, session_id: str | None = None) -> ControlClient:
    return ControlClient(cp.ws_base + "/v1/control", token=ADMIN, kind="voice-agent-v1",
                         model="voice-agent", labels={"g": "x"}, session_id=session_id)  # fmt: skip


async def guard_failures(cp: ControlPlaneUnderTest) -> int:
    body = await cp.call("GET", "/v1/policies/p/rollout", expect=200)
    return int(body["totals"]["guard_failures"])


async def next_push(pushes: AsyncIterator[ServerPush]) -> ServerPush:
    return await asyncio.wait_for(anext(pushes), 5)


async def rejected(cp: ControlPlaneUnderTest, session_id: str, version: int) -> bool:
    return any(e["version"] == version and e["status"] == "rejected"
               for e in await cp.log(session_id))  # fmt: skip


async def test_a_session_counts_one_failure_per_version_however_many_pushes_it_fails(
    cp: ControlPlaneUnderTest,
) -> None:
    await cp.publish(GUARDED)
    async with app(cp, "flood-1") as client:
        pushes = client.pushes()
        first = await next_push(pushes)  # p v1: system_prompt + keyterms
        await client.failed(first.version, "refused", fields=["keyterms"])
        await eventually(lambda: rejected(cp, "flood-1", first.version))
        assert await guard_failures(cp) == 1
        # its own change of a field p sets: p's value is pushed again, and refused again
        await client.update({"system_prompt": "mine"})
        again = await next_push(pushes)
        assert again.version > first.version and again.message["session"] == {
            "system_prompt": "A"}  # fmt: skip
        await client.failed(again.version, "refused")
        await eventually(lambda: rejected(cp, "flood-1", again.version))
    # and once more after re-registering the same id
    async with app(cp, "flood-1") as client:
        push = await next_push(client.pushes())
        await client.failed(push.version, "refused")
        await eventually(lambda: rejected(cp, "flood-1", push.version))
    await asyncio.sleep(0.1)
    assert await guard_failures(cp) == 1  # one session, one version: one failure
    # another session's failure counts
    async with app(cp) as other:
        push = await next_push(other.pushes())
        await other.failed(push.version, "refused")
        assert await eventually(lambda: _at_least(cp, 2)) == 2


async def _at_least(cp: ControlPlaneUnderTest, n: int) -> int | None:
    count = await guard_failures(cp)
    return count if count >= n else None


async def test_a_report_about_another_apps_session_counts_nothing(
    cp: ControlPlaneUnderTest,
) -> None:
    await cp.publish(GUARDED)
    async with app(cp, "victim") as victim:
        held = await next_push(victim.pushes())  # unanswered: in flight
        async with websockets.connect(cp.ws_base + "/v1/control", additional_headers={
            "Authorization": f"Bearer {ADMIN}"}) as ws:  # fmt: skip
            await ws.send(json.dumps({"type": "register", "kind": "voice-agent-v1",
                                      "model": "voice-agent", "labels": {}}))  # fmt: skip
            assert json.loads(await ws.recv())["type"] == "registered"
            frame: dict[str, Any] = {"type": "failed", "session_id": "victim",
                                     "version": held.version, "error": "forged"}  # fmt: skip
            for _ in range(20):
                await ws.send(json.dumps(frame))
                answer = json.loads(await ws.recv())
                assert answer["code"] == "not_your_session", answer
        await asyncio.sleep(0.1)
        assert await guard_failures(cp) == 0
        assert not await rejected(cp, "victim", held.version)
        await victim.applied(held.version)
