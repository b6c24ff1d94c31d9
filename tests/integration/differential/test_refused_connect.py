"""A Streaming v3 gateway connect the upstream refuses (``Error`` before ``Begin``) and its
policies' rollout status and guard, as a refused Voice Agent connect's
(tests/integration/service/test_connect_guard.py): the policy versions merged into the
connect are ``rejected`` (not running) in the rollout status, and the refusal counts against
the versions owning the fields its text names (docs/policies.md#guard).

The emulator here caps the ``prompt`` at 10 characters (an upstream that tightened a limit
after the policy was published): a policy's longer ``prompt``, merged into the connect query,
is refused.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from controlplane.config import Settings
from emulator.server import build_app as build_emulator
from emulator.settings import EmulatorSettings
from tests.integration.service.conftest import (
    TOKENS,
    ControlPlaneUnderTest,
    _serve,
    eventually,
    serving,
)

STREAMING = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"
GUARD = {"min_sessions": 1, "max_failure_ratio": 0.0}


@pytest.fixture
async def strict(tmp_path: Path) -> AsyncIterator[ControlPlaneUnderTest]:
    emulator = build_emulator(EmulatorSettings(prompt_max_chars=10))
    em_runner, em_port = await _serve(emulator)
    settings = Settings(
        listen="127.0.0.1:0", data_dir=tmp_path / "data", node_id="node-a", tokens=TOKENS,
        upstream_streaming_url=f"ws://127.0.0.1:{em_port}/v3/ws",
        upstream_agent_url=f"ws://127.0.0.1:{em_port}/v1/ws",
        ack_timeout_s=3.0, shutdown_grace_s=0.5,
    )  # fmt: skip
    async with serving(settings) as cp:
        yield cp
    await em_runner.cleanup()


async def _rollout(cp: ControlPlaneUnderTest, policy_id: str) -> dict[str, Any]:
    return dict(await cp.call("GET", f"/v1/policies/{policy_id}/rollout", expect=200))


async def test_a_refused_streaming_connect_is_rejected_in_rollout_status_and_guarded(
    strict: ControlPlaneUnderTest,
) -> None:
    cp = strict
    await cp.publish({"id": "long", "match": {"kind": ["streaming-v3"]},
                      "set": {"prompt": "a prompt longer than ten"}, "guard": GUARD})  # fmt: skip
    await cp.publish({"id": "terms", "match": {"kind": ["streaming-v3"]},
                      "set": {"keyterms": ["Acme"]}, "guard": GUARD})  # fmt: skip
    engine = cp.service.engine
    with pytest.raises(websockets.ConnectionClosedError):  # (the upstream closes after it)
        async with websockets.connect(
            cp.ws_base + STREAMING, additional_headers={"Authorization": "test-key"}
        ) as ws:
            [ls] = await eventually(lambda: list(engine.live.values()), timeout=5, interval=0)
            error = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert error["type"] == "Error" and "prompt" in error["error"], error
            await asyncio.wait_for(ws.recv(), 5)
    log = await cp.log(ls.session.id)
    assert [(e["cause"], e["status"]) for e in log] == [("connect", "sent"),
                                                       ("connect", "rejected")]  # fmt: skip
    # neither version ran on that session: its rollout status says rejected (was: unchanged,
    # i.e. running, while the session lived), as a refused Voice Agent connect's
    assert {p: s[2] for p, s in ls.policy_status.items()} == {
        "long": "rejected", "terms": "rejected"}  # fmt: skip
    # the refusal counts against the version owning the field its text names; the rider is
    # not charged (the session ended at once: a halt needs live targeted sessions)
    failures = {p: (await _rollout(cp, p))["totals"] for p in ("long", "terms")}
    assert {p: t["guard_failures"] for p, t in failures.items()} == {"long": 1, "terms": 0}
