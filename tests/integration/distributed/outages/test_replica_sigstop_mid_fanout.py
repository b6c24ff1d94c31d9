"""A replica SIGSTOPped (silent, not dead: its sockets open, nothing answers) in the middle of
a fan-out: its pushes of a version to 50 of its 100 control-channel apps are in flight (those
apps hold their answer until it is stopped, then answer: the answers wait in its sockets). It
stays stopped past the registry TTL and past its acknowledgement timeout while the two other
replicas go on and a newer version is published, then resumes (SIGCONT).

Once resumed: the answers that waited in its sockets are acknowledgements in time (before:
its sweeper, due on waking, fired the timeouts before the sockets were read: `unverified`
"no acknowledgement within 2s", then each answer recorded late, and the rollout guard charged a
timeout per session); every app on it ends on the newest version, each version at most once
and in order; every push ends in one recorded state; its sessions are live in the registry
again; every entry it wrote reaches ``CP_AUDIT`` as written and the trails verify; no
traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from controlplane.audit.reader import dedupe
from tests.integration.distributed.conftest import TTL_S, Cluster, Replica
from tests.integration.distributed.harness import spawn
from tests.integration.distributed.outages.test_nats_kill_mid_fanout import _prompts
from tests.integration.distributed.test_faults import cp_audit_rows, local_rows
from tests.integration.service.conftest import eventually
from tests.integration.service.fleet import Fleet

APPS = 100
ACK_TIMEOUT_S = 2.0
STOPPED_S = max(TTL_S, ACK_TIMEOUT_S) * 3
TERMINAL = ("acked", "rejected", "unverified", "skipped")


@pytest.mark.timeout(150)
async def test_a_replica_stopped_mid_fan_out_and_resumed_records_every_push_once(
    cluster: Cluster,
) -> None:
    b = await cluster.start("node-b")
    c = await cluster.start("node-c")
    env = {"CONTROLPLANE_ACK_TIMEOUT_S": str(ACK_TIMEOUT_S)}
    proc = await asyncio.to_thread(spawn, cluster, "node-a", env=env)
    cluster.procs.append(proc.proc)  # type: ignore[arg-type]
    a = Replica(int(proc.base.rsplit(":", 1)[1]), cluster.http, None, proc.data_dir)  # type: ignore[arg-type]
    on_a, on_b = Fleet(a.ws_base), Fleet(b.ws_base)
    try:
        apps = await on_a.open_apps(APPS, "ack")
        others = await on_b.open_apps(20, "ack")
        await b.publish({"id": "tone", "set": {"system_prompt": "v0"}})
        assert all(await asyncio.gather(*(x.version_of_prompt("v0", 20) for x in apps + others)))

        held = apps[: APPS // 2]  # their answer to v1 comes while node-a is stopped
        for app in held:
            app.mode = "hold"
        await c.publish({"id": "tone", "set": {"system_prompt": "v1"}})
        reached = await asyncio.gather(*(x.version_of_prompt("v1", 20) for x in held))
        assert all(reached), reached.count(None)
        os.kill(proc.proc.pid, signal.SIGSTOP)  # its pushes to the held apps in flight
        for app, version in zip(held, reached, strict=True):
            assert version is not None
            await app.client.applied(version)  # in its socket, unread until SIGCONT
            app.mode = "ack"
        try:
            await asyncio.sleep(STOPPED_S)  # past the TTL: the others declare it lost
            await b.publish({"id": "tone", "set": {"system_prompt": "v2"}})
            got = await asyncio.gather(*(x.version_of_prompt("v2", 10) for x in others))
            assert all(got), got
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)

        seen = await asyncio.gather(*(_prompts(x, "v2", 30) for x in apps))
        for app, pushes in zip(apps, seen, strict=True):
            prompts = [p for _, p in pushes]
            allowed = (["v2"],) if app in held else (["v1", "v2"], ["v2"])  # (v1 seen above)
            assert prompts in allowed, (app.session_id, pushes)

        async def settled(sid: str) -> list[dict[str, Any]] | None:
            entries = await a.log(sid)
            ends: dict[int, list[str]] = {}
            for e in entries:
                if e["status"] in TERMINAL:
                    ends.setdefault(e["version"], []).append(e["status"])
            sent = {e["version"] for e in entries if e["status"] == "sent" and e["version"] > 1}
            brief = [(e["seq"], e["version"], e["status"], e.get("error")) for e in entries]
            assert all(len(s) == 1 for s in ends.values()), brief  # one state each
            return entries if sent <= set(ends) else None

        records = [await eventually(lambda s=x.session_id: settled(s), timeout=20) for x in apps]
        for version, entries in zip(reached, records[: len(held)], strict=True):
            # answered while node-a was stopped, before its timeout: acknowledged in time
            # (before: the timer, due when it resumed, fired before the socket was read:
            # `unverified` "no acknowledgement within 5s", then the answer recorded late)
            [end] = [e for e in entries if e["version"] == version and e["status"] in TERMINAL]
            assert (end["status"], end.get("error")) == ("acked", None), end

        async def live_again() -> bool:
            body = await b.call("GET", "/v1/sessions?limit=1000", expect=200)
            live = {s["id"]: s for s in body["items"]}
            return all(x.session_id in live and live[x.session_id]["node"] == "node-a"
                       for x in apps)  # fmt: skip

        await eventually(live_again, timeout=20)
        await a.call("GET", "/readyz", expect=200)

        async def shipped() -> bool:
            durable = await cp_audit_rows(b)
            missing = [sid for sid, rows in local.items() if dedupe(durable.get(sid, [])) != rows]
            assert not missing, (len(missing), missing[:3])
            return True

        await asyncio.sleep(0.5)
        local = local_rows(proc.data_dir)
        await eventually(shipped, timeout=30, interval=0.5)
        for app in apps[:10]:
            answer = await b.call("GET", f"/v1/audit/verify?session={app.session_id}", expect=200)
            assert answer["ok"] is True, answer
    finally:
        await on_a.close()
        await on_b.close()
        await asyncio.to_thread(proc.stop)
    assert "Traceback" not in proc.log()
