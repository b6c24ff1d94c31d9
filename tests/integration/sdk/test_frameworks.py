"""pipecat-ai 1.14.0 (``AssemblyAISTTService``) and livekit-plugins-assemblyai 1.8.9, unchanged,
pointed at the gateway by base URL only (docs/integrations.md#pipecat, #livekit-agents).

Each carries labels in its base URL (``/labels/{k=v,…}``), is targeted by a label-matching
policy (the connect merge, then a new version's delta reaches the emulator), keeps the turn
silences it chose against a policy ``defaults`` (issue #20), and is found in REST, the CLI and
``audit at`` by the upstream id it learns from ``Begin`` (pipecat logs it; LiveKit's stream
exposes it).

The packages come from the ``frameworks`` extra (``make install``, ``.ci/run``). A missing
package fails these tests with the install command; they never skip.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import time
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from tests.integration.sdk.test_upstream_ids import _cli_json
from tests.integration.sdk.truth import record_problems, settle
from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator, eventually

pytestmark = pytest.mark.timeout(60)

PROMPTS = ("This call is recorded.", "This call is recorded (v2).")


def policy(app: str, version: int) -> dict[str, Any]:
    return {
        "id": f"{app}-eu",
        "version": version,
        "match": {"kind": ["streaming-v3"], "labels": {"region": "eu", "app": app}},
        "set": {"prompt": PROMPTS[version - 1]},
        "defaults": {"max_turn_silence_ms": 2222},  # the framework chose its own: not applied
    }


def need(module: str, package: str) -> ModuleType:
    """Import a framework module; fail (never skip) with the install command if it is absent."""
    try:
        with warnings.catch_warnings():
            # their own import-time deprecations (pipecat imports audioop), not ours to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(
            f"{package} is not installed ({exc}): these recipe tests need the 'frameworks' "
            "extra: .venv/bin/pip install -e '.[frameworks]' (make install and .ci/run do it)"
        )


async def check_found_and_targeted(
    cp: ControlPlaneUnderTest,
    emulator: Emulator,
    capsys: Any,
    upstream_id: str,
    app: str,
    silences: tuple[int, int],
) -> None:
    """The session behind ``upstream_id``: labelled from the path, found by that id in REST
    and the CLI, on the policy from its connect (``silences``: the min/max turn silences the
    upstream then runs), then pushed the policy's next version."""
    session = await cp.session(upstream_id)
    assert session["upstream_id"] == upstream_id and session["id"].startswith("cps_")
    assert session["labels"] == {"region": "eu", "app": app}
    assert [ref["id"] for ref in session["applied"]] == [f"{app}-eu"]
    listed = await cp.call("GET", f"/v1/sessions?upstream_id={upstream_id}", expect=200)
    assert [item["id"] for item in listed["items"]] == [session["id"]]
    code, shown = await _cli_json(cp, capsys, "sessions", "show", upstream_id, "--json")
    assert code == 0 and shown["id"] == session["id"]

    config = (await emulator.session(upstream_id))["config"]
    assert config["prompt"] == PROMPTS[0]  # merged into the connect
    assert (config["min_turn_silence"], config["max_turn_silence"]) == silences

    await cp.publish(policy(app, 2))

    async def pushed() -> list[Any]:
        return await emulator.updates(upstream_id)

    assert await eventually(pushed) == [{"type": "UpdateConfiguration", "prompt": PROMPTS[1]}]
    entries = await cp.log(upstream_id)
    assert entries[-1]["cause"] == "policy" and entries[-1]["status"] == "sent"
    assert entries[-1]["delta"] == {"prompt": PROMPTS[1]}

    # `audit at` by the same id: what the upstream ran at that instant
    at = repr(time.time())
    answer = await cp.call("GET", f"/v1/sessions/{upstream_id}/config-at?at={at}", expect=200)
    assert answer["session_id"] == session["id"]
    assert answer["config"]["prompt"] == PROMPTS[1]
    assert answer["config"]["max_turn_silence_ms"] == silences[1]
    code, cli_answer = await _cli_json(cp, capsys, "audit", "at", upstream_id, at)
    assert code == 0 and cli_answer["config"] == answer["config"]


async def test_pipecat_assemblyai_stt_through_the_gateway_by_base_url(
    cp: ControlPlaneUnderTest, emulator: Emulator, capsys: Any
) -> None:
    stt_module = need("pipecat.services.assemblyai.stt", "pipecat-ai")
    pipeline_module = need("pipecat.pipeline.pipeline", "pipecat-ai")
    worker_module = need("pipecat.pipeline.worker", "pipecat-ai")
    runner_module = need("pipecat.workers.runner", "pipecat-ai")
    frames = need("pipecat.frames.frames", "pipecat-ai")
    loguru = need("loguru", "pipecat-ai")
    await cp.publish(policy("pipecat", 1))

    # the app learns the upstream id from pipecat's log line "Session Begin: <id> (…)"
    begins: list[str] = []
    sink = loguru.logger.add(_begin_sink(begins), level="DEBUG")
    stt = stt_module.AssemblyAISTTService(
        api_key="test-key",
        api_endpoint_base_url=f"{cp.ws_base}/labels/region=eu,app=pipecat/v3/ws",
        sample_rate=16000,
    )
    worker = worker_module.PipelineWorker(
        pipeline_module.Pipeline([stt]),
        params=worker_module.PipelineParams(audio_in_sample_rate=16000),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )
    runner = runner_module.WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: begins, timeout=10)
        await worker.queue_frame(
            frames.InputAudioRawFrame(audio=b"\x00\x00" * 1600, sample_rate=16000, num_channels=1)
        )
        # pipecat sends min = max = 100 (its own turn detection decides): the default is not
        # applied to a field the client chose
        await check_found_and_targeted(cp, emulator, capsys, begins[0], "pipecat", (100, 100))
    finally:
        await worker.queue_frame(frames.EndFrame())
        await asyncio.wait_for(run, 15)
        loguru.logger.remove(sink)
    assert len(begins) == 1  # one connect, one upstream session


