"""Faults with real processes (issue #8): a replica SIGKILLed in the middle of a push, and
redis-server restarted empty while sessions register, end and receive pushes.

Real ``nats-server -js`` and ``redis-server``; the replica that is killed is a
``controlplane serve`` process; the upstream is the emulator, which outlives it.
"""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from controlplane.cluster.nats_audit import NatsAuditStream
from controlplane.edges.client import ControlClient, ControlError, ServerPush
from controlplane.service.records import public
from sessions.versionchain import verify_entries
from tests.integration.distributed.conftest import TTL_S, Cluster, Replica
from tests.integration.service.conftest import ADMIN, Emulator, eventually
from tests.support.servers import ServerProcess

STREAMING = "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro"
AGENT_KEY = {"Authorization": "Bearer test-key"}
STREAMING_KEY = {"Authorization": "test-key"}
OPENING = 16  # sessions opened at once


# -- clients ------------------------------------------------------------------------------
@dataclass
class GatewayClient:
    """A raw WebSocket client of the gateway, reading everything in the background."""

    kind: str  # "agent" | "streaming"
    ws: ClientConnection
    upstream_id: str
    received: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    def start(self) -> GatewayClient:
        self.reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                if isinstance(raw, str):
                    self.received.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass

    @property
    def closed(self) -> bool:
        return self.reader is not None and self.reader.done()

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            await self.reader


async def open_agent(base: str, first: dict[str, Any], labels: str = "") -> GatewayClient:
    """``session.update`` (new) or ``session.resume``; returns once ``session.ready`` came."""
    headers = AGENT_KEY | ({"X-Session-Labels": labels} if labels else {})
    ws = await websockets.connect(base + "/v1/ws", additional_headers=headers)
    await ws.send(json.dumps(first))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply["type"] == "session.ready", reply
    if first["type"] == "session.resume":
        assert reply["session_id"] == first["session_id"]
    return GatewayClient("agent", ws, str(reply["session_id"])).start()


async def open_streaming(base: str, labels: str = "") -> GatewayClient:
    headers = STREAMING_KEY | ({"X-Session-Labels": labels} if labels else {})
    ws = await websockets.connect(base + STREAMING, additional_headers=headers)
    begin = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert begin["type"] == "Begin", begin
    return GatewayClient("streaming", ws, str(begin["id"])).start()


async def bounded(coros: list[Any]) -> list[Any]:
    """Run ``coros`` at most ``OPENING`` at a time, results in order."""
    gate = asyncio.Semaphore(OPENING)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))


@dataclass
class App:
    """A control-channel app that applies every push it gets."""

    client: ControlClient
    tier: str
    pushes: list[ServerPush] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, replica: Replica, tier: str = "basic") -> App:
        client = replica.client(labels={"tier": tier})
        await client.__aenter__()
        app = cls(client, tier)
        app.task = asyncio.get_running_loop().create_task(app._apply())
        return app

    async def _apply(self) -> None:
        try:
            async for push in self.client.pushes():
                self.pushes.append(push)
                await self.client.applied(push.version)
        except (websockets.ConnectionClosed, ControlError):
            pass

    @property
    def session_id(self) -> str:
        assert self.client.session_id is not None
        return self.client.session_id

    async def close(self) -> None:
        await self.client.close()
        if self.task is not None:
            await self.task


# -- shared checks ------------------------------------------------------------------------
async def listed(replica: Replica, state: str | None = None) -> dict[str, dict[str, Any]]:
    """Every session the shared registry lists (live, or ``state``), paged."""
    out: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        query = "?limit=500" + (f"&state={state}" if state else "")
        query += f"&cursor={cursor}" if cursor else ""
        body = await replica.call("GET", "/v1/sessions" + query, expect=200)
        out.update((s["id"], s) for s in body["items"])
        cursor = body["next"]
        if cursor is None:
            return out


async def cp_audit_rows(replica: Replica) -> dict[str, list[dict[str, Any]]]:
    """Every entry of ``CP_AUDIT`` (this test's stream), per session."""
    audit = replica.service.cluster.audit
    assert isinstance(audit, NatsAuditStream)
    rows: dict[str, list[dict[str, Any]]] = {}

    def sink(data: bytes) -> None:
        row = json.loads(data)
        if "session_id" in row:  # not a checkpoint record
            rows.setdefault(row["session_id"], []).append(row)

    await audit.read(sink)
    return rows


