"""Fuzz the control channel (``/v1/control``) of a running control plane with hostile frames.

Laws (docs/control-channel.md): whatever an app sends — text that is not JSON, JSON that is not
an object, wrong types, huge integers, unknown types, reports for versions never pushed,
binary frames, frames over the 256 KiB limit — the server answers ``error`` frames
(``code`` + ``message``) and keeps the socket open, or closes it with a documented code
(1008: registration refused; 1009: frame too large). The process stays healthy and a fresh
session registers and receives pushes afterwards.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from controlplane.api.inputs import parse_frame
from tests.fuzz.strategies import HOSTILE_TEXT, HUGE_INTS, json_values, text, wire_text
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest

# no shrinking: a failure here is often a wait running out, and shrinking repeats it for
# minutes; the failing frames are reported by ``note``
FUZZ = settings(
    max_examples=40,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
WAIT_S = 3.0
AUTH = {"Authorization": f"Bearer {ADMIN}"}
MAX_FRAME = 256 * 1024
SERVER_TYPES = {"registered", "push", "update_result", "heartbeat", "error"}
CODE = re.compile(r"[a-z][a-z0-9_]*")
REGISTER = {
    "type": "register",
    "kind": "voice-agent-v1",
    "model": "voice-agent",
    "labels": {"fuzz": "yes"},
    "config": {"system_prompt": "hello"},
}

Frame = tuple[str, Any]  # ("text", str) | ("binary", bytes)

_VERSIONS = HUGE_INTS | st.integers(-5, 5) | json_values(max_leaves=2)
_CONFIG_NAMES = (
    st.sampled_from(
        [
            "prompt",
            "system_prompt",
            "agent_context",
            "keyterms",
            "min_turn_silence_ms",
            "max_turn_silence_ms",
            "vad_threshold",
        ]
    )
    | text
)
_CONFIGS = st.dictionaries(
    _CONFIG_NAMES, json_values(max_leaves=3) | HUGE_INTS | HOSTILE_TEXT, max_size=4
)


def _obj(type_: Any, **fields: Any) -> st.SearchStrategy[dict[str, Any]]:
    kind = type_ if isinstance(type_, st.SearchStrategy) else st.just(type_)
    return st.fixed_dictionaries({"type": kind}, optional=fields)


_MESSAGES = st.one_of(
    _obj("applied", version=_VERSIONS),
    _obj("failed", version=_VERSIONS, error=json_values(max_leaves=3) | HOSTILE_TEXT),
    _obj("update", config=_CONFIGS | json_values(max_leaves=3)),
    _obj("turn_boundary"),
    _obj("heartbeat", at=json_values(max_leaves=2)),
    _obj(
        st.sampled_from(["register", "push", "registered", "error"]) | text,
        config=_CONFIGS,
        kind=text,
        model=text,
    ),
    json_values().map(lambda v: {"type": v}),
)
FRAMES: st.SearchStrategy[Frame] = st.one_of(
    _MESSAGES.map(lambda m: ("text", wire_text(m))),
    st.text(max_size=60).map(lambda t: ("text", t)),
    json_values().map(lambda v: ("text", wire_text(v))),
    st.just(("text", '{"type": "update", "config": {"vad_threshold": ' + "9" * 500 + "}}")),
    st.just(("text", '{"type": "applied", "version": NaN}')),
    st.binary(max_size=40).map(lambda b: ("binary", b)),
)
OVERSIZE: Frame = ("text", json.dumps({"type": "update", "config": {"prompt": "x" * MAX_FRAME}}))


async def _send(ws: aiohttp.ClientWebSocketResponse, frame: Frame) -> None:
    kind, data = frame
    if kind == "text":
        await ws.send_str(data)
    else:
        await ws.send_bytes(data)


def _check_server_frame(data: str) -> dict[str, Any]:
    message = json.loads(data)
    assert isinstance(message, dict) and message.get("type") in SERVER_TYPES, message
    if message["type"] == "error":
        assert CODE.fullmatch(message["code"]), message
        assert isinstance(message["message"], str) and message["message"], message
    return message


def _is_heartbeat(frame: Frame) -> bool:
    """Whether the server answers ``frame`` with a heartbeat (by the server's own rules)."""
    try:
        message = parse_frame(frame[1]) if frame[0] == "text" else None
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("type") == "heartbeat"


async def _until_heartbeat(ws: aiohttp.ClientWebSocketResponse, count: int = 1) -> int | None:
    """Read frames until the ``count``-th heartbeat answer (None) or a close (its code)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return ws.close_code
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            if _check_server_frame(msg.data)["type"] == "heartbeat":
                count -= 1
                if count == 0:
                    return None


async def _registered(cp: ControlPlaneUnderTest, **extra: Any) -> dict[str, Any]:
    async with cp.http.ws_connect(cp.ws_base + "/v1/control", headers=AUTH) as ws:
        await ws.send_json({**REGISTER, **extra})
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return _check_server_frame(msg.data)


async def _healthy(cp: ControlPlaneUnderTest) -> None:
    assert (await cp.call("GET", "/healthz", token=None, expect=200))["status"] == "ok"
    assert (await _registered(cp))["type"] == "registered"


@FUZZ
@given(frames=st.lists(FRAMES, min_size=1, max_size=8), oversize=st.integers(0, 9))
async def test_hostile_frames_after_registration_get_errors_or_a_documented_close(
    cp: ControlPlaneUnderTest, frames: list[Frame], oversize: int
) -> None:
    if oversize == 0:
        frames = [*frames, OVERSIZE]
    note(f"frames: {frames!r}")
    async with cp.http.ws_connect(cp.ws_base + "/v1/control", headers=AUTH) as ws:
        await ws.send_json(REGISTER)
        assert _check_server_frame((await ws.receive(timeout=5)).data)["type"] == "registered"
        for frame in frames:
            await _send(ws, frame)
        await ws.send_json({"type": "heartbeat"})
        closed = await _until_heartbeat(ws, 1 + sum(map(_is_heartbeat, frames)))
        if oversize == 0:
            assert closed == 1009, "a frame over 256 KiB closes the channel with 1009"
        else:
            assert closed is None, f"the channel closed ({closed}) on frames {frames!r}"
    await _healthy(cp)
    assert not cp.service.engine.live, "every closed channel ends its session"


_FIRST = st.one_of(
    FRAMES,
    _obj(
        "register",
        kind=st.sampled_from(["streaming-v3", "voice-agent-v1"]) | text,
        model=text | json_values(max_leaves=2),
        session_id=text | HUGE_INTS,
        labels=st.dictionaries(text, text | HUGE_INTS, max_size=3) | json_values(max_leaves=2),
        config=_CONFIGS,
    ).map(lambda m: ("text", wire_text(m))),
)


@FUZZ
@given(first=_FIRST)
async def test_hostile_registration_is_refused_with_1008_or_registers(
    cp: ControlPlaneUnderTest, first: Frame
) -> None:
    async with cp.http.ws_connect(cp.ws_base + "/v1/control", headers=AUTH) as ws:
        await _send(ws, first)
        await ws.send_json({"type": "heartbeat"})
        async with asyncio.timeout(WAIT_S):
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                answer = _check_server_frame(msg.data)
                if answer["type"] == "registered":
                    assert await _until_heartbeat(ws) is None
                    return
                assert answer["type"] == "error", answer
                msg = await ws.receive()
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
            assert ws.close_code == 1008, ws.close_code
    await _healthy(cp)


async def test_after_hostile_frames_a_fresh_session_receives_a_pushed_policy(
    cp: ControlPlaneUnderTest,
) -> None:
    corpus: list[Frame] = [
        ("text", "not json"),
        ("text", "[]"),
        ("text", "1e999999"),
        ("binary", b"\x00\xff"),
        ("text", '{"type": "applied", "version": ' + "9" * 4000 + "}"),
        ("text", '{"type": "failed", "version": 99, "error": "\\ud800"}'),
        ("text", '{"type": "update", "config": {"prompt": "\\ud800"}}'),
        ("text", '{"type": "update", "config": {"\\udfff": 1, "vad_threshold": 1e400}}'),
        ("text", '{"type": "update", "config": {"vad_threshold": ' + "9" * 400 + "}}"),
        ("text", '{"type": "update", "config": {"keyterms": ["\\ud800", 1, null]}}'),
        ("text", '{"type": "update", "config": {"min_turn_silence_ms": NaN}}'),
        ("text", '{"type": "' + "x" * 10_000 + '"}'),
        ("text", '{"type": "register"}'),
        ("text", "{" * 10_000),
        ("text", '{"type": "update", "config": "\\ud800"}'),
    ]
    async with cp.http.ws_connect(cp.ws_base + "/v1/control", headers=AUTH) as ws:
        await ws.send_json(REGISTER)
        await ws.receive(timeout=5)
        for frame in corpus:
            await _send(ws, frame)
        await ws.send_json({"type": "heartbeat"})
        assert await _until_heartbeat(ws) is None
    async with cp.http.ws_connect(cp.ws_base + "/v1/control", headers=AUTH) as ws:
        await ws.send_json({**REGISTER, "session_id": "after-fuzz"})
        assert _check_server_frame((await ws.receive(timeout=5)).data)["type"] == "registered"
        await cp.publish(
            {
                "id": "after-fuzz",
                "match": {"labels": {"fuzz": "yes"}},
                "set": {"keyterms": ["survived"]},
            }
        )
        push = _check_server_frame((await ws.receive(timeout=5)).data)
        assert push["type"] == "push"
        assert push["message"]["session"]["input"]["keyterms"] == ["survived"]
        await ws.send_json({"type": "applied", "version": push["version"]})
        statuses = [e["status"] for e in await cp.log("after-fuzz")]
        assert statuses[0] == "sent"
    assert (await cp.call("GET", "/healthz", token=None, expect=200))["status"] == "ok"
