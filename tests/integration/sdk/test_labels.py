"""Labels reach a session by the base URL alone (path), or from the API key (credential)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import websockets
from assemblyai.streaming.v3 import (
    AsyncRealTimeTranscriber,
    BeginEvent,
    RealTimeEvents,
    RealTimeParameters,
    RealTimeTranscriberOptions,
)

from tests.integration.security.conftest import ControlPlaneFactory
from tests.integration.service.conftest import ControlPlaneUnderTest, Emulator, eventually

QUERY = "sample_rate=16000&speech_model=universal-3-5-pro"
EU_POLICY = {
    "id": "eu-disclosure",
    "match": {"kind": ["streaming-v3"], "labels": {"region": "eu"}},
    "set": {"prompt": "This call is recorded."},
    "lock": ["prompt"],
}


async def _sdk_begin(api_host: str, api_key: str = "test-key") -> tuple[Any, BeginEvent]:
    client = AsyncRealTimeTranscriber(RealTimeTranscriberOptions(api_key=api_key,
                                                                 api_host=api_host))  # fmt: skip
    begins: list[BeginEvent] = []
    client.on(RealTimeEvents.Begin, lambda _c, event: begins.append(event))
    await client.connect(RealTimeParameters(sample_rate=16000,
                                            speech_model="universal-3-5-pro"))  # fmt: skip
    await eventually(lambda: begins)
    return client, begins[0]


async def test_python_sdk_carries_labels_in_its_base_url_and_a_label_policy_targets_it(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    await cp.publish(EU_POLICY)
    client, begin = await _sdk_begin(f"{cp.ws_base}/labels/region=eu,tenant=acme%2Cltd,team=a%2Fb")
    try:
        session_id = cp.live_by_upstream(begin.id)
        session = await cp.session(session_id)
        assert session["labels"] == {"region": "eu", "tenant": "acme,ltd", "team": "a/b"}
        assert session["applied"][0]["id"] == "eu-disclosure"
        upstream = await emulator.session(begin.id)
        assert upstream["config"]["prompt"] == "This call is recorded."
    finally:
        await client.disconnect(terminate=True)


async def test_agent_path_labels_and_bad_path_labels_are_refused(
    cp: ControlPlaneUnderTest,
) -> None:
    url = f"{cp.ws_base}/labels/region=eu/v1/ws"
    headers = {"Authorization": "Bearer test-key"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {}}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert ready["type"] == "session.ready"
        live = await eventually(lambda: list(cp.service.engine.live.values()))
        assert live[0].session.labels == {"region": "eu"}
    with pytest.raises(websockets.InvalidStatus) as err:
        async with websockets.connect(f"{cp.ws_base}/labels/region/v3/ws?{QUERY}"):
            pass
    assert err.value.response.status_code == 400
    assert b"bad_connect_parameters" in err.value.response.body
    assert b"must be key=value" in err.value.response.body


async def test_credential_labels_come_from_the_key_and_cannot_be_changed_by_the_client(
    cp_factory: ControlPlaneFactory,
    emulator: Emulator,
    tmp_path: Path,
) -> None:
    table = tmp_path / "credential-labels"
    digest = hashlib.sha256(b"acme-key").hexdigest()
    table.write_text(f"# tenants\n{digest} tenant=acme,region=eu\n")
    async with cp_factory(credential_labels_file=table) as cp:
        await cp.publish(EU_POLICY)
        # the SDK unchanged (host only): the key alone labels the session
        client, begin = await _sdk_begin(cp.ws_base, api_key="acme-key")
        try:
            session = await cp.session(cp.live_by_upstream(begin.id))
            assert session["labels"] == {"tenant": "acme", "region": "eu"}
            upstream = await emulator.session(begin.id)
            assert upstream["config"]["prompt"] == "This call is recorded."
        finally:
            await client.disconnect(terminate=True)

        # the client may repeat its tenant, never change it: refused with a reason the SDK shows
        client = AsyncRealTimeTranscriber(RealTimeTranscriberOptions(
            api_key="acme-key", api_host=f"{cp.ws_base}/labels/tenant=globex"))  # fmt: skip
        errors: list[Any] = []
        client.on(RealTimeEvents.Error, lambda _c, error: errors.append(error))
        await client.connect(RealTimeParameters(sample_rate=16000,
                                                speech_model="universal-3-5-pro"))  # fmt: skip
        await eventually(lambda: errors)
        await client.disconnect()
        shown = " ".join(str(e) for e in errors)
        assert "label 'tenant' is 'acme' from the credential but 'globex' from the path" in shown
        assert "acme-key" not in shown
        assert cp.service.engine.live == {}

        headers = {"Authorization": "Bearer acme-key", "X-Session-Labels": "region=us"}
        async with websockets.connect(f"{cp.ws_base}/v1/ws", additional_headers=headers) as ws:
            refused = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        assert refused["type"] == "session.error" and refused["code"] == "label_conflict"
        assert refused["message"].startswith(
            "label 'region' is 'eu' from the credential but 'us' from the header"
        )
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason.startswith("label 'region' is 'eu' from the credential")
        for kind in ("streaming-v3", "voice-agent-v1"):
            counted = cp.service.metrics.registry.get_sample_value(
                "controlplane_rejects_total", {"kind": kind, "code": "label_conflict"})  # fmt: skip
            assert counted == 1
        headers = {"Authorization": "acme-key"}
        url = f"{cp.ws_base}/labels/tenant=acme,call=c1/v3/ws?{QUERY}"
        async with websockets.connect(url, additional_headers=headers) as ws:
            begin_msg = json.loads(await ws.recv())
            session = await cp.session(cp.live_by_upstream(begin_msg["id"]))
            assert session["labels"] == {"tenant": "acme", "region": "eu", "call": "c1"}
