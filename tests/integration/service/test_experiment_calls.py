"""Exposures are counted per call (docs/experiments.md#exposures): a Voice Agent call resumed
through the gateway (``session.resume``, real sockets to the emulator) is a second session of
the same call, in the same arm; it keeps its own exposure row (its entry proves it), and the
summary, the SRM check, the timeline, the metric, the export's ``counted`` column, the CLI and
a restart all count the call once."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from controlplane.cli.main import main
from controlplane.edges.client import ControlClient
from sessions.exposures import FileExposureStore
from tests.integration.service.conftest import (
    ADMIN,
    ControlPlaneUnderTest,
    Emulator,
    eventually,
    serving,
)
from tests.integration.service.test_experiment_truth import _agent, _cli, _rows
from tests.integration.service.test_experiments import (
    KEY,
    _doc,
    _exposed,
    _ids,
    _sessions,
    _summary,
)

pytestmark = pytest.mark.timeout(60)

DOC = {
    "id": "calls",
    "match": {"kind": ["voice-agent-v1"]},
    "experiment": {
        "key": "calls",
        "variants": [
            {"name": "calm", "weight": 100, "set": {"system_prompt": "Be calm."}},
            {"name": "bold", "weight": 0, "set": {"system_prompt": "Be bold."}},
        ],
    },
}


async def _metric(cp: ControlPlaneUnderTest) -> float:
    text = await cp.call("GET", "/metrics", expect=200)
    found = re.search(
        r'controlplane_experiment_exposures_total\{experiment="calls",variant="calm"\} (\S+)', text
    )
    return float(found.group(1)) if found else 0.0


async def test_a_resumed_call_is_exposed_twice_and_counted_once_everywhere(
    cp: ControlPlaneUnderTest, emulator: Emulator, capsys: Any
) -> None:
    await cp.publish(DOC)
    ws, upstream_id = await _agent(cp, {"type": "session.update", "session": {}})
    first = cp.live_by_upstream(upstream_id)
    await _exposed(cp, 1, key="calls")
    await emulator.faults(upstream_id, {"drop_after_messages": 1})  # drops at the next message
    await cp.publish(
        {"id": "terms", "match": {"kind": ["voice-agent-v1"]}, "set": {"keyterms": ["Acme"]}}
    )
    await eventually(lambda: not cp.service.engine.live, timeout=10)
    await ws.close()
    resumed, again = await _agent(cp, {"type": "session.resume", "session_id": upstream_id})
    assert again == upstream_id
    second = cp.live_by_upstream(upstream_id)
    assert second != first

    async def both_exposed() -> dict[str, dict[str, Any]] | None:
        rows = await _rows(cp, "calls")
        return rows if sum(1 for r in rows.values() if r["exposed_at"]) == 2 else None

    rows = await eventually(both_exposed, timeout=10)
    await resumed.close()
    # the same call, the same arm, each session's exposure backed by its own log entry
    assert {sid: (r["call_id"], r["variant"]) for sid, r in rows.items()} == {
        first: (first, "calm"),
        second: (first, "calm"),
    }
    assert {sid: r["counted"] for sid, r in rows.items()} == {first: True, second: False}
    await asyncio.sleep(0.6)  # a flush later: still one
    summary = await _summary(cp, "calls")
    assert summary["exposed"] == 1 and summary["variants"][0]["exposed"] == 1
    timeline = await cp.call("GET", "/v1/experiments/calls/timeline", expect=200)
    assert (timeline["exposed"], timeline["binned"]) == (1, 1)
    assert [b["cumulative"] for b in timeline["bins"]] == [1]
    assert await _metric(cp) == 1.0
    counted = [r for r in rows.values() if r["counted"]]
    assert len(counted) == summary["exposed"]  # the export's counted rows are the summary's
    code, report = await _cli(cp, capsys, "experiments", "verify", "calls")
    assert (code, report["checked"], report["problems"]) == (0, 2, [])
    code, shown = await _cli(cp, capsys, "experiments", "show", "calls")
    assert code == 0 and shown["exposed"] == 1
    capsys.readouterr()
    argv = ["experiments", "assignments", "calls", "--url", cp.base, "--token", "tok-viewer"]
    assert await asyncio.to_thread(main, argv) == 0
    head, *lines = capsys.readouterr().out.splitlines()
    col = head.split().index("COUNTED")
    assert {line.split()[0]: line.split()[col] for line in lines} == {first: "yes", second: "no"}
    # what a restart rebuilds from the rows on disk counts the call once too
    store = FileExposureStore(cp.data_dir / "experiments" / "exposures.jsonl")
    await store.start()
    assert await store.counts("calls", 1) == {"calm": 1}
    assert sum(sum(b.values()) for b in (await store.timeline("calls", 1)).values()) == 1
    raw = [json.loads(line) for line in (cp.data_dir / "experiments" / "exposures.jsonl")
           .read_text().splitlines()]  # fmt: skip
    assert {r["call_id"] for r in raw} == {first}


@pytest.mark.parametrize("kind", ["streaming-v3", "voice-agent-v1"])
async def test_a_variant_applied_after_the_ack_timeout_is_exposed_when_the_late_answer_comes(
    cp_settings: Any, kind: str
) -> None:
    """A control-channel app reports ``applied`` after the acknowledgement timeout: the record
    says the session runs the variant from that late entry on (config-at applies it), so the
    session is exposed as of it, on either dialect (Streaming v3's late answer is
    ``unverified`` with the late-answer note, a Voice Agent's ``acked``)."""
    doc = {"id": "late", "match": {"kind": [kind]},
           "experiment": {"key": "late", "variants": [
               {"name": "warm", "weight": 100, "set": {"keyterms": ["welcome"]}},
               {"name": "control", "weight": 0, "set": {}}]}}  # fmt: skip
    model = "universal-3-5-pro" if kind == "streaming-v3" else "voice-agent"
    async with serving(cp_settings(ack_timeout_s=0.3)) as cp:
        async with ControlClient(cp.ws_base + "/v1/control", token=ADMIN, kind=kind,
                                 model=model) as app:  # fmt: skip
            await cp.publish(doc)
            push = await asyncio.wait_for(anext(app.pushes()), 5)
            sid = app.session_id or ""

            async def timed_out() -> bool:
                return any(e["status"] == "unverified" and e["error"] for e in await cp.log(sid))

            await eventually(timed_out)
            assert (await _summary(cp, "late"))["exposed"] == 0  # not known to run it yet
            await app.applied(push.version)

            async def late_entry() -> dict[str, Any] | None:
                log = await cp.log(sid)
                return (
                    log[-1]
                    if "after the acknowledgement timeout" in str(log[-1]["error"])
                    else None
                )

            entry = await eventually(late_entry)
            summary = await _exposed(cp, 1, key="late")
            assert summary["variants"][0]["exposed"] == 1
            [row] = (await _rows(cp, "late")).values()
            assert (row["exposed_seq"], row["exposed_hash"]) == (entry["seq"], entry["hash"])
            at = await cp.call("GET", f"/v1/sessions/{sid}/config-at?at={entry['at'] + 0.001!r}",
                               expect=200)  # fmt: skip
            assert at["config"]["keyterms"] == ["welcome"]  # the record: it runs the variant


async def test_a_session_id_registered_again_keeps_its_first_exposure(
    cp: ControlPlaneUnderTest, capsys: Any
) -> None:
    """A control-channel app reconnects after its session ended and registers the same
    session id (same bucket, same arm, the same hash chain continued): its exposure row is
    kept for ever with the entry that first exposed it; the new connection's exposure once
    replaced it (exposed_at and exposed_seq of the second connection, the first lost)."""
    ids = _ids(KEY, control=0, warm=1)
    await cp.publish(_doc())
    async with _sessions(cp, ids):
        await _exposed(cp, 1)
    await eventually(lambda: not cp.service.engine.live, timeout=10)
    [first] = (await cp.call("GET", f"/v1/experiments/{KEY}/assignments", expect=200))["items"]
    async with _sessions(cp, ids):

        async def reconnected_ran_it() -> bool:
            log = await cp.log(ids[0])
            return sum(1 for e in log if e["status"] == "acked") == 2

        await eventually(reconnected_ran_it)

        async def flushed() -> dict[str, Any] | None:  # the book wrote the reconnection's row
            [row] = (await cp.call("GET", f"/v1/experiments/{KEY}/assignments",
                                   expect=200))["items"]  # fmt: skip
            return row if row["state"] != "ended" else None

        again = await eventually(flushed)
    assert again["state"] != "ended"
    for name in ("exposed_at", "exposed_seq", "exposed_hash", "first_assigned_at", "variant"):
        assert again[name] == first[name], (name, first[name], again[name])
    assert again["counted"] is True and (await _summary(cp))["exposed"] == 1
    code, report = await _cli(cp, capsys, "experiments", "verify", KEY)
    assert (code, report["problems"]) == (0, [])
