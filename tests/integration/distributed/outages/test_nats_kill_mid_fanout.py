"""nats-server SIGKILLed as three replicas fan a version out to their sessions (100
control-channel apps on each, a fifth of them holding their answer to it: killed once the
fan-out reached them, so their pushes are in flight and their answers come while NATS is
down), restarted 1.5 s later on the same store; a newer version published once it is back.

A fan-out is local to each replica once the event is in: it goes on without NATS (pushes never
wait for it); what needs NATS waits and catches up: the shipping of every entry to
``CP_AUDIT`` (the answers given during the outage among them), and any replica whose consumer
had not fetched the event yet. Every app ends on the last version, having got each version at
most once and in order; every push ends in one recorded state; every event is applied once on
every replica; every replica's local entries reach ``CP_AUDIT`` as written; every replica
ready again without a restart. (300 apps per replica before: 45 s; the held answers make the
outage fall inside the fan-out at any size.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

import pytest

from controlplane.audit.reader import dedupe
from tests.integration.distributed.conftest import Cluster, Replica
from tests.integration.distributed.harness import ready
from tests.integration.distributed.test_faults import cp_audit_rows, local_rows
from tests.integration.service.conftest import ADMIN, eventually
from tests.integration.service.fleet import App, Fleet
from tests.support.servers import ServerProcess

APPS = 100  # per replica
HELD = 20  # per replica: their answer to the version NATS dies under comes during the outage
TERMINAL = ("acked", "rejected", "unverified", "skipped")


async def _publish(replica: Replica, prompt: str) -> int:
    """Publish until accepted (503 while NATS is down); the version."""
    doc = {"id": "tone", "set": {"system_prompt": prompt}}
    while True:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with replica.http.post(replica.base + "/v1/policies", json=doc,
                                     headers=headers) as resp:  # fmt: skip
            body = await resp.json()
        if resp.status == 201:
            return int(body["version"])
        assert resp.status == 503 and body["error"]["code"] == "nats_unavailable", body
        await asyncio.sleep(0.2)


def _brief(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row.get("seq"), row.get("version"), row.get("cause"), row.get("status"),
            str(row.get("hash"))[:8])  # fmt: skip


def _how_differ(sid: str, local: list[dict[str, Any]], durable: list[dict[str, Any]]) -> str:
    """How one session's CP_AUDIT rows (as stored, then deduplicated as readers do) differ
    from its local rows: first differing index, both rows there, rows missing or extra."""
    kept = dedupe(durable)
    first = next((i for i, (a, b) in enumerate(zip(local, kept, strict=False)) if a != b),
                 min(len(local), len(kept)))  # fmt: skip
    keys = {(r.get("seq"), r.get("hash")) for r in kept}
    lost = [_brief(r) for r in local if (r.get("seq"), r.get("hash")) not in keys]
    mine = {(r.get("seq"), r.get("hash")) for r in local}
    extra = [_brief(r) for r in kept if (r.get("seq"), r.get("hash")) not in mine]

    def at(rows: list[dict[str, Any]]) -> tuple[Any, ...] | None:
        return _brief(rows[first]) if first < len(rows) else None

    return (f"{sid}: {len(local)} local, {len(durable)} stored ({len(kept)} deduplicated); "
            f"first difference at {first}: local {at(local)} stored {at(kept)}; local rows "
            f"not stored {lost[:5]}; stored rows not local {extra[:5]}; stored seqs "
            f"{[r.get('seq') for r in durable]}")  # fmt: skip


async def _prompts(app: App, last: str, timeout: float) -> list[tuple[int, str]]:
    """Every push (version, prompt) the app gets until it gets ``last``."""
    seen: list[tuple[int, str]] = []
    while True:
        push = await app.next_push(timeout)
        assert push is not None, (app.session_id, seen)
        prompt = (push.message.get("session") or {}).get("system_prompt")
        seen.append((push.version, prompt))
        if prompt == last:
            return seen


@pytest.mark.timeout(240)
async def test_nats_killed_mid_fan_out_on_three_replicas_loses_nothing(
    own_cluster: Cluster, own_nats: ServerProcess, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING)
    replicas = [await own_cluster.start(f"node-{n}", readiness_stall_s=3.0) for n in "abc"]
    fleets = [Fleet(r.ws_base) for r in replicas]
    try:
        apps: list[App] = []
        held: list[App] = []
        for fleet in fleets:
            apps += await fleet.open_apps(APPS, "ack")
            held += apps[-HELD:]
        await _publish(replicas[0], "v0")
        got = await asyncio.gather(*(app.version_of_prompt("v0", 20) for app in apps))
        assert all(got), got.count(None)

        for app in held:
            app.mode = "hold"
        await _publish(replicas[1], "v1")
        # the fan-outs reached the held apps on every replica: their pushes are in flight
        reached = await asyncio.gather(*(app.version_of_prompt("v1", 20) for app in held))
        assert all(reached), reached.count(None)
        v1 = {app.session_id: version for app, version in zip(held, reached, strict=True)
              if version is not None}  # fmt: skip
        assert own_nats.proc is not None
        os.kill(own_nats.proc.pid, signal.SIGKILL)
        own_nats.proc.wait(timeout=10)
        for app in held:  # answered while NATS is down: recorded, shipped once it is back
            await app.client.applied(v1[app.session_id])
            app.mode = "ack"
        await asyncio.sleep(1.5)
        await asyncio.to_thread(own_nats.start)  # same port, same JetStream store
        await _publish(replicas[2], "v2")

        seen = await asyncio.gather(*(_prompts(app, "v2", 30) for app in apps))
        for app, pushes in zip(apps, seen, strict=True):
            prompts = [p for _, p in pushes]
            assert len(prompts) == len(set(prompts)), (app.session_id, pushes)  # once each
            allowed = (["v2"],) if app in held else (["v1", "v2"], ["v2"])  # (v1 seen above)
            assert prompts in allowed, (app.session_id, pushes)  # in order, never re-sent

        async def all_ready() -> bool:
            return all([(await ready(r.http, r.base))[0] for r in replicas])

        await eventually(all_ready, timeout=30)
        for replica in replicas:  # three events, each applied once on every replica
            applied = await replica.metric("controlplane_policy_events_total", result="applied")
            assert applied == 3, (replica.port, applied)

        for app, replica in zip(apps, [r for r in replicas for _ in range(APPS)], strict=True):
            entries = await replica.log(app.session_id)
            ends: dict[int, list[str]] = {}
            for e in entries:
                if e["status"] in TERMINAL:
                    ends.setdefault(e["version"], []).append(e["status"])
            sent = {e["version"] for e in entries if e["status"] == "sent" and e["version"] > 1}
            assert sent <= set(ends) and all(len(s) == 1 for s in ends.values()), entries
            if app in held:  # its answer during the outage is its v1 push's one state
                assert ends.get(v1[app.session_id]) == ["acked"], entries

        for replica in replicas:
            assert replica.service is not None and replica.settings is not None
            await replica.service.versionlog.flush()
            local = local_rows(replica.settings.data_dir)

            async def shipped(replica: Replica = replica, local: Any = local) -> bool:
                # as readers take the stream: a chunk whose PubAck the kill lost is shipped
                # again, and an exact duplicate JetStream's window did not catch is dropped
                durable = await cp_audit_rows(replica)
                missing = [sid for sid, rows in local.items()
                           if dedupe(durable.get(sid, [])) != rows]  # fmt: skip
                assert not missing, f"{len(missing)} session(s) differ: " + "; ".join(
                    _how_differ(sid, local[sid], durable.get(sid, [])) for sid in missing[:3]
                )
                return True

            await eventually(shipped, timeout=60, interval=0.5)
    finally:
        for fleet in fleets:
            await fleet.close()
    assert "Traceback" not in caplog.text
