"""Experiments as an A/B experimenter checks them: the export, `experiments verify` and the
summary agree after a weight change moves sessions; a variant the upstream refused is never
exposed; a variant crossing a compliance lock is refused at publish (docs/experiments.md)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets

from controlplane.cli.main import main
from controlplane.edges.client import ControlClient
from policies.bucketing import bucket, pick_variant
from sessions.exposures import exposure_problem
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, Emulator, eventually
from tests.integration.service.test_experiments import KEY, _exposed, _sessions, _summary

pytestmark = pytest.mark.timeout(60)


def _weights(control: float, warm: float, **exp: Any) -> dict[str, Any]:
    variants = [
        {"name": "control", "weight": control, "set": {}},
        {"name": "warm", "weight": warm, "set": {"keyterms": ["welcome"]}},
    ]
    return {
        "id": KEY,
        "match": {"kind": ["voice-agent-v1"]},
        "experiment": {"key": KEY, "variants": variants, **exp},
    }


def _ids_in(lo: float, hi: float, n: int, key: str = KEY) -> list[str]:
    """``n`` session ids whose bucket for experiment ``key`` lies in ``[lo, hi)``."""
    out, i = [], 0
    while len(out) < n:
        sid = f"{key}-b{i}"
        i += 1
        if lo <= bucket(key, key, sid) < hi:
            out.append(sid)
    return out


async def _rows(cp: ControlPlaneUnderTest, key: str = KEY) -> dict[str, dict[str, Any]]:
    body = await cp.call("GET", f"/v1/experiments/{key}/assignments", expect=200)
    return {r["session_id"]: r for r in body["items"]}


async def _cli(cp: ControlPlaneUnderTest, capsys: Any, *args: str) -> tuple[int, Any]:
    capsys.readouterr()
    argv = [*args, "--url", cp.base, "--token", "tok-viewer", "--json"]
    code = await asyncio.to_thread(main, argv)
    return code, json.loads(capsys.readouterr().out)


async def test_a_session_a_weight_change_moves_stays_counted_in_its_exposed_variant_everywhere(
    cp: ControlPlaneUnderTest, capsys: Any
) -> None:
    stay = _ids_in(0.0, 0.2, 2)  # control under 50/50 and under 20/80
    moved = _ids_in(0.2, 0.5, 3)  # control under 50/50, warm under 20/80
    warm = _ids_in(0.5, 1.0, 2)
    async with _sessions(cp, [*stay, *moved, *warm]):
        await cp.publish(_weights(50, 50))
        await _exposed(cp, 7)
        await cp.publish(_weights(20, 80))  # the moved sessions are pushed warm's keyterms

        async def pushed() -> bool:
            for sid in moved:
                entries = await cp.log(sid)
                if not any(
                    e["status"] == "acked" and e["version"] > 1 and e["delta"] for e in entries
                ):
                    return False
            return True

        await eventually(pushed, timeout=10)
        summary = await _summary(cp)
        assert [(v["name"], v["exposed"]) for v in summary["variants"]] == [
            ("control", 5),
            ("warm", 2),
        ]  # fmt: skip  (first exposures: a session keeps its)
        rows = await _rows(cp)
        for sid in moved:  # counted where it was first exposed, its current arm beside it
            assert rows[sid]["variant"] == "control" and rows[sid]["assigned_variant"] == "warm"
            assert rows[sid]["version"] == 1
            assert exposure_problem(rows[sid], await cp.log(sid)) is None
        assert rows[stay[0]]["variant"] == rows[stay[0]]["assigned_variant"] == "control"
        # the export counts the same exposures per variant as the summary (the console's
        # "exposures over time" counts these rows)
        counted = collections.Counter(r["variant"] for r in rows.values() if r["exposed_at"])
        assert counted == {v["name"]: v["exposed"] for v in summary["variants"]}
        code, report = await _cli(cp, capsys, "experiments", "verify", KEY)
        assert (code, report["ok"], report["checked"]) == (0, True, 7), report


@contextlib.asynccontextmanager
async def _refusing(cp: ControlPlaneUnderTest, sid: str, field: str) -> AsyncIterator[list[int]]:
    """A Voice Agent control-channel app whose upstream refuses every push touching
    ``field`` (a top-level ``session`` key; it reports ``failed`` naming it) and applies
    every other push."""
    refused: list[int] = []
    app = ControlClient(
        cp.ws_base + "/v1/control",
        token=ADMIN,
        kind="voice-agent-v1",
        model="voice-agent",
        session_id=sid,
    )

    async def run() -> None:
        async for push in app.pushes():
            if field in push.message.get("session", {}):
                refused.append(push.version)
                await app.failed(push.version, "invalid_value: not this prompt", [field])
            else:
                await app.applied(push.version)

    async with app:
        task = asyncio.create_task(run())
        try:
            yield refused
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def test_a_variant_the_upstream_refused_is_never_exposed_even_once_other_fields_apply(
    cp: ControlPlaneUnderTest,
) -> None:
    doc = {
        "id": "pitch",
        "match": {"kind": ["voice-agent-v1"]},
        "experiment": {
            "key": "pitch",
            "variants": [
                {"name": "bold", "weight": 100, "set": {"system_prompt": "Sell hard."}},
                {"name": "control", "weight": 0, "set": {}},
            ],
        },
    }
    async with _refusing(cp, "refuses-pitch", "system_prompt") as refused:
        await cp.publish(doc)
        await eventually(lambda: refused)
        # another policy's change applies; the refused prompt stays held back (quarantined)
        await cp.publish(
            {"id": "terms", "match": {"kind": ["voice-agent-v1"]}, "set": {"keyterms": ["Acme"]}}
        )

        async def terms_applied() -> list[dict[str, Any]] | None:
            entries = await cp.log("refuses-pitch")
            done = [
                e
                for e in entries
                if e["status"] in ("acked", "unchanged")
                and any(p["id"] == "terms" for p in e["policies"])
            ]
            return entries if done else None

        entries = await eventually(terms_applied, timeout=10)
        running = await cp.call(
            "GET", f"/v1/sessions/refuses-pitch/config-at?at={entries[-1]['at']}", expect=200
        )
        assert "system_prompt" not in running["config"]  # the session never ran "bold"
        summary = await _summary(cp, "pitch")
        assert summary["exposed"] == 0, summary
        row = (await _rows(cp, "pitch"))["refuses-pitch"]
        assert row["exposed_at"] is None and row["first_assigned_at"] is not None


async def test_a_variant_a_later_compliance_lock_overrides_is_not_exposed_so_srm_sees_it(
    cp: ControlPlaneUnderTest,
) -> None:
    """An experimenter's variant sets the system prompt; compliance then locks it (accepted:
    a higher role). Sessions joining afterwards in that variant run the compliance prompt,
    never the variant's: not exposed (only assigned), so the exposed split is skewed and the
    SRM check can say so; sessions exposed before the lock keep their exposure."""
    bold = {"name": "bold", "weight": 50, "set": {"system_prompt": "Sell hard."}}
    doc = {"id": "pitch", "match": {"kind": ["voice-agent-v1"]},
           "experiment": {"key": "pitch", "variants": [
               {"name": "control", "weight": 50, "set": {}}, bold]}}  # fmt: skip
    await cp.publish(doc, token="tok-experimenter")
    before = [*_ids_in(0.0, 0.5, 2, "pitch"), *_ids_in(0.5, 1.0, 2, "pitch")]
    after = [*_ids_in(0.0, 0.5, 5, "pitch")[2:], *_ids_in(0.5, 1.0, 5, "pitch")[2:]]
    async with _sessions(cp, before):
        await _exposed(cp, 4, key="pitch")
        await cp.publish({"id": "disclosure", "match": {"kind": ["voice-agent-v1"]},
                          "set": {"system_prompt": "This call is recorded."},
                          "lock": ["system_prompt"]}, token="tok-compliance")  # fmt: skip
        async with _sessions(cp, after):

            async def answered() -> bool:  # every later session applied its first push
                for sid in after:
                    entries = await cp.log(sid)
                    if not any(e["status"] in ("acked", "unchanged")
                               and any(p["id"] == "pitch" for p in e["policies"])
                               for e in entries):  # fmt: skip
                        return False
                return True

            await eventually(answered, timeout=15)
            for sid in after[3:]:  # the lock's prompt runs, not the variant's
                shown = await cp.session(sid)
                assert shown["effective_config"]["system_prompt"] == "This call is recorded."
                assert any(r["variant"] == "bold" for r in shown["applied"])
            summary = await _summary(cp, "pitch")
            assert {v["name"]: v["exposed"] for v in summary["variants"]} == {
                "control": 5,
                "bold": 2,
            }
            rows = await _rows(cp, "pitch")
            assert all(rows[s]["exposed_at"] is None for s in after[3:])
            assert all(rows[s]["exposed_at"] is not None for s in before)


async def test_a_session_assigned_but_never_exposed_is_not_left_in_the_experiment_when_it_stops(
    cp: ControlPlaneUnderTest,
) -> None:
    """Its variant was refused (assigned, never exposed); the experiment is retired: its
    export row says it left (not ``live``, as if it still ran the experiment)."""
    doc = {"id": "pitch", "match": {"kind": ["voice-agent-v1"]},
           "experiment": {"key": "pitch", "variants": [
               {"name": "bold", "weight": 100, "set": {"system_prompt": "Sell hard."}},
               {"name": "control", "weight": 0, "set": {}}]}}  # fmt: skip
    async with _refusing(cp, "assigned-only", "system_prompt") as refused:
        await cp.publish(doc)
        await eventually(lambda: refused)
        row = (await _rows(cp, "pitch"))["assigned-only"]
        assert row["exposed_at"] is None and row["state"] != "left"
        await cp.call("DELETE", "/v1/policies/pitch", expect=200)

        async def left() -> dict[str, Any] | None:
            found = (await _rows(cp, "pitch")).get("assigned-only")
            return found if found is not None and found["state"] == "left" else None

        row = await eventually(left, timeout=5)
        assert row["exposed_at"] is None and row["left_at"] is not None
        assert (await _summary(cp, "pitch"))["exposed"] == 0


async def test_an_experimenter_variant_setting_a_compliance_locked_field_is_refused_at_publish(
    cp: ControlPlaneUnderTest,
) -> None:
    await cp.publish(
        {
            "id": "disclosure",
            "match": {"kind": ["voice-agent-v1"]},
            "set": {"system_prompt": "This call is recorded."},
            "lock": ["system_prompt"],
        },
        token="tok-compliance",
    )
    doc = {
        "id": "pitch",
        "match": {"kind": ["voice-agent-v1"]},
        "experiment": {
            "key": "pitch",
            "variants": [
                {"name": "control", "weight": 50, "set": {}},
                {"name": "bold", "weight": 50, "set": {"system_prompt": "Sell hard."}},
            ],
        },
    }
    body = await cp.call("POST", "/v1/policies", body=doc, token="tok-experimenter", expect=409)
    assert body["error"]["code"] == "field_locked"
    assert body["error"]["details"]["field"] == "system_prompt"
    assert body["error"]["details"]["policy"] == "disclosure"
    await cp.call("GET", "/v1/experiments/pitch", expect=404)  # nothing was created


@contextlib.asynccontextmanager
async def _slow_apps(
    cp: ControlPlaneUnderTest, delays: dict[str, float], refuse: set[str]
) -> AsyncIterator[None]:
    """Voice Agent control-channel apps answering each push after their own delay:
    ``applied``, or ``failed`` for the sessions in ``refuse``."""

    async def run(app: ControlClient, sid: str) -> None:
        async for push in app.pushes():
            await asyncio.sleep(delays[sid])
            if sid in refuse:
                await app.failed(push.version, "invalid_value: refused")
            else:
                await app.applied(push.version)

    async with contextlib.AsyncExitStack() as stack:
        tasks = []
        for sid in delays:
            app = ControlClient(cp.ws_base + "/v1/control", token=ADMIN, kind="voice-agent-v1",
                                model="voice-agent", session_id=sid)  # fmt: skip
            await stack.enter_async_context(app)
            tasks.append(asyncio.create_task(run(app, sid)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_stopping_an_experiment_mid_fan_out_leaves_one_coherent_state_per_session(
    cp: ControlPlaneUnderTest,
) -> None:
    """The experiment is retired while its pushes are still under way (Voice Agent apps: a
    session runs a configuration once its app reports it applied; each app answers after
    its own delay, up to 0.8 s, and every seventh refuses): every session is either exposed
    (backed by its log) and then left, or never ran a variant (no running entry names one,
    and its row, if any, does not say it is still in). The mix is checked to be a real race:
    some warm sessions exposed, some never."""
    ids = [f"stop-{n}" for n in range(120)]
    rng = random.Random(7)
    delays = {sid: rng.uniform(0.0, 0.8) for sid in ids}
    async with _slow_apps(cp, delays, refuse=set(ids[::7])):
        await cp.publish(_weights(50, 50))
        await asyncio.sleep(0.3)  # some apps answered, most not yet
        await cp.call("DELETE", f"/v1/policies/{KEY}", expect=200)

        async def settled() -> bool:
            return all(
                ls.push.in_flight is None and ls.push.desired_version == ls.push.sent_version
                for ls in cp.service.engine.live.values()
            )

        await eventually(settled, timeout=10)

        async def coherent() -> dict[str, Any]:  # as REST reads it once the book flushed
            rows = await _rows(cp)
            summary = await _summary(cp)
            problems = []
            for sid in ids:
                log = await cp.log(sid)
                ran = [
                    e["seq"]
                    for e in log
                    if e["status"] in ("acked", "unchanged")
                    and any(p["id"] == KEY and p["variant"] for p in e["policies"])
                ]
                row = rows.get(sid)
                if row is not None and row["exposed_at"] is not None:
                    if (problem := exposure_problem(row, log)) is not None:
                        problems.append(f"{sid}: {problem}")
                    if row["left_at"] is None or row["state"] != "left":
                        problems.append(f"{sid}: exposed, not left after the retire: {row}")
                else:
                    if ran:
                        problems.append(f"{sid}: entries {ran} ran a variant, no exposure: {row}")
                    if row is not None and row["state"] != "left":
                        problems.append(f"{sid}: never exposed, row says {row['state']!r}: {row}")
            assert not problems, "\n".join(problems)
            exposed = sum(1 for r in rows.values() if r["exposed_at"] is not None)
            assert summary["exposed"] == exposed
            return rows

        rows = await eventually(coherent, timeout=10)
        warm = collections.Counter(bool(r["exposed_at"]) for r in rows.values()
                                   if r["variant"] == "warm")  # fmt: skip
        assert warm[True] and warm[False], f"no race: {warm}"


async def test_a_seeded_three_way_split_is_honoured_and_the_report_counts_only_exposed(
    cp: ControlPlaneUnderTest, capsys: Any
) -> None:
    """150 sessions (ids drawn from a fixed seed: the outcome is deterministic) split 20/30/50;
    every fifth app never answers its push, so its session is assigned, never exposed (the
    control arm changes nothing: exposed at once). The summary, the CLI and the export count
    exactly the exposed sessions of each arm; the SRM p-value is the chi-squared one (two
    degrees of freedom: p = exp(-X²/2)); the assignment itself follows the weights."""
    rng = random.Random(20261207)
    ids = [f"ab-{rng.getrandbits(64):016x}" for _ in range(150)]
    silent = set(ids[::5])
    names, weights = ["control", "short", "long"], [20, 30, 50]
    doc = {
        "id": "split",
        "match": {"kind": ["voice-agent-v1"]},
        "experiment": {
            "key": "split",
            "variants": [
                {"name": "control", "weight": 20, "set": {}},
                {"name": "short", "weight": 30, "set": {"keyterms": ["short"]}},
                {"name": "long", "weight": 50, "set": {"keyterms": ["long", "longer"]}},
            ],
        },
    }
    arm = {
        sid: names[pick_variant([w * 1000 for w in weights], bucket("split", "split", sid))]
        for sid in ids
    }
    assigned = collections.Counter(arm.values())
    expected = collections.Counter(arm[s] for s in ids if arm[s] == "control" or s not in silent)
    # the assignment honours the weights (deterministic for this seed; p far above 0.001)
    x2 = sum(
        (assigned[n] - 150 * w / 100) ** 2 / (150 * w / 100)
        for n, w in zip(names, weights, strict=True)
    )
    assert math.exp(-x2 / 2) > 0.05, assigned
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(_sessions(cp, [s for s in ids if s not in silent]))
        for sid in silent:  # registered, never answering
            await stack.enter_async_context(
                ControlClient(
                    cp.ws_base + "/v1/control",
                    token=ADMIN,
                    kind="voice-agent-v1",
                    model="voice-agent",
                    session_id=sid,
                )
            )
        await cp.publish(doc)
        await _exposed(cp, sum(expected.values()), key="split")
        await asyncio.sleep(3.5)  # the silent apps' pushes end `unverified` (ack timeout 3 s)
        summary = await _summary(cp, "split")
        got = {v["name"]: v["exposed"] for v in summary["variants"]}
        assert got == {n: expected[n] for n in names}
        total = sum(expected.values())
        x2 = sum(
            (expected[n] - total * w / 100) ** 2 / (total * w / 100)
            for n, w in zip(names, weights, strict=True)
        )
        assert summary["srm"]["statistic"] == pytest.approx(x2)
        assert summary["srm"]["p_value"] == pytest.approx(math.exp(-x2 / 2))
        for v, w in zip(summary["variants"], weights, strict=True):
            assert v["expected_exposed"] == pytest.approx(total * w / 100)
            assert v["exposed_share"] == pytest.approx(expected[v["name"]] / total)
        code, shown = await _cli(cp, capsys, "experiments", "show", "split")
        assert code == 0 and shown == summary | {"srm": shown["srm"]}
        rows = await _rows(cp, "split")
        assert len(rows) == 150  # every assignment is exported, exposed or not
        exposed_rows = collections.Counter(r["variant"] for r in rows.values() if r["exposed_at"])
        assert exposed_rows == expected
        assert all(rows[s]["variant"] == arm[s] for s in ids)


AGENT_KEY = {"Authorization": "Bearer test-key"}
RESUME_DOC = {
    "id": "pitch",
    "match": {"kind": ["voice-agent-v1"]},
    "experiment": {
        "key": "pitch",
        "variants": [
            {"name": "calm", "weight": 50, "set": {"system_prompt": "Be calm."}},
            {"name": "bold", "weight": 50, "set": {"system_prompt": "Be bold."}},
        ],
    },
}


async def _agent(cp: ControlPlaneUnderTest, first: dict[str, Any]) -> tuple[Any, str]:
    ws = await websockets.connect(cp.ws_base + "/v1/ws", additional_headers=AGENT_KEY)
    await ws.send(json.dumps(first))
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if message["type"] == "session.ready":
            return ws, str(message["session_id"])


async def test_a_resumed_voice_agent_call_keeps_its_variant(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """bucket_by session_id: a call whose upstream connection dropped and that the client
    resumes through the gateway (a new control-plane session of the same upstream session)
    stays in the arm it was in; the upstream never switches arms mid-call."""
    await cp.publish(RESUME_DOC)
    calls: dict[str, str] = {}  # upstream id -> the prompt it started with
    sockets = []
    # session ids are random: open calls until each arm holds at least 3 (8 calls alone
    # were all in one arm once in 128 runs)
    while min(list(calls.values()).count(p) for p in ("Be calm.", "Be bold.")) < 3:
        assert len(calls) < 40, f"the split put {len(calls)} calls in one arm: {calls}"
        ws, upstream_id = await _agent(cp, {"type": "session.update", "session": {}})
        sockets.append(ws)
        calls[upstream_id] = (await emulator.session(upstream_id))["config"]["system_prompt"]
    for upstream_id in calls:  # each upstream connection drops at the next message
        await emulator.faults(upstream_id, {"drop_after_messages": 1})
    await cp.publish(
        {"id": "terms", "match": {"kind": ["voice-agent-v1"]}, "set": {"keyterms": ["Acme"]}}
    )
    await eventually(lambda: not cp.service.engine.live, timeout=10)
    for ws in sockets:
        await ws.close()
    resumed = []
    for upstream_id in calls:
        ws, again = await _agent(cp, {"type": "session.resume", "session_id": upstream_id})
        assert again == upstream_id
        resumed.append(ws)
    await asyncio.sleep(1.0)  # any push the resumed sessions get has gone by now
    switched = {}
    for upstream_id, prompt in calls.items():
        now = (await emulator.session(upstream_id))["config"]["system_prompt"]
        if now != prompt:
            switched[upstream_id] = (prompt, now)
    for ws in resumed:
        await ws.close()
    assert switched == {}, f"resumed calls switched arms mid-call: {switched}"


async def test_a_streaming_connect_the_upstream_refuses_exposes_nobody(
    cp: ControlPlaneUnderTest,
) -> None:
    """A Streaming v3 gateway session starts on its variant (merged into the connect); the
    upstream refuses the connect (``Error``, no ``Begin``): no upstream session ever ran the
    variant, so nobody is exposed. The accepted connect is exposed once ``Begin`` came, as
    of its connect entry."""
    doc = {"id": "sx", "match": {"kind": ["streaming-v3"]},
           "experiment": {"key": "sx", "variants": [
               {"name": "warm", "weight": 100, "set": {"keyterms": ["welcome"]}},
               {"name": "control", "weight": 0, "set": {}}]}}  # fmt: skip
    await cp.publish(doc)
    headers = {"Authorization": "test-key"}
    with pytest.raises(websockets.ConnectionClosedError) as refused:
        async with websockets.connect(
            cp.ws_base + "/v3/ws?sample_rate=16000&speech_model=bogus-model",
            additional_headers=headers,
        ) as ws:
            error = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert error["type"] == "Error"
            await asyncio.wait_for(ws.recv(), 5)
    assert refused.value.rcvd is not None and refused.value.rcvd.code == 3006
    async with websockets.connect(
        cp.ws_base + "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro",
        additional_headers=headers,
    ) as ws:
        begin = json.loads(await asyncio.wait_for(ws.recv(), 5))
        sid = cp.live_by_upstream(begin["id"])
        summary = await _exposed(cp, 1, key="sx")
    await eventually(lambda: not cp.service.engine.live)
    await asyncio.sleep(0.6)  # a flush later: still the one exposure
    summary = await _summary(cp, "sx")
    assert summary["exposed"] == 1 and summary["variants"][0]["exposed"] == 1
    rows = await _rows(cp, "sx")
    assert [s for s, r in rows.items() if r["exposed_at"]] == [sid]
    connect = (await cp.log(sid))[0]
    assert (rows[sid]["exposed_seq"], connect["cause"]) == (connect["seq"], "connect")