def _begin_sink(begins: list[str]) -> Callable[[Any], None]:
    def sink(message: Any) -> None:
        found = re.search(r"Session Begin: ([0-9a-f-]{36})", str(message))
        if found:
            begins.append(found.group(1))

    return sink


async def test_livekit_assemblyai_plugin_through_the_gateway_by_base_url(
    cp: ControlPlaneUnderTest, emulator: Emulator, capsys: Any
) -> None:
    rtc = need("livekit.rtc", "livekit-plugins-assemblyai")
    plugin = need("livekit.plugins.assemblyai", "livekit-plugins-assemblyai")
    await cp.publish(policy("livekit", 1))

    async with aiohttp.ClientSession() as http:
        stt = plugin.STT(
            api_key="test-key",
            base_url=f"{cp.ws_base}/labels/region=eu,app=livekit",
            http_session=http,
        )
        stream = stt.stream()
        events: list[Any] = []

        async def consume() -> None:
            async for event in stream:
                events.append(event)

        consumer = asyncio.create_task(consume())
        try:
            frame = rtc.AudioFrame(b"\x00\x00" * 1600, 16000, 1, 1600)
            for _ in range(100):  # audio starts the connection; Begin sets session_id
                stream.push_frame(frame)
                if stream.session_id:
                    break
                await asyncio.sleep(0.05)
            assert stream.session_id, "no Begin from the gateway in 5 s"
            # LiveKit's defaults send min = max = 100 too: the policy's default is not applied
            await check_found_and_targeted(
                cp, emulator, capsys, stream.session_id, "livekit", (100, 100)
            )
        finally:
            stream.end_input()
            await stream.aclose()
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)


