"""Fuzz the gateway (``/v3/ws``, ``/v1/ws``) with hostile client text frames, upstream = the
emulator, while a policy locks ``prompt``.

Laws:
- the gateway never fails: no error is logged by the control plane or aiohttp, the socket is
  closed only with a code the upstream documents (PROTOCOLS.md §1.8 / §2.8; relayed) and a
  fresh session afterwards still works;
- whatever the client sends, the upstream never receives a locked field with a value the policy
  did not set (the emulator's timeline holds every control message it received);
- every closed session is detached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st

from tests.fuzz.strategies import HOSTILE_TEXT, HUGE_INTS, json_values, text, wire_text
from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator, eventually

# no shrinking: a failure here is often a wait running out, and shrinking repeats it for
# minutes; the failing frames are reported by ``note``
FUZZ = settings(
    max_examples=30,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
STREAM = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"
KEY = {"Authorization": "test-key"}
AGENT_KEY = {"Authorization": "Bearer test-key"}
LOCKED = "Locked by compliance."
# streaming v3 (PROTOCOLS §1.8) and voice agent (§2.8) close codes, relayed by the gateway
DOCUMENTED_CLOSES = {1000, 1008, 1009, 1011, 3005, 3006, 3007, 3008, 3009}
# Voice Agent server events (PROTOCOLS §2.5) a session still streams while the test waits for
# the answer to its valid update: a hostile ``reply.create`` starts a reply that goes on for
# about a second (words, then ``transcript.agent`` and ``reply.done``) and on a loaded machine
# the quiet gap ``_drain`` waits for can fall inside it
AGENT_EVENTS = {
    "session.error", "session.updated", "input.speech.started", "input.speech.stopped",
    "transcript.user.delta", "transcript.user", "reply.started", "reply.audio",
    "transcript.agent.delta", "transcript.agent", "reply.done", "reply.error", "tool.call",
}  # fmt: skip

_VALUES = json_values(max_leaves=4) | HUGE_INTS | HOSTILE_TEXT
_SV3_FIELDS = (
    st.sampled_from(
        [
            "prompt",
            "keyterms_prompt",
            "min_turn_silence",
            "max_turn_silence",
            "vad_threshold",
            "agent_context",
            "min_end_of_turn_silence_when_confident",
            "mode",
        ]
    )
    | text
)
_STREAMING_MESSAGES = st.one_of(
    st.dictionaries(_SV3_FIELDS, _VALUES, max_size=4).map(
        lambda d: {"type": "UpdateConfiguration", **d}
    ),
    st.dictionaries(text, _VALUES, max_size=3).map(
        lambda d: {**d, "type": "UpdateConfiguration", "prompt": "evil"}
    ),
    st.sampled_from(["ForceEndpoint", "KeepAlive", "Nope"]).map(lambda t: {"type": t}),
)
_VA_SESSION = st.fixed_dictionaries(
    {},
    optional={
        "system_prompt": _VALUES,
        "input": st.fixed_dictionaries(
            {},
            optional={
                "transcription_prompt": _VALUES | st.just("evil"),
                "keyterms": _VALUES,
                "turn_detection": st.dictionaries(
                    st.sampled_from(["min_silence", "max_silence", "vad_threshold"]), _VALUES
                ),
            },
        )
        | _VALUES,
        "greeting": _VALUES,
    },
)
_AGENT_MESSAGES = st.one_of(
    _VA_SESSION.map(lambda s: {"type": "session.update", "session": s}),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["input.audio", "reply.create", "x"]) | text},
        optional={"audio": _VALUES},
    ),
)
# raw texts that a JSON library would "fix" one way or another
_TRICKS = st.sampled_from(
    [
        '{"type": "UpdateConfiguration", "prompt": "evil", "type": "ForceEndpoint"}',
        '{"type": "UpdateConfiguration", "prompt": "evil", "prompt": "' + LOCKED + '"}',
        '{"type": "UpdateConfiguration", "prompt": "evil", "vad_threshold": "high"}',
        '{"type": "UpdateConfiguration", "prompt": "evil", "keyterms_prompt": [1, 2]}',
        '{"type": "UpdateConfiguration", "prompt": "\\ud800"}',
        '{"type": "UpdateConfiguration", "vad_threshold": NaN}',
        '{"type": "UpdateConfiguration", "vad_threshold": 1e999}',
        '{"type": "session.update", "session": {"input": {"transcription_prompt": "evil"},'
        ' "system_prompt": 5}}',
        '{"type": "session.update", "session": {"input": {"transcription_prompt": "evil",'
        ' "keyterms": "x"}}}',
        '{"type": "session.update", "session": {"system_prompt": "\\udc80"}}',
        '{"type": "session.update", "session": {}, "session": {"input": {"transcription_prompt":'
        ' "evil"}}}',
        "[" * 200 + "]" * 200,
        "not json",
        "[]",
        "null",
        '"str"',
        "1" + "0" * 5000,
    ]
)


def _frames(messages: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[list[str]]:
    one = messages.map(wire_text) | _TRICKS | st.text(max_size=40) | json_values().map(wire_text)
    return st.lists(one, min_size=1, max_size=6)


async def _ensure_lock(cp: ControlPlaneUnderTest) -> None:
    if not cp.service.store.active():
        await cp.publish({"id": "lock-prompt", "set": {"prompt": LOCKED}, "lock": ["prompt"]})


async def _json_frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.TEXT, (msg, ws.close_code)
    return dict(json.loads(msg.data))


async def _drain(ws: aiohttp.ClientWebSocketResponse, quiet: float = 0.15) -> int | None:
    """Read until the socket closes (its code) or stays quiet for ``quiet`` seconds (None)."""
    while True:
        try:
            msg = await ws.receive(timeout=quiet)
        except TimeoutError:
            return None
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return ws.close_code
        if msg.type == aiohttp.WSMsgType.TEXT:
            assert isinstance(json.loads(msg.data), dict), msg.data


def _errors_since(caplog: pytest.LogCaptureFixture, mark: int) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records[mark:]
        if r.levelno >= logging.ERROR and r.name.startswith(("controlplane", "aiohttp"))
    ]


def _locked_values(timeline: list[dict[str, Any]], *, agent: bool) -> list[Any]:
    """Every transcription prompt an update carried to the upstream."""
    found = []
    for entry in timeline:
        message = entry.get("message")
        if not isinstance(message, dict):
            continue
        if not agent and message.get("type") == "UpdateConfiguration" and "prompt" in message:
            found.append(message["prompt"])
        session = message.get("session")
        if agent and message.get("type") == "session.update" and isinstance(session, dict):
            if (
                isinstance(session.get("input"), dict)
                and "transcription_prompt" in session["input"]
            ):
                found.append(session["input"]["transcription_prompt"])
    return found


async def _streaming_works(cp: ControlPlaneUnderTest) -> None:
    async with cp.http.ws_connect(cp.ws_base + STREAM, headers=KEY) as ws:
        assert (await _json_frame(ws))["type"] == "Begin"


async def _agent_open(ws: aiohttp.ClientWebSocketResponse) -> str:
    await ws.send_json({"type": "session.update", "session": {"system_prompt": "hi"}})
    ready = await _json_frame(ws)
    assert ready["type"] == "session.ready", ready
    return str(ready["session_id"])


@FUZZ
@given(frames=_frames(_STREAMING_MESSAGES))
async def test_streaming_gateway_survives_hostile_client_frames(
    cp: ControlPlaneUnderTest,
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
    frames: list[str],
) -> None:
    await _ensure_lock(cp)
    note(f"frames: {frames!r}")
    mark = len(caplog.records)
    async with cp.http.ws_connect(cp.ws_base + STREAM, headers=KEY) as ws:
        upstream_id = (await _json_frame(ws))["id"]
        for frame in frames:
            if ws.closed:
                break
            await ws.send_str(frame)
        closed = await _drain(ws)
    assert closed is None or closed in DOCUMENTED_CLOSES, (closed, frames)
    assert not _errors_since(caplog, mark)
    timeline = (await emulator.session(upstream_id))["timeline"]
    assert set(_locked_values(timeline, agent=False)) <= {LOCKED}, timeline
    await _streaming_works(cp)
    await eventually(lambda: not cp.service.engine.live)


async def _valid_update_answered(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Send a valid ``session.update``: None once ``session.updated`` answers it; the close
    code if the socket closes first (a hostile frame's close that came after the quiet gap)."""
    with contextlib.suppress(ConnectionResetError):  # closing meanwhile: read the code below
        await ws.send_json({"type": "session.update", "session": {"system_prompt": "ok"}})
    async with asyncio.timeout(30):  # a hang guard: the answer is waited for, not timed
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return ws.close_code
            assert msg.type == aiohttp.WSMsgType.TEXT, (msg, ws.close_code)
            answer = json.loads(msg.data)
            assert answer["type"] in AGENT_EVENTS, answer
            if answer["type"] == "session.updated":
                return None