def local_rows(data_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every entry a replica wrote to its local log (its data directory), per session."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((data_dir / "audit").glob("versionlog-*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows.setdefault(row["session_id"], []).append(row)
    return rows


async def all_shipped(cluster: Cluster, replicas: list[tuple[Replica, str]]) -> None:
    """Each replica's local log (flushed first) reaches ``CP_AUDIT`` whole, row for row."""
    for replica, node in replicas:
        assert replica.service is not None
        await replica.service.versionlog.flush()
        local = local_rows(cluster.root / node)

        async def shipped(replica: Replica = replica, local: Any = local) -> bool:
            durable = await cp_audit_rows(replica)
            return all(durable.get(sid) == rows for sid, rows in local.items())

        await eventually(shipped, timeout=15, interval=0.2)


# -- 1. SIGKILL of a replica while it pushes ---------------------------------------------
N_AGENT = 150
N_STREAMING = 50
ACK_DELAY_MS = 1500  # the upstream answers our pushes this late: A dies with acks outstanding


async def test_a_replica_killed_mid_push_its_clients_resume_on_the_other_on_the_current_config(
    cluster: Cluster, emulator: Emulator
) -> None:
    b = await cluster.start("node-b")
    proc, address = await asyncio.to_thread(cluster.spawn, "node-a")
    a_base = f"ws://{address}"
    a_http = f"http://{address}"
    http = cluster.http
    await b.publish({"id": "greeting", "set": {"system_prompt": "v1", "keyterms": ["one"],
                                               "max_turn_silence_ms": 1500}})  # fmt: skip

    async def a_ready() -> bool:
        async with http.get(a_http + "/readyz") as resp:
            return resp.status == 200

    await eventually(a_ready, timeout=15)
    hello = {"type": "session.update", "session": {"system_prompt": "mine"}}
    agents = await bounded([open_agent(a_base, hello) for _ in range(N_AGENT)])
    streams = await bounded([open_streaming(a_base) for _ in range(N_STREAMING)])
    clients = agents + streams
    for c in clients:  # our pushes wait in the upstream: they are in flight when A dies
        await emulator.faults(c.upstream_id, {"latency_ms": ACK_DELAY_MS})

    async def registered() -> dict[str, dict[str, Any]]:  # A's sessions, by upstream id
        on_a = {s["upstream_id"]: s for s in (await listed(b)).values() if s["node"] == "node-a"}
        assert len(on_a) == len(clients), len(on_a)
        return on_a

    old = await eventually(registered, timeout=10)

    await b.publish({"id": "greeting", "set": {"system_prompt": "v2", "keyterms": ["two"],
                                               "max_turn_silence_ms": 2000}})  # fmt: skip

    async def a_mid_push() -> bool:
        async with http.get(a_http + "/v1/policies/greeting/rollout",
                            headers={"Authorization": f"Bearer {ADMIN}"}) as resp:  # fmt: skip
            body = await resp.json()
        row = next((r for r in body["versions"] if r["version"] == 2), None)
        # every frame written, no acknowledgement back yet
        return bool(row and row["targeted"] == len(clients) and row["pending"] == 0
                    and row["acknowledged"] == 0)  # fmt: skip

    await eventually(a_mid_push, timeout=10, interval=0.02)
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait, 10)

    # every client sees its connection drop (no close frame: 1006)
    await eventually(lambda: all(c.closed for c in clients), timeout=10)
    assert {c.ws.close_code for c in clients} == {1006}
    # the policy changes while the sessions have no replica
    await b.publish({"id": "greeting", "set": {"system_prompt": "v3", "keyterms": ["three"],
                                               "max_turn_silence_ms": 2500}})  # fmt: skip

    async def released() -> bool:  # the upstream lets go of the dead replica's legs
        url = f"{emulator.base}/_emulator/sessions?kind=voice-agent-v1&state=suspended"
        async with emulator.http.get(url) as resp:
            suspended = {s["id"] for s in (await resp.json())["items"]}
        return suspended >= {c.upstream_id for c in agents}

    await eventually(released, timeout=15)
    for c in agents:  # the upstream answers promptly again
        await emulator.faults(c.upstream_id, {"latency_ms": None})
    b_base = b.ws_base
    resumed = await bounded([
        open_agent(b_base, {"type": "session.resume", "session_id": c.upstream_id})
        for c in agents
    ])  # fmt: skip
    fresh = await bounded([open_streaming(b_base) for _ in streams])
    now_clients = resumed + fresh
    engine = b.service.engine

    def converged() -> bool:
        assert len(engine.live) == len(now_clients)
        for ls in engine.live.values():
            p = ls.push
            assert p.in_flight is None and p.sent_version == p.desired_version, ls.session.id
            assert {r.version for r in ls.session.applied} == {3}
        return True

    await eventually(converged, timeout=15)
    # the upstream runs the current version everywhere: resumed and new sessions alike
    for c in now_clients:
        config = (await emulator.session(c.upstream_id))["config"]
        if c.kind == "agent":
            assert config["system_prompt"] == "v3"
            assert config["input"]["keyterms"] == ["three"]
            assert config["input"]["turn_detection"]["max_silence"] == 2500
        else:
            assert config["keyterms_prompt"] == ["three"]
            assert config["max_turn_silence"] == 2500

    # B's log of each: the resume (or the connect) and the current versions, acknowledged
    by_upstream = {ls.session.upstream_id: sid for sid, ls in engine.live.items()}
    for c in now_clients:
        sid = by_upstream[c.upstream_id]
        log = await b.log(sid)
        assert log[0]["cause"] == "connect"
        if c.kind == "agent":
            assert log[0]["wire"]["first_message"] == {"type": "session.resume",
                                                       "session_id": c.upstream_id}  # fmt: skip
            pushed = [e for e in log if e["version"] == 2]
            assert [e["status"] for e in pushed] == ["sent", "acked"], log
            assert pushed[0]["policies"] == [await b.ref("greeting", 3)]
        else:
            assert log[0]["policies"] == [await b.ref("greeting", 3)]
            assert log[0]["wire"]["connect"]["keyterms_prompt"] == '["three"]'
        # linked to the killed replica's record of the same call by the upstream session id
        assert (await b.session(sid))["upstream_id"] == c.upstream_id

    # the registry: A's records end node_lost after the TTL; only B's sessions are live
    async def a_records_ended() -> bool:
        ended = await listed(b, "ended")
        for record in old.values():
            assert ended.get(record["id"], {}).get("end_cause") == "node_lost", record["id"]
        return True

    await eventually(a_records_ended, timeout=TTL_S * 6)
    assert set(await listed(b)) == set(engine.live)

    # the audit trail of A's sessions: what A had shipped is readable through B at once...
    shipped_before = await cp_audit_rows(b)
    sample = next(iter(old.values()))["id"]
    assert await b.log(sample) == shipped_before.get(sample, [])
    # ...and A's local log, up to the kill, ships when A comes back on the same volume
    proc, address = await asyncio.to_thread(cluster.spawn, "node-a")

    async def shipped() -> bool:
        async with http.get(f"http://{address}/readyz") as resp:
            body = await resp.json()
        return bool(body["ready"] and body["checks"]["audit_backlog_bytes"] == 0)

    await eventually(shipped, timeout=20)
    proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.wait, 20)
    durable = await cp_audit_rows(b)
    local = local_rows(cluster.root / "node-a")
    for record in old.values():
        sid = record["id"]
        # every entry A made durable before it died is in CP_AUDIT, chain intact
        assert durable[sid] == local[sid], sid
        # write-ahead: the push A was making when it died is in its log (its frame left only
        # after its `sent` entry was durable); its outcome is unknown, so nothing follows it
        v2 = [await b.ref("greeting", 2)]
        pushed = [e for e in local[sid] if e["policies"] == v2 and e["cause"] == "policy"]
        assert [e["status"] for e in pushed] == ["sent"], (sid, local[sid])
        assert local[sid][: len(shipped_before.get(sid, []))] == shipped_before.get(sid, [])
        assert local[sid][0]["cause"] == "connect"
        assert verify_entries(sid, durable[sid]).ok
    for c in now_clients:
        sid = by_upstream[c.upstream_id]
        assert verify_entries(sid, durable[sid]).ok
    for c in now_clients:
        await c.close()


