"""A flood of malformed control-channel frames from one registered app, during fan-outs.

20,000 frames as fast as the socket takes them: text that is not JSON, JSON that is not an
object, unknown types, reports with wrong types, nesting past the depth limit. Each gets an
``error`` frame naming what was wrong (and the limit, where one applies); the flooder's
socket stays open and still answers a heartbeat; its session's record does not change; the
other 500 sessions of the replica get every version published meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
import websockets

from tests.integration.distributed.conftest import Cluster
from tests.integration.service.conftest import ADMIN
from tests.integration.service.fleet import App, Fleet

FLOOD = 20_000
BAD = [
    "not json",
    "[1, 2, 3]",
    '"a string"',
    '{"type": "nope"}',
    '{"type": "applied", "version": "seven"}',
    '{"type": "update", "config": 5}',
    "[" * 5000 + "]" * 5000,
    '{"type": "failed", "version": 1e400}',
]


@pytest.mark.timeout(180)
async def test_a_flood_of_malformed_frames_gets_errors_and_changes_nothing_else(
    cluster: Cluster,
) -> None:
    a = await cluster.start("node-a", rollout_sync_interval_s=300.0)
    fleet = Fleet(a.ws_base)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    ws = await websockets.connect(a.ws_base + "/v1/control", compression=None,
                                  additional_headers=auth)  # fmt: skip
    try:
        await ws.send(json.dumps({"type": "register", "kind": "voice-agent-v1",
                                  "model": "voice-agent", "labels": {"who": "flood"},
                                  "config": {"system_prompt": "mine"}}))  # fmt: skip
        registered = json.loads(await ws.recv())
        assert registered["type"] == "registered"
        sid = registered["session_id"]
        before = await a.log(sid)
        apps: list[App] = []
        for _ in range(5):
            apps += await fleet.open_apps(100, "ack", labels={"who": "fleet"})

        errors: Counter[str] = Counter()
        messages: set[str] = set()
        others: list[dict[str, Any]] = []

        async def read() -> None:
            while sum(errors.values()) < FLOOD:
                frame = json.loads(await ws.recv())
                if frame.get("type") == "error":
                    errors[frame["code"]] += 1
                    messages.add(frame["message"])
                else:
                    others.append(frame)

        async def flood() -> None:
            for i in range(FLOOD):
                await ws.send(BAD[i % len(BAD)])

        reading = asyncio.create_task(read())
        flooding = asyncio.create_task(flood())
        for n in range(5):
            await a.publish({"id": "everyone", "match": {"labels": {"who": "fleet"}},
                             "set": {"system_prompt": f"round {n}"}})  # fmt: skip
            version = a.service.engine.live[apps[0].session_id].push.desired_version
            got = await asyncio.gather(*(app.got(version, 10.0) for app in apps))
            assert all(got), f"round {n}: {got.count(False)} of 500 never got v{version}"
        await asyncio.wait_for(flooding, 120)
        await asyncio.wait_for(reading, 120)
        assert sum(errors.values()) == FLOOD
        assert errors == {"bad_json": FLOOD * 3 // 8, "bad_message": FLOOD * 2 // 8,
                          "unknown_type": FLOOD // 8, "bad_version": FLOOD // 8,
                          "bad_config": FLOOD // 8}, errors  # fmt: skip
        assert "JSON nested deeper than 32 levels" in messages  # the limit, named
        assert "version: inf is not a finite number" in messages
        assert len(messages) == len(BAD) - 1, messages  # ("[1, 2, 3]", '"a string"': alike)
        assert not [f for f in others if f.get("type") not in ("heartbeat",)], others[:3]

        await ws.send(json.dumps({"type": "heartbeat"}))  # still open, still served
        answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert answer["type"] == "heartbeat"
        assert await a.log(sid) == before  # nothing recorded for the flood
        assert (await a.call("GET", "/healthz", token=None))["status"] == "ok"
    finally:
        await ws.close()
        await fleet.close()
