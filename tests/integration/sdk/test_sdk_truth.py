"""The official AssemblyAI Python SDK (``AsyncRealTimeTranscriber``), unchanged, streaming audio
through the gateway while policies change under it: after every step the record (config-at,
the session object, the log) equals what the emulator runs, and the SDK sees only events of
its own protocol (no control-plane frame it does not understand, no error it did not cause).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from assemblyai.streaming.v3 import (
    AsyncRealTimeTranscriber,
    BeginEvent,
    RealTimeError,
    RealTimeEvents,
    RealTimeParameters,
    RealTimeSessionParameters,
    RealTimeTranscriberOptions,
    WarningEvent,
)

from tests.integration.sdk.truth import record_problems, settle
from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator, eventually

pytestmark = pytest.mark.timeout(90)
CHUNK = b"\x00\x00" * 1600  # 100 ms of 16 kHz silence


@dataclass
class Sdk:
    client: AsyncRealTimeTranscriber
    begins: list[BeginEvent] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    warnings: list[WarningEvent] = field(default_factory=list)
    errors: list[RealTimeError] = field(default_factory=list)

    @property
    def upstream_id(self) -> str:
        return self.begins[0].id


@contextlib.asynccontextmanager
async def streaming_sdk(
    cp: ControlPlaneUnderTest, path: str = "", model: str = "universal-3-5-pro"
) -> AsyncIterator[Sdk]:
    """The SDK connected through the gateway (``path``: e.g. ``/labels/region=eu``), sending
    100 ms of audio every 100 ms until the block ends (then it terminates the session)."""
    client = AsyncRealTimeTranscriber(
        RealTimeTranscriberOptions(api_key="test-key", api_host=f"{cp.ws_base}{path}")
    )
    sdk = Sdk(client)
    client.on(RealTimeEvents.Begin, lambda _c, e: sdk.begins.append(e))
    for kind in RealTimeEvents:
        if kind is not RealTimeEvents.Error:
            client.on(kind, lambda _c, _e, k=kind: sdk.events.append(k.value))
    client.on(RealTimeEvents.Warning, lambda _c, e: sdk.warnings.append(e))
    client.on(RealTimeEvents.Error, lambda _c, e: sdk.errors.append(e))
    await client.connect(RealTimeParameters(sample_rate=16000, speech_model=model))

    async def audio() -> None:
        while True:
            await client.stream(CHUNK)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(audio())
    try:
        await eventually(lambda: sdk.begins)
        yield sdk
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.disconnect(terminate=True)


async def _truthful(cp: ControlPlaneUnderTest, emulator: Emulator, sdk: Sdk, step: str) -> None:
    await settle(cp, emulator, sdk.upstream_id)
    problems = await record_problems(cp, emulator, sdk.upstream_id)
    assert not problems, f"after {step}: {problems}"


def _unknown_frames(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("assemblyai") and "Unsupported event" in r.getMessage()
    ]


async def test_python_sdk_session_record_equals_the_upstream_through_pushes_races_and_a_lock(
    cp: ControlPlaneUnderTest, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    eu = {
        "id": "eu",
        "match": {"labels": {"region": "eu"}},
        "set": {"prompt": "Transcribe the caller.", "keyterms": ["Acme"]},
    }
    await cp.publish(eu)
    async with streaming_sdk(cp, "/labels/region=eu") as sdk:
        await _truthful(cp, emulator, sdk, "connect")
        # mid-stream pushes: prompt and keyterms, turn silences, agent context
        await cp.publish({**eu, "set": {"prompt": "Transcribe carefully.", "keyterms": ["Zed"]}})
        await cp.publish(
            {
                "id": "turns",
                "match": {"labels": {"region": "eu"}},
                "set": {"min_turn_silence_ms": 300, "max_turn_silence_ms": 2000},
            }
        )
        await cp.publish(
            {
                "id": "context",
                "match": {"labels": {"region": "eu"}},
                "set": {"agent_context": "The agent asked for an order number."},
            }
        )
        await _truthful(cp, emulator, sdk, "three mid-stream pushes")
        updates = await emulator.updates(sdk.upstream_id)
        assert {"agent_context", "min_turn_silence", "prompt"} <= {k for u in updates for k in u}

        # the SDK's own update racing a push of the same fields
        await asyncio.gather(
            sdk.client.set_params(
                RealTimeSessionParameters(keyterms_prompt=["Mine"], max_turn_silence=1500)
            ),
            cp.publish(
                {
                    "id": "turns",
                    "match": {"labels": {"region": "eu"}},
                    "set": {"min_turn_silence_ms": 400, "max_turn_silence_ms": 2500},
                }
            ),
            cp.publish({**eu, "set": {"prompt": "Transcribe carefully.", "keyterms": ["Yak"]}}),
        )
        await _truthful(cp, emulator, sdk, "a client update racing two pushes")

        # a compliance lock: the SDK's update of the locked field is stripped, and it is told
        await cp.publish(
            {
                "id": "lock",
                "match": {"labels": {"region": "eu"}},
                "priority": 10,
                "set": {"prompt": "Compliance prompt."},
                "lock": ["prompt"],
            },
            token="tok-compliance",
        )
        await _truthful(cp, emulator, sdk, "a lock")
        before = len(await emulator.updates(sdk.upstream_id))
        await sdk.client.set_params(
            RealTimeSessionParameters(prompt="My own prompt", vad_threshold=0.6)
        )
        await eventually(lambda: sdk.warnings)
        assert sdk.warnings[0].warning_code == 3010 and "prompt" in sdk.warnings[0].warning
        await _truthful(cp, emulator, sdk, "a locked client update")
        after = await emulator.updates(sdk.upstream_id)
        assert after[before:] == [{"type": "UpdateConfiguration", "vad_threshold": 0.6}]
        assert (await emulator.session(sdk.upstream_id))["config"]["prompt"] == "Compliance prompt."
        client_entries = [e for e in await cp.log(sdk.upstream_id) if e["cause"] == "client"]
        assert [e["status"] for e in client_entries][-2:] == ["rejected", "sent"]
        assert sdk.errors == []
    ended = await cp.session(sdk.upstream_id)
    assert ended["state"] == "ended"
    assert "Termination" in sdk.events and "Begin" in sdk.events
    assert set(sdk.events) <= {"Begin", "Turn", "SpeechStarted", "Warning", "Termination"}
    assert _unknown_frames(caplog) == []
    assert len(sdk.warnings) == 1  # only the one its own locked update drew


async def test_the_sdk_terminating_while_a_push_goes_out_leaves_a_truthful_record(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """The SDK's own close (``Terminate``) races a push: whichever reached the upstream
    first, the ended session's record says what the upstream ran until the end."""
    for n in range(3):
        async with streaming_sdk(cp) as sdk:
            await cp.publish({"id": "race", "set": {"keyterms": [f"Close{n}"]}})
            await _truthful(cp, emulator, sdk, "the first push")
            await asyncio.gather(
                cp.publish({"id": "race", "set": {"keyterms": [f"Late{n}"]}}),
                sdk.client.disconnect(terminate=True),
            )

        async def ended(upstream_id: str = sdk.upstream_id) -> bool:
            return (await cp.session(upstream_id))["state"] == "ended"

        await eventually(ended)
        await settle(cp, emulator, sdk.upstream_id)
        problems = await record_problems(cp, emulator, sdk.upstream_id)
        assert not problems, (n, problems, await cp.log(sdk.upstream_id))
        assert sdk.errors == []


