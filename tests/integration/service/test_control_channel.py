"""Issue 4 acceptance: control channel, coalescing, experiments."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from typing import Any

from controlplane.edges.client import ControlClient
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, eventually


def _client(cp: ControlPlaneUnderTest, **kw: Any) -> ControlClient:
    kw.setdefault("kind", "voice-agent-v1")
    kw.setdefault("model", "voice-agent")
    return ControlClient(cp.ws_base + "/v1/control", token=ADMIN, **kw)


async def test_control_channel_client_receives_applies_and_acknowledges(
    cp: ControlPlaneUnderTest,
) -> None:
    async with _client(cp, labels={"tenant": "acme"}, config={"system_prompt": "Hi."}) as app:
        assert app.effective_config == {"system_prompt": "Hi."}
        await cp.publish({"id": "acme", "match": {"labels": {"tenant": "acme"}},
                          "set": {"keyterms": ["Acme", "OrderPro"]}})  # fmt: skip
        pushes = app.pushes()
        push = await asyncio.wait_for(anext(pushes), 5)
        assert push.message == {
            "type": "session.update",
            "session": {"input": {"keyterms": ["Acme", "OrderPro"]}},
        }
        await app.applied(push.version)
        assert app.session_id is not None
        sid = app.session_id

        async def acked() -> bool:
            return any(e["status"] == "acked" for e in await cp.log(sid))

        await eventually(acked)
        session = await cp.session(sid)
        assert session["versions"]["acked"] == push.version
        assert session["effective_config"]["keyterms"] == ["Acme", "OrderPro"]
        rollout = await cp.call("GET", "/v1/policies/acme/rollout", expect=200)
        assert rollout["totals"]["targeted"] == 1
        assert rollout["totals"]["acknowledged"] == 1


async def test_ten_versions_to_a_slow_session_coalesce_and_end_on_the_latest(
    cp: ControlPlaneUnderTest,
) -> None:
    async with _client(cp) as app:
        pushes = app.pushes()
        doc = {"id": "burst", "match": {"kind": ["voice-agent-v1"]}}
        await cp.publish({**doc, "set": {"system_prompt": "v1"}})
        first = await asyncio.wait_for(anext(pushes), 5)  # in flight, not yet acknowledged
        for n in range(2, 11):
            await cp.publish({**doc, "set": {"system_prompt": f"v{n}"}})
        await app.applied(first.version)
        second = await asyncio.wait_for(anext(pushes), 5)
        assert second.message["session"] == {"system_prompt": "v10"}
        await app.applied(second.version)
        await asyncio.sleep(0.3)
        received = 2
        try:
            await asyncio.wait_for(anext(pushes), 0.3)
            received += 1
        except TimeoutError:
            pass
        assert received < 10
        assert received == 2
        assert app.session_id is not None
        session = await cp.session(app.session_id)
        assert session["effective_config"]["system_prompt"] == "v10"
        assert session["versions"]["acked"] == session["versions"]["desired"]
        metrics = await cp.call("GET", "/metrics", token=None)
        coalesced = [
            ln for ln in metrics.splitlines() if ln.startswith("controlplane_coalesced_total")
        ]
        assert float(coalesced[0].split()[-1]) >= 8


async def test_experiment_split_is_sticky_across_a_ramp_and_exported(
    cp: ControlPlaneUnderTest,
) -> None:
    clients = [_client(cp, labels={"pool": "exp"}) for _ in range(400)]
    await asyncio.gather(*(c.__aenter__() for c in clients))
    try:
        experiment = {"key": "upsell-q4", "variants": [
            {"name": "control", "weight": 50, "set": {}},
            {"name": "pitch", "weight": 50, "set": {"system_prompt": "Offer enterprise."}},
        ]}  # fmt: skip
        doc = {"id": "upsell", "match": {"labels": {"pool": "exp"}}, "experiment": experiment}
        await cp.publish({**doc, "rollout": {"percent": 50}}, token="tok-experimenter")
        first = await cp.call("GET", "/v1/experiments/upsell-q4/assignments", expect=200)
        before = {row["session_id"]: row["variant"] for row in first["items"]}
        assert 150 <= len(before) <= 250  # ~50 % of 400

        await cp.publish({**doc, "rollout": {"percent": 100}}, token="tok-experimenter")
        second = await cp.call("GET", "/v1/experiments/upsell-q4/assignments", expect=200)
        after = {row["session_id"]: row["variant"] for row in second["items"]}
        assert len(after) == 400
        assert all(after[sid] == variant for sid, variant in before.items())  # sticky
        pitch = sum(1 for v in after.values() if v == "pitch")
        assert 160 <= pitch <= 240  # 50/50 within 4 standard deviations

        text = await cp.call("GET", "/v1/experiments/upsell-q4/assignments?format=csv", expect=200)
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == 400
        assert {r["session_id"]: r["variant"] for r in rows} == after
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_a_push_frame_leaves_only_after_its_log_entry_is_on_disk(
    cp: ControlPlaneUnderTest,
) -> None:
    """Write-ahead: when an app reads a pushed frame, its `sent` entry is already in the
    JSONL file (not only in the group-commit buffer), so a replica killed mid-push has
    logged every frame it may have sent."""

    def on_disk(session_id: str, version: int) -> bool:
        for path in (cp.data_dir / "audit").glob("versionlog-*.jsonl"):
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if (row["session_id"], row["version"], row["status"]) == (
                    session_id, version, "sent"
                ):  # fmt: skip
                    return True
        return False

    apps = [_client(cp, labels={"wal": "yes"}, session_id=f"wal-{i}") for i in range(20)]
    for app in apps:
        await app.__aenter__()
    try:
        await cp.publish({"id": "wal", "match": {"labels": {"wal": "yes"}},
                          "set": {"system_prompt": "durable first"}})  # fmt: skip

        async def first_push(app: ControlClient) -> tuple[str, int, bool]:
            push = await asyncio.wait_for(anext(app.pushes()), 5)
            assert app.session_id is not None
            return app.session_id, push.version, on_disk(app.session_id, push.version)

        seen = await asyncio.gather(*(first_push(app) for app in apps))
        assert [ok for _, _, ok in seen] == [True] * len(apps), seen
    finally:
        for app in apps:
            await app.__aexit__(None, None, None)
