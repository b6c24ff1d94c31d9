"""Failure behaviour: NATS restarts, Redis outages, and the modes with one URL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from controlplane import cli
from tests.integration.distributed.conftest import Cluster
from tests.integration.service.conftest import eventually
from tests.support.servers import ServerProcess


async def test_nats_restart_loses_no_policy_event_and_no_audit_entry(
    own_cluster: Cluster, own_nats: ServerProcess
) -> None:
    a = await own_cluster.start("node-a")
    async with a.client(labels={"tier": "basic"}) as app:
        sid = app.session_id
        assert sid is not None
        pushes = app.pushes()
        await a.publish({"id": "vip", "match": {"labels": {"tier": "vip"}},
                         "set": {"system_prompt": "VIP"}})  # fmt: skip

        await asyncio.to_thread(own_nats.stop)
        # while NATS is down: pushes still happen locally, their log entries wait on disk
        await a.call("PATCH", f"/v1/sessions/{sid}/labels", body={"labels": {"tier": "vip"}},
                     expect=200)  # fmt: skip
        push = await asyncio.wait_for(anext(pushes), 5)
        await app.applied(push.version)
        down = await a.call("POST", "/v1/policies", body={"id": "x", "set": {}}, expect=503)
        assert down["error"]["code"] == "nats_unavailable"

        async def failed_to_ship() -> bool:
            return await a.metric("controlplane_audit_append_failures_total") > 0

        await eventually(failed_to_ship, timeout=10)
        backlog = await a.call("GET", "/readyz", token=None)
        assert backlog["checks"]["nats_connected"] is False
        assert backlog["checks"]["audit_backlog_bytes"] > 0

        await asyncio.to_thread(own_nats.start)
        # the consumer is rebuilt from the next sequence: a new event still arrives
        await own_cluster.publish_raw("vip", {
            "type": "policy.published", "actor": "ops", "published_at": "",
            "policy": {"id": "vip", "version": 2, "match": {"labels": {"tier": "vip"}},
                       "set": {"system_prompt": "VIP v2"}},
        }, msg_id="vip:2")  # fmt: skip
        push = await asyncio.wait_for(anext(pushes), 20)
        assert push.message["session"] == {"system_prompt": "VIP v2"}
        await app.applied(push.version)

        local = await a.log(sid)

        async def all_shipped() -> bool:
            ready = await a.call("GET", "/readyz", token=None)
            return bool(ready["checks"]["audit_backlog_bytes"] == 0) and (
                await a.metric("controlplane_audit_shipped_total") >= len(local)
            )

        await eventually(all_shipped, timeout=15)
    c = own_cluster
    args = ["audit", "verify", sid, "--nats-url", c.nats_url, "--nats-audit-stream",
            c.audit_stream, "--nats-subject-prefix", c.subject_prefix]  # fmt: skip
    assert await asyncio.to_thread(cli.main, args) == 0


async def test_redis_outage_makes_the_replica_unready_until_it_is_back(
    own_cluster: Cluster, own_redis: ServerProcess
) -> None:
    a = await own_cluster.start("node-a")
    assert (await a.call("GET", "/readyz", token=None, expect=200))["ready"] is True
    app = a.client(labels={"tenant": "acme"})
    await app.__aenter__()
    short = a.client()
    await short.__aenter__()
    await asyncio.to_thread(own_redis.stop)
    await short.close()  # its end cannot reach Redis now: retried later, never resurrected

    async def unready() -> dict[str, Any] | None:
        body = await a.call("GET", "/readyz", token=None)
        return None if body["ready"] else body

    body = await eventually(unready, timeout=10)
    assert body["checks"]["registry"] is False
    listed = await a.call("GET", "/v1/sessions", expect=503)
    assert listed["error"]["code"] == "backend_unavailable"
    await asyncio.to_thread(own_redis.start)  # empty: this test server keeps no data

    async def ready() -> bool:
        return bool((await a.call("GET", "/readyz", token=None))["ready"])

    await eventually(ready, timeout=10)

    async def registered_again() -> bool:  # the live session is written back
        listed = await a.call("GET", "/v1/sessions", expect=200)
        return [s["id"] for s in listed["items"]] == [app.session_id]

    await eventually(registered_again)
    await app.close()


async def test_nats_without_redis_shares_policies_and_audit_but_not_sessions(
    cluster: Cluster,
) -> None:
    a = await cluster.start("node-a", redis_url=None)
    b = await cluster.start("node-b", redis_url=None)
    async with a.client() as on_a, b.client() as on_b:
        await b.publish({"id": "all", "set": {"system_prompt": "hello"}})
        for app in (on_a, on_b):
            push = await asyncio.wait_for(anext(app.pushes()), 5)
            await app.applied(push.version)
        assert on_b.session_id is not None
        listed = await a.call("GET", "/v1/sessions", expect=200)
        assert [s["node"] for s in listed["items"]] == ["node-a"]  # each its own registry

        async def log_from_audit() -> list[Any]:  # B's log, read on A from CP_AUDIT
            assert on_b.session_id is not None
            found = await a.call("GET", f"/v1/sessions/{on_b.session_id}/log")
            return list(found["items"]) if isinstance(found, dict) and "items" in found else []

        entries = await eventually(log_from_audit)
        assert entries[0]["cause"] == "connect"


def test_redis_without_nats_is_refused_with_the_reason(capsys: Any) -> None:
    assert cli.main(["serve", "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    assert "--redis-url needs --nats-url" in capsys.readouterr().err


@pytest.fixture
def redis_with_password(tmp_path: Any) -> Iterator[ServerProcess]:
    from tests.support.servers import free_port, redis_binary

    port = free_port()
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", "s3cret-pw"]  # fmt: skip
    server = ServerProcess(argv, port, f"redis://:s3cret-pw@127.0.0.1:{port}/0", tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_redis_password_in_the_url_works_and_a_wrong_one_keeps_the_replica_unready(
    cluster: Cluster, redis_with_password: ServerProcess
) -> None:
    good = await cluster.start("node-a", redis_url=redis_with_password.url)
    assert (await good.call("GET", "/readyz", token=None, expect=200))["ready"] is True
    async with good.client() as app:
        listed = await good.call("GET", "/v1/sessions", expect=200)
        assert [s["id"] for s in listed["items"]] == [app.session_id]
    wrong = redis_with_password.url.replace("s3cret-pw", "wrong")
    bad = await cluster.start("node-b", redis_url=wrong)
    body = await bad.call("GET", "/readyz", token=None, expect=503)
    assert body["checks"]["registry"] is False
    assert "wrong" not in json.dumps(body) and "s3cret" not in json.dumps(body)