async def test_a_push_after_the_sdk_terminate_went_upstream_is_rejected_not_running(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """The SDK's ``Terminate`` is on its way (the upstream handles each control message
    300 ms late): a push written after it reaches an upstream that applies nothing more. It
    is recorded ``rejected`` (never running) and the ended record equals the upstream's last
    config. (Was: recorded ``sent`` and in config-at, the upstream never ran it.)"""
    async with streaming_sdk(cp) as sdk:
        await cp.publish({"id": "late", "set": {"keyterms": ["Before"]}})
        await _truthful(cp, emulator, sdk, "the first push")
        await emulator.faults(sdk.upstream_id, {"latency_ms": 300})
        live = cp.service.engine.live[cp.live_by_upstream(sdk.upstream_id)]
        pump: Any = live.transport.pump  # type: ignore[attr-defined]  # the gateway relay
        closing = asyncio.create_task(sdk.client.disconnect(terminate=True))
        # the Terminate went upstream (handled 300 ms later): the gateway's machine took it
        await eventually(lambda: pump.machine.terminated, timeout=5, interval=0.005)
        await cp.publish({"id": "late", "set": {"keyterms": ["After"]}})
        await closing

    async def ended() -> bool:
        return (await cp.session(sdk.upstream_id))["state"] == "ended"

    await eventually(ended)
    await settle(cp, emulator, sdk.upstream_id)
    assert await record_problems(cp, emulator, sdk.upstream_id) == []
    last = [e for e in await cp.log(sdk.upstream_id) if e["version"] == 3]
    assert [e["status"] for e in last] == ["sent", "rejected"], last
    assert "Terminate" in last[-1]["error"]
    assert (await emulator.session(sdk.upstream_id))["config"]["keyterms_prompt"] == ["Before"]


async def test_on_a_model_without_prompts_the_skipped_fields_and_the_sdk_own_are_true(
    cp: ControlPlaneUnderTest, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """universal-streaming-english takes no prompt: a policy's prompt is skipped (never
    sent), its keyterms pushed; the SDK's own prompt draws the upstream's Warning (relayed
    as the protocol defines it) and changes nothing. The record equals the upstream."""
    caplog.set_level(logging.DEBUG)
    async with streaming_sdk(cp, model="universal-streaming-english") as sdk:
        await cp.publish({"id": "p", "set": {"prompt": "Transcribe.", "keyterms": ["Acme"]}})
        await _truthful(cp, emulator, sdk, "a push with a field the model cannot take")
        updates = await emulator.updates(sdk.upstream_id)
        assert updates == [{"type": "UpdateConfiguration", "keyterms_prompt": ["Acme"]}]
        entries = [e for e in await cp.log(sdk.upstream_id) if e["cause"] == "policy"]
        assert entries[-1]["status"] == "sent" and "prompt" not in entries[-1]["wire"]
        assert entries[-1]["error"].startswith("skipped prompt: ")  # said, with the reason
        await sdk.client.set_params(RealTimeSessionParameters(prompt="Mine", vad_threshold=0.7))
        await eventually(lambda: sdk.warnings)
        await _truthful(cp, emulator, sdk, "the SDK's own prompt on a model without prompts")
        assert (await emulator.session(sdk.upstream_id))["config"]["vad_threshold"] == 0.7
        assert sdk.errors == [] and _unknown_frames(caplog) == []
