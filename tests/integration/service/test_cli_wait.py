"""Issue 24, CLI: ``policy apply --wait`` and ``policy rollout --watch`` against the real
service with live control-channel sessions (apps that acknowledge, fail or hold pushes)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.cli.main import main
from controlplane.cli.rollout import EXIT_HALTED, EXIT_REJECTED, EXIT_TIMEOUT
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, eventually
from tests.integration.service.fleet import Fleet

LIVE = 50  # the 1,000: loadtest/bench_apply_wait.py, docs/benchmarks.md


@pytest.fixture
async def fleet(cp: ControlPlaneUnderTest) -> AsyncIterator[Fleet]:
    f = Fleet(cp.ws_base)
    try:
        yield f
    finally:
        await f.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTROLPLANE_URL", raising=False)
    monkeypatch.delenv("CONTROLPLANE_TOKEN", raising=False)


def policy_file(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / f"{doc['id']}.json"
    path.write_text(json.dumps(doc))
    return str(path)


async def cli(cp: ControlPlaneUnderTest, *argv: str) -> int:
    """``main`` off the event loop (it blocks on urllib while the service answers)."""
    return await asyncio.to_thread(main, [*argv, "--url", cp.base, "--token", ADMIN])


async def test_apply_wait_prints_progress_and_exits_0_when_every_session_acknowledged(
    cp: ControlPlaneUnderTest, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await fleet.open_apps(LIVE, "ack", labels={"team": "w"})
    doc = {"id": "wait", "match": {"labels": {"team": ["w"]}}, "set": {"system_prompt": "v1"}}
    path = policy_file(tmp_path, doc)
    code = await cli(cp, "policy", "apply", "-f", path, "--wait", "--interval", "0.2")
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("published policy wait version 1")
    progress = [line for line in err.splitlines() if line.startswith("policy wait version 1:")]
    assert progress, err
    assert progress[-1].startswith(f"policy wait version 1: {LIVE}/{LIVE} sessions final "
                                   f"(acked {LIVE}, ")  # fmt: skip
    assert err.splitlines()[-1].startswith(f"controlplane: converged: {LIVE} session(s) final")
    body = await cp.call("GET", "/v1/policies/wait/rollout", expect=200)
    assert body["totals"]["acknowledged"] == LIVE

    # --json: stdout is one JSON document, progress still on stderr
    doc["set"] = {"system_prompt": "v2"}
    path = policy_file(tmp_path, doc)
    code = await cli(cp, "policy", "apply", "-f", path, "--wait", "--json", "--interval", "0.2")
    out, err = capsys.readouterr()
    assert code == 0, err
    answer = json.loads(out)
    assert answer["outcome"] == "converged" and answer["exit_code"] == 0
    assert answer["policy"]["version"] == 2
    assert answer["progress"]["acknowledged"] == LIVE and answer["progress"]["targeted"] == LIVE
    assert answer["progress"]["elsewhere"] == 0
    assert "policy wait version 2:" in err


async def test_apply_wait_exits_3_when_the_upstream_rejects_the_version(
    cp: ControlPlaneUnderTest, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await fleet.open_apps(8, "ack", labels={"team": "r"})
    await fleet.open_apps(2, "fail", labels={"team": "r"})
    doc = {"id": "refused", "match": {"labels": {"team": ["r"]}},
           "set": {"system_prompt": "nope"}, "guard": {"enabled": False}}  # fmt: skip
    code = await cli(cp, "policy", "apply", "-f", policy_file(tmp_path, doc), "--wait",
                     "--interval", "0.2")  # fmt: skip
    err = capsys.readouterr().err
    assert code == EXIT_REJECTED == 3, err
    assert "controlplane: rejected: 2 of 10 session(s) refused version 1" in err


async def test_apply_wait_exits_4_when_the_guard_halts_the_version(
    cp: ControlPlaneUnderTest, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await fleet.open_apps(4, "ack", labels={"team": "h"})
    await fleet.open_apps(2, "fail", labels={"team": "h"})
    doc = {"id": "halting", "match": {"labels": {"team": ["h"]}},
           "set": {"system_prompt": "x"}, "guard": {"min_sessions": 5}}  # fmt: skip
    code = await cli(cp, "policy", "apply", "-f", policy_file(tmp_path, doc), "--wait",
                     "--interval", "0.2")  # fmt: skip
    err = capsys.readouterr().err
    assert code == EXIT_HALTED == 4, err
    assert "controlplane: halted: the rollout guard stopped version 1" in err


async def test_apply_wait_exits_5_on_timeout_while_acknowledgements_are_awaited(
    cp: ControlPlaneUnderTest, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await fleet.open_apps(3, "hold", labels={"team": "t"})  # never answer (ack timeout 3 s)
    doc = {"id": "slow", "match": {"labels": {"team": ["t"]}}, "set": {"system_prompt": "x"}}
    code = await cli(cp, "policy", "apply", "-f", policy_file(tmp_path, doc), "--wait",
                     "--timeout", "1", "--interval", "0.2")  # fmt: skip
    err = capsys.readouterr().err
    assert code == EXIT_TIMEOUT == 5, err
    assert "in flight: pending 0, sent 3" in err
    assert "controlplane: timed out after" in err


async def test_rollout_watch_ends_when_the_current_version_converges(
    cp: ControlPlaneUnderTest, fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    apps = await fleet.open_apps(4, "hold", labels={"team": "v"})
    await cp.publish({"id": "watched", "match": {"labels": {"team": ["v"]}},
                      "set": {"system_prompt": "x"}})  # fmt: skip
    watch = asyncio.create_task(cli(cp, "policy", "rollout", "watched", "--watch",
                                    "--interval", "0.2"))  # fmt: skip
    await asyncio.sleep(1.0)
    assert not watch.done()  # four pushes await their acknowledgement
    for app in apps:
        push = await app.next_push(5)
        assert push is not None
        await app.client.applied(push.version)
    code = await asyncio.wait_for(watch, 10)
    out, err = capsys.readouterr()
    assert code == 0, err
    tables = out.strip().split("\n\n")
    assert len(tables) >= 2  # redrawn when it changed
    first, last = tables[0].splitlines(), tables[-1].splitlines()
    assert first[2].split()[2:] == ["TARGETED", "UNCHANGED", "SENT", "ACKED", "UNVERIFIED",
                                    "REJECTED", "PENDING", "FAILURES"]  # fmt: skip
    assert first[-1].split() == ["total", "4", "0", "4", "0", "0", "0", "0", "0"]
    assert last[-1].split() == ["total", "4", "0", "0", "4", "0", "0", "0", "0"]
    assert "converged" in err


async def status_by_session(cp: ControlPlaneUnderTest, *argv: str) -> dict[tuple[str, str], str]:
    """``sessions status --json``: (session id, policy) -> status."""
    out: list[str] = []

    def run() -> int:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            code = main(["sessions", "status", *argv, "--json", "--url", cp.base,
                         "--token", ADMIN])  # fmt: skip
        out.append(buffer.getvalue())
        return code

    assert await asyncio.to_thread(run) == 0
    return {(r["session_id"], r["policy"]): r["status"] for r in json.loads(out[0])}


async def test_sessions_status_per_session_and_policy(
    cp: ControlPlaneUnderTest, fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    acker = await fleet.app("ack", labels={"team": "s"})
    failer = await fleet.app("fail", labels={"team": "s"})
    holder = await fleet.app("hold", labels={"team": "s"})
    streaming = await fleet.app("ack", kind="streaming-v3", labels={"team": "s"})
    waiting = await fleet.app("ack", labels={"team": "n"})
    await cp.publish({"id": "st", "match": {"labels": {"team": ["s"]}},
                      "set": {"system_prompt": "x", "prompt": "x"},
                      "guard": {"enabled": False}})  # fmt: skip
    await cp.publish({"id": "turn", "match": {"labels": {"team": ["n"]}},
                      "set": {"system_prompt": "t"}, "apply": "next_turn",
                      "apply_deadline_s": 60})  # fmt: skip
    expected = {
        (acker.session_id, "st"): "SYNCED",
        (failer.session_id, "st"): "REJECTED",
        (holder.session_id, "st"): "SENT",  # within the 3 s acknowledgement timeout
        (streaming.session_id, "st"): "UNVERIFIED",
        (waiting.session_id, "turn"): "NOT SENT",  # waits for a turn boundary
    }

    async def settled() -> bool:
        return await status_by_session(cp) == expected

    await eventually(settled, timeout=2.5, interval=0.2)
    only = await status_by_session(cp, "--policy", "turn")
    assert only == {(waiting.session_id, "turn"): "NOT SENT"}

    # the held push is not acknowledged within the timeout: STALE
    async def stale() -> bool:
        return (await status_by_session(cp, "--policy", "st"))[(holder.session_id, "st")] == "STALE"

    await eventually(stale, timeout=8, interval=0.3)
    await waiting.client.turn_boundary()  # the push goes out and is acknowledged

    async def synced() -> bool:
        got = await status_by_session(cp, "--policy", "turn")
        return got == {(waiting.session_id, "turn"): "SYNCED"}

    await eventually(synced, timeout=5, interval=0.2)
    capsys.readouterr()
    code = await cli(cp, "sessions", "status", "--policy", "st")
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0].split() == ["SESSION", "KIND", "NODE", "POLICY", "VERSION", "VARIANT",
                                "STATUS", "SINCE", "SEQ"]  # fmt: skip
    row = next(line for line in lines if line.startswith(failer.session_id))
    assert row.split()[:7] == [failer.session_id, "voice-agent-v1", "node-a", "st", "1", "-",
                               "REJECTED"]  # fmt: skip


async def test_rollout_watch_follows_the_stream_not_the_polling_interval(
    cp: ControlPlaneUnderTest, fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    apps = await fleet.open_apps(3, "hold", labels={"team": "st"})
    await cp.publish({"id": "streamed", "match": {"labels": {"team": ["st"]}},
                      "set": {"system_prompt": "x"}})  # fmt: skip
    # a 60 s polling interval: only the event stream can show the acknowledgements in time
    watch = asyncio.create_task(cli(cp, "policy", "rollout", "streamed", "--watch",
                                    "--json", "--interval", "60"))  # fmt: skip
    await asyncio.sleep(0.5)
    for app in apps:
        push = await app.next_push(5)
        assert push is not None
        await app.client.applied(push.version)
    code = await asyncio.wait_for(watch, 8)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "polling" not in err
    bodies = [json.loads(line) for line in out.splitlines()]
    assert bodies[-1]["totals"]["acknowledged"] == 3


async def test_rollout_watch_polls_when_the_server_ends_the_stream(
    cp: ControlPlaneUnderTest, fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    apps = await fleet.open_apps(2, "hold", labels={"team": "pl"})
    await cp.publish({"id": "polled", "match": {"labels": {"team": ["pl"]}},
                      "set": {"system_prompt": "x"}})  # fmt: skip
    cp.service.draining = True  # the stream ends at once (event `end`, reason draining)
    try:
        watch = asyncio.create_task(cli(cp, "policy", "rollout", "polled", "--watch",
                                        "--json", "--interval", "0.2"))  # fmt: skip
        await asyncio.sleep(1.0)
        assert not watch.done()
        for app in apps:
            push = await app.next_push(5)
            assert push is not None
            await app.client.applied(push.version)
        code = await asyncio.wait_for(watch, 10)
    finally:
        cp.service.draining = False
    err = capsys.readouterr().err
    assert code == 0, err
    assert "rollout stream ended by the server; polling every 0.2s" in err