@FUZZ
@given(frames=_frames(_AGENT_MESSAGES))
@example(frames=['{"type": "reply.create"}'] * 2)  # a reply still streaming after the quiet gap
async def test_agent_gateway_survives_hostile_client_frames(
    cp: ControlPlaneUnderTest,
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
    frames: list[str],
) -> None:
    await _ensure_lock(cp)
    note(f"frames: {frames!r}")
    mark = len(caplog.records)
    async with cp.http.ws_connect(cp.ws_base + "/v1/ws", headers=AGENT_KEY) as ws:
        upstream_id = await _agent_open(ws)
        for frame in frames:
            if ws.closed:
                break
            await ws.send_str(frame)
        closed = await _drain(ws)
        if closed is None:  # still open: the session still takes a valid update
            closed = await _valid_update_answered(ws)
    assert closed is None or closed in DOCUMENTED_CLOSES, (closed, frames)
    assert not _errors_since(caplog, mark)
    timeline = (await emulator.session(upstream_id))["timeline"]
    assert set(_locked_values(timeline, agent=True)) <= {LOCKED}, timeline
    async with cp.http.ws_connect(cp.ws_base + "/v1/ws", headers=AGENT_KEY) as ws:
        await _agent_open(ws)
    await eventually(lambda: not cp.service.engine.live)


