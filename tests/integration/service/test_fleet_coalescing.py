"""Issue 23, fleet-level coalescing through real sockets: streaming sessions through the
gateway to the emulator, versions of one policy published faster than they can be pushed.

- A burst is debounced: the first version goes at once, the rest wait until the policy is
  quiet and go as one fan-out of the newest.
- A walk in progress (paced here, so that it lasts) is overtaken by a newer version: the
  sessions it had not reached get only the newest.

Either way every session ends on the newest, gets fewer frames than versions, and its version
log is truthful: a ``sent`` entry for each frame the emulator received (same order, same
policy version) and none for a version coalesced away (DESIGN.md §4: a log entry records a
push that happened; a per-session version superseded before it was sent is never sent, so it
has no entry, and ``controlplane_coalesced_total`` counts it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import websockets

from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from tests.integration.service.conftest import (
    ControlPlaneUnderTest,
    Emulator,
    _serve,
    eventually,
)
from tests.integration.service.fleet import metric

CONNECT = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"
SESSIONS = 50
VERSIONS = 10


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[ControlPlaneUnderTest]:
    app = build_app(settings)
    runner, port = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            yield ControlPlaneUnderTest(port, http, app[SERVICE], settings.data_dir)
    finally:
        await runner.cleanup()


async def open_sessions(cp: ControlPlaneUnderTest, stack: AsyncExitStack, n: int) -> list[str]:
    """``n`` Streaming v3 sessions through the gateway; their upstream (emulator) ids."""

    async def one() -> str:
        ws = await stack.enter_async_context(
            websockets.connect(cp.ws_base + CONNECT, additional_headers={"Authorization": "k"})
        )
        begin = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert begin["type"] == "Begin", begin
        return str(begin["id"])

    return list(await asyncio.gather(*(one() for _ in range(n))))


def doc(version: int) -> dict[str, Any]:
    return {"id": "burst", "match": {"kind": ["streaming-v3"]}, "set": {"prompt": f"v{version}"}}


async def prompts_received(emulator: Emulator, upstream_id: str) -> list[str]:
    return [u["prompt"] for u in await emulator.updates(upstream_id)]


async def all_on(emulator: Emulator, ids: list[str], prompt: str) -> bool:
    for upstream_id in ids:
        if (await emulator.session(upstream_id))["config"].get("prompt") != prompt:
            return False
    return True


async def check_truthful(
    cp: ControlPlaneUnderTest, emulator: Emulator, ids: list[str]
) -> dict[str, list[str]]:
    """Every session's frames, checked against its log and record; returns them by id."""
    received: dict[str, list[str]] = {}
    for upstream_id in ids:
        frames = await prompts_received(emulator, upstream_id)
        assert frames and frames[-1] == f"v{VERSIONS}", frames  # ends on the newest
        session_id = cp.live_by_upstream(upstream_id)
        entries = [e for e in await cp.log(session_id) if e["cause"] == "policy"]
        assert {e["status"] for e in entries} == {"sent"}, entries  # Streaming v3: never acked
        named = [e["policies"][0]["version"] for e in entries]
        assert [f"v{v}" for v in named] == frames  # one entry per frame, none for the rest
        assert [e["wire"]["prompt"] for e in entries] == frames
        record = await cp.session(session_id)
        assert record["effective_config"]["prompt"] == f"v{VERSIONS}"
        assert record["versions"]["desired"] == record["versions"]["sent"]
        received[upstream_id] = frames
    return received


async def test_a_burst_of_versions_is_debounced_into_fewer_frames_ending_on_the_newest(
    cp_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    # a quiet period wide enough that the burst below stays one burst on a loaded machine
    settings = cp_settings(fanout_quiet_s=0.5, fanout_max_delay_s=5.0)
    async with running(settings) as cp, AsyncExitStack() as stack:
        ids = await open_sessions(cp, stack, SESSIONS)
        for version in range(1, VERSIONS + 1):
            await cp.publish(doc(version))
        await eventually(lambda: all_on(emulator, ids, f"v{VERSIONS}"), timeout=15)
        received = await check_truthful(cp, emulator, ids)

        frames = sum(len(f) for f in received.values())
        # v1 went at once (isolated), v2..v10 waited and went as one fan-out of v10
        assert all(f == ["v1", f"v{VERSIONS}"] for f in received.values()), received
        assert frames == 2 * SESSIONS

        async def scrape(name: str, **labels: str) -> float:
            return await metric(cp.http, cp.base, "controlplane_" + name, **labels)

        cp.service.engine.flush_metrics()
        # per session, the versions never sent (v2..v9) are counted, not logged
        assert await scrape("coalesced_total") == SESSIONS * VERSIONS - frames
        assert await scrape("fanouts_total", start="immediate") == 1
        assert await scrape("fanouts_total", start="debounced") == VERSIONS - 1
        assert await scrape("fanouts_coalesced_total") == VERSIONS - 2  # v2..v9 into v10
        assert await scrape("fanout_hold_seconds_count") == 1


async def test_sessions_a_paced_walk_has_not_reached_get_only_the_newest_version(
    cp_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    rate = 40.0  # frames per second: the walk of 50 sessions lasts over a second
    settings = cp_settings(fanout_quiet_s=0, fanout_frames_per_s=rate)
    async with running(settings) as cp, AsyncExitStack() as stack:
        ids = await open_sessions(cp, stack, SESSIONS)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for version in range(1, VERSIONS):  # v1..v9 at once: one walk, the newest wins
            await cp.publish(doc(version))

        async def some_reached() -> bool:
            reached = [i for i in ids if await emulator.updates(i)]
            return 5 <= len(reached)

        await eventually(some_reached, timeout=10, interval=0.01)
        await cp.publish(doc(VERSIONS))  # the walk is in progress
        await eventually(lambda: all_on(emulator, ids, f"v{VERSIONS}"), timeout=20)
        elapsed = loop.time() - started
        received = await check_truthful(cp, emulator, ids)

        once = [f for f in received.values() if len(f) == 1]
        twice = [f for f in received.values() if len(f) == 2]
        assert len(once) + len(twice) == SESSIONS, received  # never more than two frames
        assert once and twice  # some were reached before v10 arrived, some were not
        assert all(f == [f"v{VERSIONS}"] for f in once)  # not reached: only the newest
        assert all(f[1] == f"v{VERSIONS}" for f in twice)
        frames = sum(len(f) for f in received.values())
        # paced: the frames cannot all have gone faster than the rate (and its first burst)
        burst = rate * 0.05
        assert elapsed >= (frames - burst - 1) / rate
