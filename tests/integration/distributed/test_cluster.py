"""Replicas as one service: restart, owner routing, lost replicas, the durable audit."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from controlplane import cli
from controlplane.edges.client import ControlClient
from tests.integration.distributed.conftest import TTL_S, Cluster
from tests.integration.service.conftest import ADMIN, eventually


async def test_a_restarted_replica_rebuilds_the_policy_set_before_it_is_ready(
    cluster: Cluster,
) -> None:
    a = await cluster.start("node-a")
    await a.publish({"id": "disclosure", "match": {"kind": ["voice-agent-v1"]},
                     "set": {"system_prompt": "This call is recorded."}})  # fmt: skip
    await a.publish({"id": "gone", "set": {"prompt": "x"}})
    await a.call("DELETE", "/v1/policies/gone", expect=200)
    async with a.client(labels={"tenant": "acme"}) as app:
        assert app.session_id is not None
        old_session = app.session_id
    await a.stop()

    again = await cluster.start("node-a")  # same node id, same data directory
    ready = await again.call("GET", "/readyz", token=None, expect=200)
    assert ready["checks"]["policies_replayed"] is True
    assert ready["checks"]["registry"] is True
    active = [p["id"] for p in (await again.call("GET", "/v1/policies"))["items"]]
    assert active == ["disclosure"]
    async with again.client() as app:
        # a new session starts on the effective config (its first push carries the policy)
        push = await asyncio.wait_for(anext(app.pushes()), 5)
        assert push.message["session"] == {"system_prompt": "This call is recorded."}
    # the earlier session's log survived the restart and still verifies
    reports = await again.call("GET", f"/v1/audit/verify?session={old_session}", expect=200)
    assert reports["items"][0]["ok"] is True


async def test_relabel_on_one_replica_changes_the_session_held_by_the_other(
    cluster: Cluster,
) -> None:
    a = await cluster.start("node-a")
    b = await cluster.start("node-b")
    await a.publish({"id": "vip", "match": {"labels": {"tier": "vip"}},
                     "set": {"system_prompt": "Be extra polite."}})  # fmt: skip
    async with b.client(labels={"tier": "basic"}) as app:
        sid = app.session_id
        assert sid is not None
        pushes = app.pushes()
        body = await a.call("PATCH", f"/v1/sessions/{sid}/labels",
                            body={"labels": {"tier": "vip"}}, expect=200)  # fmt: skip
        assert body["labels"] == {"tier": "vip"}
        assert body["node"] == "node-b"
        push = await asyncio.wait_for(anext(pushes), 5)
        assert push.message["session"] == {"system_prompt": "Be extra polite."}
        await app.applied(push.version)
        assert b.service.engine.live[sid].session.labels == {"tier": "vip"}

        async def relabel_logged() -> list[Any]:
            log = await a.log(sid)  # read through A: answered by the owner
            return [e for e in log if e["cause"] == "relabel" and e["status"] == "acked"]

        await eventually(relabel_logged)
        # the owner's errors come back as they are
        bad = await a.call("PATCH", "/v1/sessions/nope/labels",
                           body={"labels": {"x": "y"}}, expect=404)  # fmt: skip
        assert bad["error"]["code"] == "session_not_found"


async def test_a_killed_replica_s_sessions_end_after_the_ttl(cluster: Cluster) -> None:
    a = await cluster.start("node-a")
    proc, address = await asyncio.to_thread(cluster.spawn, "node-b")
    client = ControlClient(f"ws://{address}/v1/control", token=ADMIN, kind="voice-agent-v1",
                           model="voice-agent", labels={"tenant": "acme"})  # fmt: skip
    await client.__aenter__()
    try:
        sid = client.session_id
        assert sid is not None

        async def listed_on_a() -> bool:
            return bool((await a.session(sid))["node"] == "node-b")

        await eventually(listed_on_a, timeout=10)
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        killed_at = asyncio.get_running_loop().time()

        async def ended() -> dict[str, Any] | None:
            session = await a.session(sid)
            return session if session["state"] == "ended" else None

        session = await eventually(ended, timeout=TTL_S * 4)
        assert session["end_cause"] == "node_lost"
        assert asyncio.get_running_loop().time() - killed_at >= TTL_S * 0.5
        live = await a.call("GET", "/v1/sessions", expect=200)
        assert sid not in [s["id"] for s in live["items"]]
        # relabel of a session whose owner is gone: not live anymore
        await a.call("PATCH", f"/v1/sessions/{sid}/labels", body={"labels": {"x": "y"}},
                     expect=409)  # fmt: skip
    finally:
        await client.close()


def _cli(*args: str) -> int:
    return cli.main(list(args))


async def test_audit_verifies_from_cp_audit_alone_after_redis_is_flushed(
    cluster: Cluster, tmp_path: Path, capsys: Any
) -> None:
    a = await cluster.start("node-a")
    async with a.client(labels={"tenant": "acme"}) as app:
        sid = app.session_id
        assert sid is not None
        pushes = app.pushes()
        for n in (1, 2):
            await a.publish({"id": "p", "set": {"system_prompt": f"v{n}"}})
            push = await asyncio.wait_for(anext(pushes), 5)
            await app.applied(push.version)
    local = await a.log(sid)
    assert len(local) >= 5  # connect, then sent + acked per version

    async def shipped() -> bool:
        return await a.metric("controlplane_audit_shipped_total") >= len(local)

    await eventually(shipped)
    await a.stop()
    r = aioredis.Redis.from_url(cluster.redis_url)
    try:
        await r.flushall()
    finally:
        await r.aclose()

    nats_args = ["--nats-url", cluster.nats_url, "--nats-audit-stream", cluster.audit_stream,
                 "--nats-subject-prefix", cluster.subject_prefix]  # fmt: skip
    capsys.readouterr()
    code = await asyncio.to_thread(_cli, "audit", "verify", sid, "--json", *nats_args)
    out = capsys.readouterr().out
    assert code == 0, out
    [report] = json.loads(out)["items"]  # the final checkpoint (at stop) covers every entry
    assert report == {"session_id": sid, "ok": True, "count": len(local), "first_bad_seq": None,
                      "problem": None, "covered_seq": len(local)}  # fmt: skip

    target = tmp_path / "export.jsonl"
    code = await asyncio.to_thread(
        _cli, "audit", "export", "--session", sid, "-o", str(target), *nats_args
    )
    assert code == 0
    exported = [json.loads(line) for line in target.read_text().splitlines()]
    assert exported == local
    # the auditor proves the exported call offline: its chain recomputes; an edit is caught
    capsys.readouterr()
    code = await asyncio.to_thread(_cli, "audit", "verify", "--file", str(target), "--json")
    assert code == 0
    [report] = json.loads(capsys.readouterr().out)["items"]
    assert (report["session_id"], report["ok"], report["count"]) == (sid, True, len(local))
    edited = tmp_path / "edited.jsonl"
    edited.write_text(target.read_text().replace('"v1"', '"v9"', 1))
    assert await asyncio.to_thread(_cli, "audit", "verify", "--file", str(edited)) == 1
    assert f"BROKEN  {sid}" in capsys.readouterr().out
    # a time range selects by the entries' own timestamps
    first, last = local[0]["at"], local[-1]["at"]
    code = await asyncio.to_thread(
        _cli, "audit", "export", "--since", str(first), "--until", str(last), "-o",
        str(target), *nats_args,
    )  # fmt: skip
    assert code == 0
    assert [json.loads(x)["seq"] for x in target.read_text().splitlines()] == [
        e["seq"] for e in local if first <= e["at"] < last
    ]
    # every session in the stream at once, and a tampered copy is caught
    capsys.readouterr()
    assert await asyncio.to_thread(_cli, "audit", "verify", *nats_args) == 0
    assert f"ok      {sid}" in capsys.readouterr().out


async def test_publishes_without_a_version_racing_on_two_replicas_all_land(
    cluster: Cluster,
) -> None:
    """Two replicas publish the same policy id at the same moment, neither naming a version:
    both are accepted, one after the other (last writer wins, as on one replica). The loser
    used to get 409 'publish version 2 or omit version' although it had omitted it (found by
    the differential test, seed 99, distributed)."""
    a = await cluster.start("node-a")
    b = await cluster.start("node-b")
    answers: list[dict[str, Any]] = []
    for n in range(6):
        answers += await asyncio.gather(
            a.publish({"id": "raced", "set": {"system_prompt": f"a {n}"}}),
            b.publish({"id": "raced", "set": {"system_prompt": f"b {n}"}}),
        )
    assert sorted(r["version"] for r in answers) == list(range(1, 13))
    listed = await a.call("GET", "/v1/policies/raced/versions", expect=200)
    assert [v["version"] for v in listed["items"]] == list(range(1, 13))
