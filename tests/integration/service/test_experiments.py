"""Issue #21: exposures (control arm, treatment, ramp-down), the SRM check on a deliberately
unbalanced and a balanced population, the assignments export and the CLI, through the real
service with control-channel sessions."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aiohttp
import pytest
import websockets

from controlplane.app import SERVICE, build_app
from controlplane.cli.main import main
from controlplane.config import Settings
from controlplane.edges.client import ControlClient
from policies.bucketing import bucket, pick_variant
from sessions.exposures import exposure_problem
from tests.integration.service.conftest import (
    ADMIN,
    ControlPlaneUnderTest,
    _serve,
    eventually,
)

KEY = "greeting"


def _doc(percent: float = 100, key: str = KEY, **exp: Any) -> dict[str, Any]:
    variants = [{"name": "control", "weight": 50, "set": {}},
                {"name": "warm", "weight": 50, "set": {"keyterms": ["welcome"]}}]  # fmt: skip
    return {"id": key, "match": {"kind": ["voice-agent-v1"]}, "rollout": {"percent": percent},
            "experiment": {"key": key, "variants": variants, **exp}}  # fmt: skip


def _variant(session_id: str, key: str = KEY) -> str:
    return ("control", "warm")[pick_variant([50_000, 50_000], bucket(key, key, session_id))]


def _ids(key: str, control: int, warm: int) -> list[str]:
    """Session ids whose LaunchDarkly buckets put ``control`` in control, ``warm`` in warm."""
    want, out, n = {"control": control, "warm": warm}, [], 0
    while any(want.values()):
        sid = f"{key}-s{n}"
        n += 1
        arm = _variant(sid, key)
        if want[arm]:
            want[arm] -= 1
            out.append(sid)
    return out


@contextlib.asynccontextmanager
async def _service(make: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    settings = make(srm_min_exposures=40)
    app = build_app(settings)
    runner, port = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            yield ControlPlaneUnderTest(port, http, app[SERVICE], settings.data_dir)
    finally:
        await runner.cleanup()


async def _apply_pushes(app: ControlClient) -> None:
    """The app runs every push it gets and reports it applied (a Voice Agent upstream)."""
    async for push in app.pushes():
        await app.applied(push.version)


@contextlib.asynccontextmanager
async def _sessions(cp: ControlPlaneUnderTest, ids: Iterable[str]) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        tasks = []
        for sid in ids:
            app = ControlClient(cp.ws_base + "/v1/control", token=ADMIN, kind="voice-agent-v1",
                                model="voice-agent", session_id=sid)  # fmt: skip
            await stack.enter_async_context(app)
            tasks.append(asyncio.create_task(_apply_pushes(app)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


async def _summary(cp: ControlPlaneUnderTest, key: str = KEY) -> dict[str, Any]:
    result: dict[str, Any] = await cp.call("GET", f"/v1/experiments/{key}", expect=200)
    return result


async def _exposed(cp: ControlPlaneUnderTest, n: int, key: str = KEY) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        summary = await _summary(cp, key)
        return summary if summary["exposed"] == n else None

    result: dict[str, Any] = await eventually(done, timeout=10)
    return result


async def test_a_75_25_split_under_50_50_weights_is_a_sample_ratio_mismatch(
    cp_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _ids(KEY, control=36, warm=12)  # 48 sessions: chi-squared 12, p = 0.00053
    async with _service(cp_settings) as cp, _sessions(cp, ids):
        await cp.publish(_doc())
        summary = await _exposed(cp, 48)
        by_name = {v["name"]: v for v in summary["variants"]}
        assert by_name["control"]["exposed"] == 36 and by_name["warm"]["exposed"] == 12
        assert by_name["control"]["expected_share"] == 0.5
        assert by_name["warm"]["exposed_share"] == 0.25
        srm = summary["srm"]
        assert srm["test"] == "chi-squared" and srm["threshold"] == 0.001
        assert srm["min_exposures"] == 40
        assert srm["p_value"] == pytest.approx(0.0005320055051392492, rel=1e-6)
        assert srm["mismatch"] is True
        metrics = await cp.call("GET", "/metrics", token=None)
        assert (
            f'controlplane_experiment_exposures_total{{experiment="{KEY}",variant="warm"}} 12.0'
            in metrics
        )
        assert f'controlplane_experiment_srm_p_value{{experiment="{KEY}"}} 0.000532' in metrics

        argv = ["experiments", "show", KEY, "--url", cp.base, "--token", "tok-viewer"]
        assert await asyncio.to_thread(main, argv) == 0
        table = capsys.readouterr().out
        assert "VARIANT" in table and "EXPOSED" in table
        assert "warm" in table and "25.0%" in table and "MISMATCH" in table
        assert await asyncio.to_thread(main, [*argv, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["srm"]["mismatch"] is True

        verify = ["experiments", "verify", KEY, "--url", cp.base, "--token", "tok-viewer"]
        assert await asyncio.to_thread(main, [*verify, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report == {"experiment": KEY, "checked": 48, "ok": True, "problems": []}


async def test_a_balanced_split_is_no_mismatch_and_the_control_arm_is_exposed_unchanged(
    cp_settings: Callable[..., Settings],
) -> None:
    ids = _ids(KEY, control=24, warm=24)
    async with _service(cp_settings) as cp, _sessions(cp, ids):
        await cp.publish(_doc())
        summary = await _exposed(cp, 48)
        assert [v["exposed"] for v in summary["variants"]] == [24, 24]
        assert summary["srm"]["p_value"] == pytest.approx(1.0)
        assert summary["srm"]["mismatch"] is False
        control = next(s for s in ids if _variant(s) == "control")
        warm = next(s for s in ids if _variant(s) == "warm")
        # the control arm changes nothing: exposed by its `unchanged` entry; warm at `acked`
        log = await cp.log(control)
        assert [e["status"] for e in log if e["cause"] == "policy"] == ["unchanged"]
        url = f"/v1/experiments/{KEY}/assignments?limit=1000"
        rows = {r["session_id"]: r for r in (await cp.call("GET", url, expect=200))["items"]}
        assert rows[control]["exposed_at"] is not None and rows[control]["variant"] == "control"
        assert rows[warm]["exposed_at"] >= rows[warm]["first_assigned_at"]
        warm_log = await cp.log(warm)
        assert [e["status"] for e in warm_log if e["cause"] == "policy"] == ["sent", "acked"]
        assert rows[warm]["left_at"] is None and rows[warm]["iteration"] == 1
        # each exposure names the hash-chained log entry that proves it (audit verify covers it)
        assert rows[warm]["exposed_seq"] == next(
            e["seq"] for e in warm_log if e["cause"] == "policy" and e["status"] == "acked"
        )
        for sid in (control, warm):
            assert exposure_problem(rows[sid], await cp.log(sid)) is None
        forged = {**rows[warm], "exposed_seq": rows[warm]["exposed_seq"] - 1}
        assert "hash" in str(exposure_problem(forged, warm_log))


async def test_exposures_survive_a_ramp_down_with_left_at_and_the_export_pages(
    cp: ControlPlaneUnderTest,
) -> None:
    ids = _ids(KEY, control=6, warm=6)
    async with _sessions(cp, ids):
        await cp.publish(_doc(percent=100))
        await _exposed(cp, 12)
        await cp.publish(_doc(percent=0))  # every session leaves the experiment

        async def all_left() -> list[dict[str, Any]] | None:
            body = await cp.call("GET", f"/v1/experiments/{KEY}/assignments", expect=200)
            rows: list[dict[str, Any]] = body["items"]
            return rows if len(rows) == 12 and all(r["left_at"] for r in rows) else None

        rows = await eventually(all_left, timeout=10)
        assert {r["session_id"] for r in rows} == set(ids)
        assert all(r["exposed_at"] <= r["left_at"] and r["state"] == "left" for r in rows)
        summary = await _summary(cp)
        assert summary["exposed"] == 12  # exposures are kept (intent to treat)

        page = await cp.call("GET", f"/v1/experiments/{KEY}/assignments?limit=5", expect=200)
        seen = [r["session_id"] for r in page["items"]]
        while page["next"] is not None:
            page = await cp.call("GET", f"/v1/experiments/{KEY}/assignments?limit=5"
                                 f"&cursor={page['next']}", expect=200)  # fmt: skip
            seen += [r["session_id"] for r in page["items"]]
        assert seen == sorted(ids)
        text = await cp.call("GET", f"/v1/experiments/{KEY}/assignments?format=csv", expect=200)
        table = list(csv.DictReader(io.StringIO(text)))
        assert len(table) == 12 and all(r["exposed_at"] and r["left_at"] for r in table)


async def test_raising_the_iteration_reshuffles_and_counts_anew(cp: ControlPlaneUnderTest) -> None:
    ids = _ids(KEY, control=5, warm=5)
    async with _sessions(cp, ids):
        await cp.publish(_doc())
        await _exposed(cp, 10)
        await cp.publish(_doc(iteration=2))
        summary = await _exposed(cp, 10)
        assert summary["iteration"] == 2
        rows = (await cp.call("GET", f"/v1/experiments/{KEY}/assignments", expect=200))["items"]
        assert {r["iteration"] for r in rows} == {1, 2} and len(rows) == 20


async def test_sessions_joining_after_the_publish_are_exposed_at_connect_or_when_applied(
    cp: ControlPlaneUnderTest,
) -> None:
    await cp.publish(_doc())
    ids = _ids(KEY, control=3, warm=3)
    async with _sessions(cp, ids):
        await _exposed(cp, 6)
        for sid in ids:
            statuses = [(e["cause"], e["status"]) for e in await cp.log(sid)]
            if _variant(sid) == "control":  # registered on the control arm's values already
                assert statuses == [("connect", "sent")]
            else:
                assert statuses == [("connect", "sent"), ("connect", "sent"), ("connect", "acked")]


async def test_a_streaming_gateway_session_is_exposed_at_sent_and_kept_across_a_restart(
    cp_settings: Callable[..., Settings],
) -> None:
    doc = {"id": "stream-exp", "match": {"kind": ["streaming-v3"]},
           "experiment": {"key": "stream-exp", "variants": [
               {"name": "warm", "weight": 100, "set": {"keyterms": ["welcome"]}},
               {"name": "control", "weight": 0, "set": {}}]}}  # fmt: skip
    url = "/v1/experiments/stream-exp/assignments"
    async with _service(cp_settings) as cp:
        async with websockets.connect(
            cp.ws_base + "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro",
            additional_headers={"Authorization": "test-key"},
        ) as ws:
            begin = json.loads(await asyncio.wait_for(ws.recv(), 5))
            sid = cp.live_by_upstream(begin["id"])
            await cp.publish(doc)
            summary = await _exposed(cp, 1, key="stream-exp")
            assert summary["variants"][0]["exposed"] == 1
            sent = [e for e in await cp.log(sid) if e["cause"] == "policy"]
            assert [e["status"] for e in sent] == ["sent"]  # never acknowledged on Streaming v3
            [row] = (await cp.call("GET", url, expect=200))["items"]
            assert row["exposed_seq"] == sent[0]["seq"]
            assert row["upstream_session_id"] == begin["id"]
    async with _service(cp_settings) as again:  # same data directory: the exposure is kept
        summary = await _summary(again, "stream-exp")
        assert summary["exposed"] == 1
        [row] = (await again.call("GET", url, expect=200))["items"]
        assert row["session_id"] == sid and row["state"] == "ended"
        assert row["exposed_seq"] == sent[0]["seq"]
