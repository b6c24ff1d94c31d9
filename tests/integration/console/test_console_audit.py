"""The console as a compliance reviewer reads it (docs/console.md): for one call, the
configuration in effect at an instant, with its proof, is what ``controlplane audit at``
says for the same call and instant, and an entry that leaves what the upstream runs unknown
(an ``upstream`` ``unverified`` doubt) never reads as applied or acknowledged.

A real SDK session: the AssemblyAI Python SDK's Streaming v3 client through the gateway to the
emulator, whose faults make the upstream drop our second push with a ``Warning``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
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
from playwright.async_api import Page, expect

from controlplane import cli
from controlplane.edges.client import ControlClient
from tests.integration.console.conftest import acking_clients, screenshot
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, Emulator, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _cli_at(cp: ControlPlaneUnderTest, session: str, at: float) -> tuple[int, Any, str]:
    """``controlplane audit at`` (JSON, then text) as the compliance role, for one call."""
    answers = []
    for extra in (["--json"], []):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["audit", "at", session, repr(at), "--url", cp.base,
                             "--token", "tok-compliance", *extra])  # fmt: skip
        answers.append((code, out.getvalue()))
    (code, as_json), (_, text) = answers
    return code, json.loads(as_json), text


async def test_config_at_in_the_console_equals_audit_at_and_a_doubt_never_reads_as_applied(
    stack: ControlPlaneUnderTest, emulator: Emulator, page: Page
) -> None:
    doc = {"id": "audited", "match": {"labels": {"team": "audit"}}}
    client = AsyncRealTimeTranscriber(RealTimeTranscriberOptions(
        api_key="test-key", api_host=f"{stack.ws_base}/labels/team=audit"))  # fmt: skip
    begins: list[BeginEvent] = []
    client.on(RealTimeEvents.Begin, lambda _c, event: begins.append(event))
    await client.connect(RealTimeParameters(sample_rate=16000,
                                            speech_model="universal-3-5-pro"))  # fmt: skip
    try:
        await eventually(lambda: begins)
        upstream_id = begins[0].id
        await stack.publish({**doc, "set": {"keyterms": ["Acme"]}})

        async def log_has(cause: str, version: int) -> bool:
            return any(e["cause"] == cause and e["policies"] and e["policies"][0]["version"]
                       == version for e in await stack.log(upstream_id))  # fmt: skip

        await eventually(lambda: log_has("policy", 1))
        refuse = {"reject_next_update": {"style": "warning", "message": "not now"}}
        await emulator.faults(upstream_id, refuse)
        await stack.publish({**doc, "set": {"keyterms": ["Beta"]}})

        async def doubted() -> list[dict[str, Any]]:
            return [e for e in await stack.log(upstream_id) if e["cause"] == "upstream"]

        [doubt] = await eventually(doubted)
        truth = (await emulator.session(upstream_id))["config"]
        assert "Beta" not in json.dumps(truth)  # the upstream dropped our second push
        at = time.time() + 0.5
        code, said, text = await asyncio.to_thread(_cli_at, stack, upstream_id, at)
        assert code == 0, text
        assert said["config"]["keyterms"] == ["Beta"]  # the record's config: not proof it ran
        assert said["in_doubt"] is True and [d["seq"] for d in said["doubts"]] == [doubt["seq"]]
        assert "IN DOUBT" in text and f"seq {doubt['seq']}" in text

        await page.goto(f"{stack.base}/ui/sessions/{upstream_id}#token=tok-compliance")
        await expect(page.get_by_test_id("session-id")).to_have_text(said["session_id"])
        entry = page.locator(f'[data-testid=timeline-entry][data-seq="{doubt["seq"]}"]')
        await expect(entry).to_have_attribute("data-status", "unverified")
        await expect(entry).to_have_attribute("data-cause", "upstream")
        await expect(entry.get_by_test_id("timeline-doubt")).to_have_text("in doubt")
        # what runs, as the record knows it, says which fields it may have wrong
        session = await stack.session(upstream_id)
        assert session["in_doubt"] == ["keyterms"], session
        await expect(page.get_by_test_id("running-in-doubt")).to_have_attribute(
            "data-fields", ",".join(session["in_doubt"])
        )
        await page.get_by_test_id("config-at-input").fill(repr(at))
        await page.get_by_test_id("config-at-show").click()
        shown = json.loads(await page.get_by_test_id("config-at-config").inner_text())
        assert shown == said["config"]
        est = said["established_by"]
        established = page.get_by_test_id("config-at-established")
        for name in ("seq", "status", "cause"):
            await expect(established).to_have_attribute(f"data-{name}", str(est[name]))
        await expect(page.get_by_test_id("config-at-meaning")).to_have_text(est["meaning"])
        doubts = page.get_by_test_id("config-at-doubt")
        await expect(doubts).to_have_count(len(said["doubts"]))
        assert await doubts.first.get_attribute("data-seq") == str(doubt["seq"])
        await expect(page.get_by_test_id("config-at-in-doubt")).to_be_visible()
        await expect(page.get_by_test_id("config-at-verified")).to_have_attribute(
            "data-verified", str(said["verified"]).lower()
        )
        # nothing in the answer says acknowledged: Streaming v3 has no acknowledgement
        badges = await page.locator("[data-testid=config-at-result] .badge").all_inner_texts()
        assert "acked" not in badges and "in doubt" in badges, badges
        notes = await page.get_by_test_id("config-at-note").all_inner_texts()
        assert notes == said["notes"]
        # the proof, as audit at prints it: rebuild checks, the chain, checkpoint coverage
        rebuild = page.get_by_test_id("config-at-rebuild")
        await expect(rebuild).to_have_attribute("data-checked", str(said["rebuild"]["checked"]))
        await expect(rebuild).to_have_attribute(
            "data-failures", str(len(said["rebuild"]["failures"]))
        )
        await expect(page.get_by_test_id("config-at-chain")).to_have_attribute(
            "data-ok", str(said["chain"]["ok"]).lower()
        )
        await expect(page.get_by_test_id("config-at-checkpoint")).to_have_attribute(
            "data-covered", str(bool(said["checkpoint"].get("covered"))).lower()
        )
        covered = "is covered by checkpoint" in text
        assert covered == bool(said["checkpoint"].get("covered"))
        await screenshot(page, "session-doubt")
    finally:
        await client.disconnect(terminate=True)


async def test_a_resumed_calls_page_answers_an_earlier_instant_from_its_first_session(
    stack: ControlPlaneUnderTest, emulator: Emulator, page: Page
) -> None:
    """Opened by the call's upstream id, the page shows the latest session of a resumed Voice
    Agent call; an instant during its first session is answered from that session (as
    ``audit at UPSTREAM_ID``), and the page says which session answered."""
    doc = {"id": "resumed", "match": {"labels": {"team": "resume"}}}
    headers = {"Authorization": "Bearer test-key", "X-Session-Labels": "team=resume"}

    async def call(first: dict[str, Any]) -> tuple[Any, str]:
        ws = await websockets.connect(stack.ws_base + "/v1/ws", additional_headers=headers)
        await ws.send(json.dumps(first))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if message["type"] == "session.ready":
                return ws, str(message["session_id"])

    ws, upstream_id = await call({"type": "session.update", "session": {}})
    first = stack.live_by_upstream(upstream_id)
    await stack.publish({**doc, "set": {"keyterms": ["Alpha"]}})

    async def acked() -> float | None:
        log = await stack.log(first)
        return next((e["at"] for e in log if e["status"] == "acked" and e["cause"] == "policy"),
                    None)  # fmt: skip

    during_first = await eventually(acked) + 0.01
    await emulator.faults(upstream_id, {"drop_after_messages": 1})
    await stack.publish({**doc, "set": {"keyterms": ["Beta"]}})
    await eventually(lambda: first not in stack.service.engine.live, timeout=10)
    await ws.close()
    resumed, _ = await call({"type": "session.resume", "session_id": upstream_id})
    try:
        second = stack.live_by_upstream(upstream_id)
        await page.goto(f"{stack.base}/ui/sessions/{upstream_id}#token=tok-compliance")
        await expect(page.get_by_test_id("session-id")).to_have_text(second)
        await page.get_by_test_id("config-at-input").fill(repr(during_first))
        await page.get_by_test_id("config-at-show").click()
        await expect(page.get_by_test_id("config-at-session")).to_have_attribute(
            "data-session", first
        )
        shown = json.loads(await page.get_by_test_id("config-at-config").inner_text())
        _, said, _ = await asyncio.to_thread(_cli_at, stack, upstream_id, during_first)
        assert said["session_id"] == first and shown == said["config"]
        assert shown["keyterms"] == ["Alpha"]
    finally:
        await resumed.close()


async def test_a_push_no_answer_confirmed_is_not_rolled_out_on_the_policy_page(
    stack: ControlPlaneUnderTest, page: Page
) -> None:
    """Two Voice Agent apps acknowledge a push, two never answer: after the acknowledgement
    timeout those two are 'unverified' and in doubt (rollout 'in_doubt'); the page counts them
    in its unverified figure but not as rolled out (it showed 100 %)."""
    labels = {"team": "doubted"}
    silent = [ControlClient(stack.ws_base + "/v1/control", token=ADMIN, kind="voice-agent-v1",
                            model="voice-agent", labels=labels) for _ in range(2)]  # fmt: skip
    async with acking_clients(stack, 2, labels), contextlib.AsyncExitStack() as apps:
        for app in silent:
            await apps.enter_async_context(app)
        await stack.publish({"id": "doubted", "match": {"labels": labels},
                             "set": {"system_prompt": "d"}})  # fmt: skip

        async def timed_out() -> dict[str, Any] | None:
            body = await stack.call("GET", "/v1/policies/doubted/rollout", expect=200)
            totals: dict[str, Any] = body["totals"]
            return totals if totals["in_doubt"] == 2 and totals["acknowledged"] == 2 else None

        totals = await eventually(timed_out, timeout=10)
        assert totals["unverified"] == 2
        await page.goto(f"{stack.base}/ui/policies/doubted#token=tok-viewer")
        await expect(page.get_by_test_id("rollout-unverified")).to_have_text("2")
        await expect(page.get_by_test_id("rollout-in-doubt")).to_have_text("2")
        await expect(page.get_by_test_id("rollout-percent")).to_have_attribute("data-percent", "50")
        await page.goto(f"{stack.base}/ui/#token=tok-viewer")
        row = page.locator('[data-testid=policy-row][data-policy="doubted"]')
        await expect(row.get_by_test_id("policy-percent")).to_have_text("50 % of 4")
