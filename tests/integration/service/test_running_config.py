"""``running_config`` in the session view (docs/api.md): what the upstream runs as the record
knows it, next to ``effective_config`` (what the policies want). ``synced`` says no push is
pending or in doubt; it does not say the upstream runs ``effective_config``: a client that
overrides an unlocked policy field is not fought at once, and only ``running_config`` shows
what runs. Real sockets, the emulator's own config as the truth."""

from __future__ import annotations

import asyncio
import json
import time

from tests.integration.differential.actors import ControlApp, GatewayAgent, GatewayStreaming
from tests.integration.differential.views import diff_views, emulator_view, recorded_view
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, Emulator, eventually


async def test_a_client_override_shows_in_running_config_not_effective_config(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    await cp.publish({"id": "tone", "match": {"kind": ["voice-agent-v1"]},
                      "set": {"system_prompt": "Policy says hi."}})  # fmt: skip
    agent = GatewayAgent("a0", "voice-agent-v1", "voice-agent", "gateway")
    try:
        await agent.open(cp.ws_base, "tier=gold")
        sid = agent.session_id = cp.live_by_upstream(agent.upstream_id)
        await agent.update({"system_prompt": "Client says hi."})  # unlocked: not fought
        await eventually(lambda: agent.answered)
        truth = (await emulator.session(agent.upstream_id))["config"]
        assert truth["system_prompt"] == "Client says hi."

        async def shown() -> dict[str, object] | None:
            body = await cp.session(sid)
            running = body.get("running_config") or {}
            return body if running.get("system_prompt") == "Client says hi." else None

        body = await eventually(shown)
        assert body["state"] == "synced", body
        assert body["effective_config"]["system_prompt"] == "Policy says hi."
        view = recorded_view(agent.kind, agent.model, body["running_config"])
        assert diff_views(view, emulator_view(agent.kind, agent.model, truth)) == {}
    finally:
        await agent.close()


async def test_streaming_running_config_is_what_was_sent(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """Streaming v3 acknowledges nothing: ``running_config`` is what went upstream (the
    client's updates by their effect on the upstream's config model, presets included)."""
    stream = GatewayStreaming("s0", "streaming-v3", "universal-3-5-pro", "gateway")
    try:
        await stream.open(cp.ws_base, "tier=gold")
        sid = stream.session_id = cp.live_by_upstream(stream.upstream_id)
        await cp.publish({"id": "terms", "match": {"kind": ["streaming-v3"]},
                          "set": {"keyterms": ["acme"], "max_turn_silence_ms": 1800}})  # fmt: skip
        await stream.update({"max_turn_silence": 2200})

        async def same() -> bool:
            await asyncio.sleep(0.05)
            truth = (await emulator.session(stream.upstream_id))["config"]
            body = await cp.session(sid)
            view = recorded_view(stream.kind, stream.model, body["running_config"])
            diffs = diff_views(view, emulator_view(stream.kind, stream.model, truth))
            return not diffs and truth.get("max_turn_silence") == 2200

        await eventually(same)
        body = await cp.session(sid)
        assert body["running_config"]["keyterms"] == ["acme"], json.dumps(body)
        assert body["versions"]["acked"] is None  # (never claimed acknowledged)
    finally:
        await stream.close()


async def test_an_app_update_after_a_written_push_wins_over_its_late_report(
    cp: ControlPlaneUnderTest, emulator: Emulator
) -> None:
    """Control channel: the app got our push, forwarded it upstream, and before it reported
    ``applied`` it changed the same field itself (accepted, then sent upstream after the push):
    the upstream runs the app's value, and so must the record once the push is reported
    (differential seeds 22/26: the report re-applied the push's value over it)."""
    app = ControlApp("ca", "voice-agent-v1", "voice-agent", "control")
    try:
        await app.open(f"ws://127.0.0.1:{emulator.port}", cp.ws_base, ADMIN, {"tier": "gold"})
        sid = app.session_id
        app.report_delay_s = 0.4  # the push stays unanswered meanwhile
        await cp.publish({"id": "turns", "match": {"kind": ["voice-agent-v1"]},
                          "set": {"min_turn_silence_ms": 400}})  # fmt: skip
        await eventually(lambda: app.pending > 0)  # the push reached the app
        await app.update({"min_turn_silence_ms": 240})
        await eventually(lambda: not app.busy)

        async def reported() -> bool:  # the app's late report is in the record
            return any(e["cause"] == "policy" and e["status"] != "sent"
                       for e in await cp.log(sid))  # fmt: skip

        await eventually(reported)
        truth = emulator_view(app.kind, app.model,
                              (await emulator.session(app.upstream_id))["config"])  # fmt: skip
        assert truth["min_turn_silence_ms"] == 240
        answer = await cp.call("GET", f"/v1/sessions/{sid}/config-at?at={time.time()!r}",
                               expect=200)  # fmt: skip
        assert answer["rebuild"]["verified"] is True, answer
        assert diff_views(recorded_view(app.kind, app.model, answer["config"]), truth) == {}
        body = await cp.session(sid)
        assert diff_views(recorded_view(app.kind, app.model, body["running_config"]), truth) == {}
    finally:
        await app.close()
