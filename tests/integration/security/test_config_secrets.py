"""Secrets a client puts in its own upstream config never reach the record: the Streaming v3
connect parameter ``webhook_auth_header_value`` and the Voice Agent ``session.webhook.secret``
go to the upstream unchanged (the emulator runs them) but the version log (REST, the JSONL
files that ship to the audit stream) and the process log show ``***`` in their place
(docs/security.md, "Secrets"). Same for a ``session.update`` later in the session.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.integration.security.test_secret_leaks import (  # noqa: F401
    STREAM,
    UPSTREAM_KEY,
    Stage,
    stage,
)
from tests.integration.service.conftest import eventually

WEBHOOK_SECRET = "whs-" + secrets.token_hex(16)
AGENT_SECRET = "ags-" + secrets.token_hex(16)
LATER_SECRET = "lat-" + secrets.token_hex(16)


async def _ended_logs(on: Stage, count: int) -> list[str]:
    async def ended() -> list[str] | None:
        status, text = await on.call("GET", "/v1/sessions?state=ended&limit=100")
        assert status == 200
        ids = [s["id"] for s in json.loads(text)["items"]]
        return ids if len(ids) >= count else None

    return [(await on.call("GET", f"/v1/sessions/{sid}/log?limit=1000"))[1]
            for sid in await eventually(ended)]  # fmt: skip


async def _upstream_sessions(on: Stage) -> str:
    """What the emulator recorded of every session it ran (its config included)."""
    async with on.http.get(on.emulator + "/_emulator/sessions") as resp:
        items = (await resp.json())["items"]
    details = []
    for item in items:
        async with on.http.get(f"{on.emulator}/_emulator/sessions/{item['id']}") as resp:
            details.append(await resp.text())
    return "\n".join(details)


async def test_client_config_secrets_go_upstream_but_never_into_the_record(
    stage: Stage,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    hook = ("&webhook_url=https%3A%2F%2Fhooks.example%2Fx&webhook_auth_header_name=X-Auth"
            f"&webhook_auth_header_value={WEBHOOK_SECRET}")  # fmt: skip
    async with stage.http.ws_connect(
        stage.ws + STREAM + hook, headers={"Authorization": UPSTREAM_KEY}
    ) as ws:
        assert (await stage.frames(ws, until="Begin"))[-1]["type"] == "Begin"
        later = {"type": "UpdateConfiguration", "webhook_auth_header_value": LATER_SECRET}
        await ws.send_json(later)
        await stage.frames(ws)
    webhook: dict[str, Any] = {"url": "https://hooks.example/a", "secret": AGENT_SECRET}
    async with stage.http.ws_connect(
        stage.ws + "/v1/ws", headers={"Authorization": f"Bearer {UPSTREAM_KEY}"}
    ) as ws:
        await ws.send_json({"type": "session.update",
                            "session": {"system_prompt": "hi", "webhook": webhook}})  # fmt: skip
        assert (await stage.frames(ws, until="session.ready"))[-1]["type"] == "session.ready"
        update = {"webhook": {**webhook, "secret": LATER_SECRET}}
        await ws.send_json({"type": "session.update", "session": update})
        await stage.frames(ws, until="session.updated")

    logs = await _ended_logs(stage, 2)
    files = sorted(p for p in Path(stage.data_dir).rglob("*") if p.is_file())
    on_disk = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    places = {"version log (REST)": "\n".join(logs), "version log (files)": on_disk,
              "logs": caplog.text}  # fmt: skip
    assert "webhook_auth_header_value" in places["version log (REST)"]  # the field, not its value
    assert "***" in places["version log (REST)"]
    for secret in (WEBHOOK_SECRET, AGENT_SECRET, LATER_SECRET):
        for place, text in places.items():
            assert secret not in text, f"a client's secret leaked into the {place}"
    # the upstream got the real values (the record is redacted, not the session)
    upstream = await _upstream_sessions(stage)
    for secret in (WEBHOOK_SECRET, AGENT_SECRET, LATER_SECRET):
        assert secret in upstream, secret
