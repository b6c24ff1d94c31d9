"""An A/B experiment on real AssemblyAI Python SDK streaming sessions through the gateway
(docs/experiments.md): each session starts on its arm (merged into the connect), is exposed
once the upstream began (``Begin``), in the arm whose values the emulator runs; a variant
pushed mid-call exposes the session at the push's ``sent`` entry (Streaming v3 has no
acknowledgement); the summary, the export (by the upstream id the SDK learned), the timeline
and ``experiments verify`` agree, and the record matches the upstream after each step."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from assemblyai.streaming.v3 import (
    AsyncRealTimeTranscriber,
    BeginEvent,
    RealTimeEvents,
    RealTimeParameters,
    RealTimeTranscriberOptions,
)

from policies.bucketing import bucket
from tests.integration.sdk.truth import record_problems, settle
from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator, eventually
from tests.integration.service.test_experiment_truth import _cli, _rows

pytestmark = pytest.mark.timeout(60)

# what each experiment's warm arm sets, and how it shows in the emulator's config
WARM = {"sdk-ab": ({"keyterms": ["welcome"]}, "welcome"),
        "sdk-late": ({"max_turn_silence_ms": 1234}, "1234")}  # fmt: skip


def _doc(key: str) -> dict[str, Any]:
    return {"id": key, "match": {"kind": ["streaming-v3"], "labels": {"app": "sdk-ab"}},
            "experiment": {"key": key, "variants": [
                {"name": "control", "weight": 50, "set": {}},
                {"name": "warm", "weight": 50, "set": WARM[key][0]}]}}  # fmt: skip


async def _open(cp: ControlPlaneUnderTest) -> tuple[AsyncRealTimeTranscriber, str]:
    client = AsyncRealTimeTranscriber(RealTimeTranscriberOptions(
        api_key="test-key", api_host=f"{cp.ws_base}/labels/app=sdk-ab"))  # fmt: skip
    begins: list[BeginEvent] = []
    client.on(RealTimeEvents.Begin, lambda _c, event: begins.append(event))
    await client.connect(RealTimeParameters(sample_rate=16000,
                                            speech_model="universal-3-5-pro"))  # fmt: skip
    await eventually(lambda: begins)
    return client, begins[0].id


async def test_sdk_sessions_are_exposed_in_the_arm_their_upstream_runs(
    cp: ControlPlaneUnderTest, emulator: Emulator, capsys: Any
) -> None:
    await cp.publish(_doc("sdk-ab"))
    clients: list[AsyncRealTimeTranscriber] = []
    upstreams: list[str] = []
    try:
        for _ in range(6):  # they start on their arm
            client, upstream = await _open(cp)
            clients.append(client)
            upstreams.append(upstream)
        await cp.publish(_doc("sdk-late"))  # a second experiment, pushed mid-call
        for upstream in upstreams:
            await settle(cp, emulator, upstream)
            assert await record_problems(cp, emulator, upstream) == []

        async def exposed(key: str) -> dict[str, dict[str, Any]] | None:
            rows = await _rows(cp, key)
            done = [r for r in rows.values() if r["exposed_at"]]
            return rows if len(done) == len(upstreams) else None

        for key in ("sdk-ab", "sdk-late"):
            rows = await eventually(lambda k=key: exposed(k), timeout=10)
            by_upstream = {r["upstream_session_id"]: r for r in rows.values()}
            assert set(by_upstream) == set(upstreams)
            for upstream, row in by_upstream.items():
                runs = json.dumps((await emulator.session(upstream))["config"])
                sid = row["session_id"]
                want = "warm" if bucket(key, key, sid) >= 0.5 else "control"
                assert row["variant"] == want, (key, sid, row["variant"])
                assert (WARM[key][1] in runs) == (want == "warm"), (key, want, runs)
                entry = {e["seq"]: e for e in await cp.log(sid)}[row["exposed_seq"]]
                assert entry["status"] in ("sent", "unchanged"), entry  # never acked
                assert entry["cause"] == ("connect" if key == "sdk-ab" else "policy")
            summary = await cp.call("GET", f"/v1/experiments/{key}", expect=200)
            counted = [r for r in rows.values() if r["counted"]]
            assert summary["exposed"] == len(counted) == len(upstreams)
            timeline = await cp.call("GET", f"/v1/experiments/{key}/timeline", expect=200)
            assert timeline["binned"] == summary["exposed"]
            code, report = await _cli(cp, capsys, "experiments", "verify", key)
            assert (code, report["problems"]) == (0, [])
    finally:
        for client in clients:
            await client.disconnect(terminate=True)
        await asyncio.sleep(0)