async def test_duplicate_keys_never_reach_the_upstream(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """A parser-differential lock bypass: ``type`` twice, we would read the last, an upstream
    may read the first. Refused the upstream's way (3006) and never forwarded."""
    await _ensure_lock(cp)
    trick = '{"type": "UpdateConfiguration", "prompt": "evil", "type": "ForceEndpoint"}'
    async with cp.http.ws_connect(cp.ws_base + STREAM, headers=KEY) as ws:
        upstream_id = (await _json_frame(ws))["id"]
        await ws.send_str(trick)
        error = await _json_frame(ws)
        assert error["type"] == "Error" and error["error_code"] == 3006, error
        assert "duplicate key" in error["error"]
        assert await _drain(ws) == 3006
    timeline = (await emulator.session(upstream_id))["timeline"]
    assert timeline == [], "nothing of the refused frame reached the upstream"
    async with cp.http.ws_connect(cp.ws_base + "/v1/ws", headers=AGENT_KEY) as ws:
        await _agent_open(ws)
        await ws.send_str('{"type": "session.update", "session": {}, "type": "input.audio"}')
        error = await _json_frame(ws)
        assert error == {
            "type": "session.error",
            "code": "invalid_format",
            "message": error["message"],
        }
        assert "duplicate key" in error["message"]


async def test_a_malformed_sibling_does_not_carry_a_locked_field_upstream(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    await _ensure_lock(cp)
    async with cp.http.ws_connect(cp.ws_base + STREAM, headers=KEY) as ws:
        upstream_id = (await _json_frame(ws))["id"]
        sid = cp.live_by_upstream(upstream_id)
        await ws.send_str('{"type": "UpdateConfiguration", "prompt": "evil", "vad_threshold": "x"}')
        await _drain(ws)
        timeline = (await emulator.session(upstream_id))["timeline"]
        assert [e["message"] for e in timeline] == [
            {"type": "UpdateConfiguration", "vad_threshold": "x"}
        ]
        rejected = [e for e in await cp.log(sid) if e["status"] == "rejected"]
        assert len(rejected) == 1 and "prompt locked by policy lock-prompt" in rejected[0]["error"]


_FIRST = (
    _AGENT_MESSAGES.map(wire_text)
    | _TRICKS
    | st.just('{"type": "session.update", "session": {"greeting": "\\ud800"}}')
    | st.just('{"type": "session.resume", "session_id": "\\udfff"}')
)


@FUZZ
@given(first=_FIRST)
async def test_agent_gateway_survives_a_hostile_first_message(
    cp: ControlPlaneUnderTest, emulator: Emulator, caplog: pytest.LogCaptureFixture, first: str
) -> None:
    note(f"first: {first!r}")
    mark = len(caplog.records)
    async with cp.http.ws_connect(cp.ws_base + "/v1/ws", headers=AGENT_KEY) as ws:
        await ws.send_str(first)
        closed = await _drain(ws)
    assert closed is None or closed in DOCUMENTED_CLOSES, closed
    assert not _errors_since(caplog, mark)
    await eventually(lambda: not cp.service.engine.live)
    async with cp.http.ws_connect(cp.ws_base + "/v1/ws", headers=AGENT_KEY) as ws:
        await _agent_open(ws)