async def test_livekit_own_agent_context_updates_racing_pushes_keep_the_record_true(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """LiveKit pushes the agent's replies as ``UpdateConfiguration{agent_context}`` itself
    (``update_options``); a policy pushes ``agent_context`` and keyterms too. Racing, then
    against a lock: the record equals what the emulator runs after each step, and the
    plugin's stream never fails."""
    rtc = need("livekit.rtc", "livekit-plugins-assemblyai")
    plugin = need("livekit.plugins.assemblyai", "livekit-plugins-assemblyai")
    context = {
        "id": "context",
        "match": {"labels": {"app": "lk"}},
        "set": {"agent_context": "Agent: how can I help?", "keyterms": ["Acme"]},
    }
    await cp.publish(context)
    async with aiohttp.ClientSession() as http:
        stt = plugin.STT(api_key="test-key", base_url=f"{cp.ws_base}/labels/app=lk",
                         http_session=http)  # fmt: skip
        stream = stt.stream()
        consumer = asyncio.create_task(_drain(stream))
        feeder = asyncio.create_task(_feed(stream, rtc))
        try:
            await eventually(lambda: stream.session_id, timeout=5)
            upstream_id = stream.session_id

            async def truthful(step: str) -> None:
                await settle(cp, emulator, upstream_id)
                problems = await record_problems(cp, emulator, upstream_id)
                assert not problems, f"after {step}: {problems}"

            await truthful("connect")
            for n in range(3):  # the plugin's own update and a push, unsynchronised
                stream.update_options(agent_context=f"Agent: reply {n}.", keyterms_prompt=["Own"])
                await cp.publish({**context, "set": {"agent_context": f"Policy context {n}.",
                                                     "keyterms": [f"Term{n}"]}})  # fmt: skip
                await truthful(f"race {n}")
            await cp.publish({"id": "lock", "match": {"labels": {"app": "lk"}}, "priority": 10,
                              "set": {"keyterms": ["Locked"]}, "lock": ["keyterms"]},
                             token="tok-compliance")  # fmt: skip
            stream.update_options(agent_context="Agent: bye.", keyterms_prompt=["Nope"])
            await truthful("a locked update")
            config = (await emulator.session(upstream_id))["config"]
            assert config["keyterms_prompt"] == ["Locked"]
            assert config["agent_context"] == "Agent: bye."
            assert not consumer.done() and not feeder.done()
        finally:
            feeder.cancel()
            stream.end_input()
            await stream.aclose()
            consumer.cancel()
            await asyncio.gather(consumer, feeder, return_exceptions=True)


async def _drain(stream: Any) -> None:
    async for _event in stream:
        pass


async def _feed(stream: Any, rtc: ModuleType) -> None:
    frame = rtc.AudioFrame(b"\x00\x00" * 1600, 16000, 1, 1600)
    while True:
        stream.push_frame(frame)
        await asyncio.sleep(0.1)


async def test_livekit_reconnecting_after_its_upstream_dropped_mid_push_leaves_two_true_records(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """The upstream connection drops right after it handled a push (no close frame); the
    plugin reconnects by itself (a new upstream session). The ended session's record says
    what its upstream ran until the drop, the new one's what it runs now (the policy merged
    into its connect)."""
    rtc = need("livekit.rtc", "livekit-plugins-assemblyai")
    plugin = need("livekit.plugins.assemblyai", "livekit-plugins-assemblyai")
    doc = {"id": "terms", "match": {"labels": {"app": "lk2"}}, "set": {"keyterms": ["One"]}}
    await cp.publish(doc)
    async with aiohttp.ClientSession() as http:
        stt = plugin.STT(api_key="test-key", base_url=f"{cp.ws_base}/labels/app=lk2",
                         http_session=http)  # fmt: skip
        stream = stt.stream()
        consumer = asyncio.create_task(_drain(stream))
        feeder = asyncio.create_task(_feed(stream, rtc))
        try:
            await eventually(lambda: stream.session_id, timeout=5)
            first = stream.session_id
            await emulator.faults(first, {"drop_after_messages": 1})
            await cp.publish({**doc, "set": {"keyterms": ["Two"]}})
            await eventually(lambda: stream.session_id not in (None, first), timeout=15)
            second = stream.session_id
            assert (await cp.session(first))["state"] == "ended"
            for upstream_id in (first, second):
                await settle(cp, emulator, upstream_id)
                problems = await record_problems(cp, emulator, upstream_id)
                assert not problems, (upstream_id, problems, await cp.log(upstream_id))
            config = (await emulator.session(second))["config"]
            assert config["keyterms_prompt"] == ["Two"]
        finally:
            feeder.cancel()
            stream.end_input()
            await stream.aclose()
            consumer.cancel()
            await asyncio.gather(consumer, feeder, return_exceptions=True)


async def test_pipecat_session_record_equals_the_upstream_through_mid_stream_pushes(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """Audio flowing through pipecat's AssemblyAI service while prompt, keyterms, turn
    silences and agent context are pushed (pipecat also sends its own ForceEndpoint): the
    record equals what the emulator runs after each push, through its end."""
    stt_module = need("pipecat.services.assemblyai.stt", "pipecat-ai")
    pipeline_module = need("pipecat.pipeline.pipeline", "pipecat-ai")
    worker_module = need("pipecat.pipeline.worker", "pipecat-ai")
    runner_module = need("pipecat.workers.runner", "pipecat-ai")
    frames = need("pipecat.frames.frames", "pipecat-ai")
    loguru = need("loguru", "pipecat-ai")
    match = {"labels": {"app": "pc2"}}
    await cp.publish({"id": "pc", "match": match, "set": {"keyterms": ["Start"]}})
    begins: list[str] = []
    sink = loguru.logger.add(_begin_sink(begins), level="DEBUG")
    stt = stt_module.AssemblyAISTTService(
        api_key="test-key", api_endpoint_base_url=f"{cp.ws_base}/labels/app=pc2/v3/ws",
        sample_rate=16000,
    )  # fmt: skip
    worker = worker_module.PipelineWorker(
        pipeline_module.Pipeline([stt]),
        params=worker_module.PipelineParams(audio_in_sample_rate=16000),
        enable_rtvi=False, idle_timeout_secs=None,
    )  # fmt: skip
    runner = runner_module.WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())

    async def feed() -> None:
        while True:
            await worker.queue_frame(frames.InputAudioRawFrame(
                audio=b"\x00\x00" * 1600, sample_rate=16000, num_channels=1))  # fmt: skip
            await asyncio.sleep(0.1)

    feeder = asyncio.create_task(feed())
    try:
        await eventually(lambda: begins, timeout=10)
        upstream_id = begins[0]
        pushes = [
            {"prompt": "Transcribe the caller.", "keyterms": ["Second"]},
            {"min_turn_silence_ms": 240, "max_turn_silence_ms": 1800},
            {"agent_context": "Agent: your order number?", "keyterms": ["Third"]},
        ]
        for n, values in enumerate(pushes):
            await cp.publish({"id": f"pc{n}", "match": match, "set": values, "priority": n + 1})
            await settle(cp, emulator, upstream_id)
            problems = await record_problems(cp, emulator, upstream_id)
            assert not problems, f"after push {n}: {problems}"
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await worker.queue_frame(frames.EndFrame())
        await asyncio.wait_for(run, 15)
        loguru.logger.remove(sink)
    await eventually(lambda: cp.service.engine.live == {}, timeout=5)
    problems = await record_problems(cp, emulator, upstream_id)
    assert not problems, f"after the end: {problems}"