# -- 2. redis-server restarted (empty) while sessions register, end and get pushes --------
N_APPS = 60
N_ENDING = 20


async def test_redis_restarted_empty_sessions_keep_their_pushes_and_the_registry_is_rebuilt(
    redis_cluster: Cluster, own_redis: ServerProcess, emulator: Emulator
) -> None:
    cluster = redis_cluster
    a = await cluster.start("node-a")
    b = await cluster.start("node-b")
    await a.publish({"id": "tone", "set": {"system_prompt": "v1", "keyterms": ["one"]}})
    # gold sessions get a push during the outage; basic ones stay untouched (nothing to sync)
    apps = await bounded([App.open(a, tier="gold" if i % 2 else "basic") for i in range(N_APPS)])
    agents = await bounded([
        open_agent(a.ws_base, {"type": "session.update", "session": {}}, "tier=gold")
        for _ in range(4)
    ])  # fmt: skip
    streams = await bounded([open_streaming(a.ws_base, "tier=gold") for _ in range(4)])

    def all_at(version: str, tier: str | None = None) -> bool:
        for app in apps:
            if tier is None or app.tier == tier:
                assert app.pushes, app.session_id
                assert app.pushes[-1].message["session"]["system_prompt"] == version
        return True

    await eventually(lambda: all_at("v1"))

    async def in_sync(live_ids: set[str]) -> bool:  # the registry shows every live session as is
        for replica in (a, b):
            records = await listed(replica)
            assert set(records) == live_ids, len(records)
            for sid, record in records.items():
                local = a.service.engine.live[sid].session
                assert record["node"] == "node-a"
                assert record["versions"] == public(local)["versions"], sid  # (the API's view)
                assert record["state"] == local.state.value, sid
        return True

    await eventually(lambda: in_sync(set(a.service.engine.live)), timeout=10)
    await asyncio.to_thread(own_redis.stop)

    async def unready(replica: Replica) -> bool:
        body = await replica.call("GET", "/readyz", token=None)
        return body["ready"] is False and body["checks"]["registry"] is False

    await eventually(lambda: unready(a), timeout=10)
    # sessions end during the outage (their registry end waits), others get a new version
    ending, apps = apps[:N_ENDING], apps[N_ENDING:]
    for app in ending:
        await app.close()
    await agents.pop().close()
    await streams.pop().close()
    await a.publish({"id": "gold", "match": {"labels": {"tier": "gold"}}, "priority": 10,
                     "set": {"system_prompt": "v2", "keyterms": ["two"]}})  # fmt: skip
    await eventually(lambda: all_at("v2", "gold"))
    assert all_at("v1", "basic")

    async def gateway_pushed() -> bool:
        for c in agents + streams:
            config = (await emulator.session(c.upstream_id))["config"]
            keyterms = config["input"]["keyterms"] if c.kind == "agent" else config[
                "keyterms_prompt"]  # fmt: skip
            assert keyterms == ["two"], (c.kind, config)
        return True

    await eventually(gateway_pushed)
    # a session cannot register while the registry is down: refused, nothing left behind
    with pytest.raises(ControlError) as refused:
        await App.open(a)
    assert refused.value.code == "backend_unavailable"
    listed_down = await a.call("GET", "/v1/sessions", expect=503)
    assert listed_down["error"]["code"] == "backend_unavailable"
    live_ids = {app.session_id for app in apps} | {
        a.live_by_upstream(c.upstream_id) for c in agents + streams
    }
    assert set(a.service.engine.live) == live_ids

    await asyncio.to_thread(own_redis.start)  # same port, no data

    async def ready(replica: Replica) -> bool:
        return bool((await replica.call("GET", "/readyz", token=None))["ready"])

    await eventually(lambda: ready(a), timeout=10)
    await eventually(lambda: ready(b), timeout=10)

    # rebuilt: exactly the live sessions, as they are now, seen from either replica (also the
    # ones nothing changed during the outage: they are written back when Redis is reachable)
    await eventually(lambda: in_sync(live_ids), timeout=10)
    for app in ending:  # ended during the outage: not resurrected
        found = await a.call("GET", f"/v1/sessions/{app.session_id}")
        assert "error" in found or found["state"] == "ended", found
    # new sessions register again and start on the current version
    late = await App.open(a, "gold")
    await eventually(lambda: late.pushes and late.pushes[-1].message["session"][
        "system_prompt"] == "v2")  # fmt: skip
    # and a TTL later nobody ended them as lost
    await asyncio.sleep(TTL_S * 1.5)
    assert set(await listed(b)) == live_ids | {late.session_id}

    # no audit entry lost: every session's log verifies locally and is in CP_AUDIT as written
    await a.service.versionlog.flush()
    local = local_rows(cluster.root / "node-a")
    assert len(local) == N_APPS + 1 + 8  # every session ever opened here has a log

    async def all_shipped() -> bool:
        durable = await cp_audit_rows(a)
        for sid in local:
            assert verify_entries(sid, local[sid]).ok, sid
            assert durable.get(sid) == local[sid], sid
        return True

    await eventually(all_shipped, timeout=10, interval=0.2)
    for app in apps:  # the gold push made during the outage is in both, acknowledged
        if app.tier == "gold":
            statuses = [(e["policies"][0]["id"], e["status"]) for e in local[app.session_id]
                        if e["policies"]]  # fmt: skip
            assert ("gold", "acked") in statuses, statuses

    for app in [*apps, late]:
        await app.close()
    for c in agents + streams:
        await c.close()
