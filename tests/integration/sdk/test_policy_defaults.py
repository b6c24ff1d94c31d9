"""Policy ``defaults`` through the gateway against the emulator (docs/policies.md#defaults):
a framework that chose its silences keeps them, a client that did not gets the default, and a
client that sets the field later is not overridden by the next push."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

import websockets

from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator, eventually

CONNECT = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"
FRAMEWORK = "&min_turn_silence=100&max_turn_silence=100"  # pipecat / LiveKit connect so
HEADERS = {"Authorization": "test-key"}


def defaults(version: int, max_silence: int) -> dict[str, Any]:
    return {
        "id": "turn-defaults",
        "version": version,
        "match": {"kind": ["streaming-v3"]},
        "defaults": {"max_turn_silence_ms": max_silence},
    }


async def test_a_default_fills_only_sessions_whose_client_did_not_set_the_field(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    async with AsyncExitStack() as stack:
        ids: dict[str, str] = {}
        sockets: dict[str, Any] = {}
        for name, query in (("framework", FRAMEWORK), ("plain", ""), ("later", "")):
            ws = await stack.enter_async_context(
                websockets.connect(cp.ws_base + CONNECT + query, additional_headers=HEADERS)
            )
            begin = json.loads(await ws.recv())
            assert begin["type"] == "Begin"
            ids[name], sockets[name] = begin["id"], ws

        async def max_silence(name: str) -> Any:
            return (await emulator.session(ids[name]))["config"]["max_turn_silence"]

        # v1 reaches running sessions: only those whose client did not choose
        await cp.publish(defaults(1, 2222))
        await eventually(lambda: _equals(max_silence("plain"), 2222))
        await eventually(lambda: _equals(max_silence("later"), 2222))
        assert await max_silence("framework") == 100
        assert await emulator.updates(ids["framework"]) == []  # not even an empty push
        plain_log = await cp.log(cp.live_by_upstream(ids["plain"]))
        assert plain_log[-1]["delta"] == {"max_turn_silence_ms": 2222}
        assert plain_log[-1]["status"] == "sent"  # Streaming v3: never "acked"

        # a client that sets the field later owns it: the next version's push leaves it alone
        await sockets["later"].send(
            json.dumps({"type": "UpdateConfiguration", "max_turn_silence": 300})
        )
        await eventually(lambda: _equals(max_silence("later"), 300))
        await cp.publish(defaults(2, 2500))
        await eventually(lambda: _equals(max_silence("plain"), 2500))
        later_updates = await emulator.updates(ids["later"])
        assert [u.get("max_turn_silence") for u in later_updates] == [2222, 300]
        assert await max_silence("later") == 300
        assert await max_silence("framework") == 100
        assert await emulator.updates(ids["framework"]) == []

        # a session that connects after the publish starts on its default (connect merge)
        ws = await stack.enter_async_context(
            websockets.connect(cp.ws_base + CONNECT, additional_headers=HEADERS)
        )
        late = json.loads(await ws.recv())["id"]
        assert (await emulator.session(late))["config"]["max_turn_silence"] == 2500
        session = await cp.session(cp.live_by_upstream(late))
        assert session["provenance"]["max_turn_silence_ms"]["id"] == "turn-defaults"


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_a_client_that_clears_its_value_gets_the_default_at_the_next_push(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    await cp.publish({"id": "prompt-default", "defaults": {"prompt": "Default prompt."}})
    url = cp.ws_base + CONNECT + "&prompt=mine"
    async with websockets.connect(url, additional_headers=HEADERS) as ws:
        upstream_id = json.loads(await ws.recv())["id"]

        async def prompt() -> Any:
            return (await emulator.session(upstream_id))["config"].get("prompt")

        assert await prompt() == "mine"
        await ws.send(json.dumps({"type": "UpdateConfiguration", "prompt": ""}))
        await eventually(lambda: _equals(prompt(), ""))
        # like a client's change to an unlocked `set` field: not fought at once; the next
        # resolution that reaches the session (here another policy's publish) brings it back
        await cp.publish({"id": "terms", "set": {"keyterms": ["Acme"]}})
        await eventually(lambda: _equals(prompt(), "Default prompt."))
        entries = await cp.log(cp.live_by_upstream(upstream_id))
        assert entries[-1]["cause"] == "policy"
        assert entries[-1]["delta"] == {"prompt": "Default prompt.", "keyterms": ["Acme"]}


async def test_a_bad_default_is_refused_naming_the_field_and_the_limit(
    cp: ControlPlaneUnderTest,
) -> None:
    bad = {"id": "turn-defaults", "defaults": {"max_turn_silence_ms": 10_001}}
    answer = await cp.call("POST", "/v1/policies", body=bad, expect=422)
    assert answer["error"]["code"] == "invalid_policy"
    (violation,) = answer["error"]["details"]["violations"]
    assert (violation["field"], violation["rule"], violation["limit"]) == (
        "defaults.max_turn_silence_ms",
        "max",
        10_000,
    )
    assert cp.service.store.records() == []  # nothing was written
