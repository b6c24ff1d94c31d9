"""Issue #21 in distributed mode: exposures recorded by each replica for its own sessions are
shared through Redis, so any replica answers the whole experiment's summary and export."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from controlplane.edges.client import ControlClient
from tests.integration.distributed.conftest import Cluster, Replica
from tests.integration.service.conftest import eventually
from tests.integration.service.test_experiment_truth import RESUME_DOC, _agent
from tests.integration.service.test_experiments import KEY, _apply_pushes, _doc, _ids


async def test_exposures_of_both_replicas_are_counted_by_either(cluster: Cluster) -> None:
    a = await cluster.start("node-a", srm_min_exposures=1)
    b = await cluster.start("node-b", srm_min_exposures=1)
    ids = _ids(KEY, control=4, warm=4)
    async with contextlib.AsyncExitStack() as stack:
        tasks = []
        for n, sid in enumerate(ids):
            replica: Replica = (a, b)[n % 2]
            app: ControlClient = await stack.enter_async_context(replica.client(session_id=sid))
            tasks.append(asyncio.create_task(_apply_pushes(app)))
        await a.publish(_doc())

        async def everyone(replica: Replica) -> dict[str, Any] | None:
            summary: dict[str, Any] = await replica.call("GET", f"/v1/experiments/{KEY}",
                                                         expect=200)  # fmt: skip
            return summary if summary["exposed"] == len(ids) else None

        for replica in (a, b):
            summary = await eventually(lambda r=replica: everyone(r), timeout=10)
            assert [v["exposed"] for v in summary["variants"]] == [4, 4]
            assert summary["srm"]["mismatch"] is False
            # the chart's aggregate (Redis time bins) holds the same counts on either replica
            timeline = await replica.call("GET", f"/v1/experiments/{KEY}/timeline", expect=200)
            assert (timeline["exposed"], timeline["binned"]) == (8, 8)
            assert [v["binned"] for v in timeline["variants"]] == [4, 4]
        rows = (await b.call("GET", f"/v1/experiments/{KEY}/assignments", expect=200))["items"]
        exposed = {r["session_id"] for r in rows if r["exposed_at"] is not None}
        assert exposed == set(ids)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def test_a_caller_keeps_its_variant_across_reconnects_to_either_replica(
    cluster: Cluster,
) -> None:
    """bucket_by a label (caller_id): each caller's next call, on the other replica, is in the
    same arm; both replicas' exports agree, call by call, with what each session ran."""
    a = await cluster.start("node-a", srm_min_exposures=1)
    b = await cluster.start("node-b", srm_min_exposures=1)
    doc = _doc()
    doc["experiment"]["bucket_by"] = "caller_id"
    await a.publish(doc)
    callers = [f"+1555000{n:04d}" for n in range(8)]
    arms: dict[str, list[str]] = {c: [] for c in callers}
    for first, second in ((a, b), (b, a)):
        for n, caller in enumerate(callers):
            replica = first if n % 2 else second
            sid = f"call-{caller[1:]}-{len(arms[caller])}"
            async with replica.client(session_id=sid, labels={"caller_id": caller}) as app:
                task = asyncio.create_task(_apply_pushes(app))
                try:

                    async def exposed(r: Replica = replica, s: str = sid) -> str | None:
                        rows = (await r.call("GET", f"/v1/experiments/{KEY}/assignments",
                                             expect=200))["items"]  # fmt: skip
                        row = next((x for x in rows if x["session_id"] == s), None)
                        return None if row is None or not row["exposed_at"] else row["variant"]

                    arms[caller].append(await eventually(exposed, timeout=10))
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
    assert all(len(set(v)) == 1 for v in arms.values()), arms
    assert {v[0] for v in arms.values()} == {"control", "warm"}  # both arms are in use
    for replica in (a, b):
        rows = (await replica.call("GET", f"/v1/experiments/{KEY}/assignments",
                                   expect=200))["items"]  # fmt: skip
        by_caller: dict[str, set[str]] = {}
        for row in rows:
            by_caller.setdefault(row["labels"]["caller_id"], set()).add(row["variant"])
        assert by_caller == {c: {v[0]} for c, v in arms.items()}


async def test_a_voice_agent_call_resumed_on_the_other_replica_keeps_its_arm(
    cluster: Cluster,
) -> None:
    """bucket_by session_id: the upstream connection of calls held by replica a drops; each
    call resumes through replica b (a new session there, found by its upstream id in the
    shared registry): none switches arms."""
    a = await cluster.start("node-a")
    b = await cluster.start("node-b")
    await a.publish(RESUME_DOC)
    await eventually(lambda: b.service.store.active_policy("pitch") is not None)
    calls: dict[str, str] = {}
    sockets = []
    for _ in range(6):
        ws, upstream_id = await _agent(a, {"type": "session.update", "session": {}})
        sockets.append(ws)
        prompt = (await cluster.emulator.session(upstream_id))["config"]["system_prompt"]
        calls[upstream_id] = prompt
        await cluster.emulator.faults(upstream_id, {"drop_after_messages": 1})
    await a.publish({"id": "terms", "match": {"kind": ["voice-agent-v1"]},
                     "set": {"keyterms": ["Acme"]}})  # fmt: skip
    await eventually(lambda: not a.service.engine.live, timeout=10)
    for ws in sockets:
        await ws.close()
    resumed = [
        (await _agent(b, {"type": "session.resume", "session_id": upstream_id}))[0]
        for upstream_id in calls
    ]
    await asyncio.sleep(1.0)
    now = {u: (await cluster.emulator.session(u))["config"]["system_prompt"] for u in calls}

    async def both_sessions_exposed() -> list[dict[str, Any]] | None:
        rows = (await a.call("GET", "/v1/experiments/pitch/assignments", expect=200))["items"]
        exposed = [r for r in rows if r["exposed_at"]]
        return exposed if len(exposed) == 2 * len(calls) else None

    exposed = await eventually(both_sessions_exposed, timeout=10)
    for ws in resumed:
        await ws.close()
    assert now == calls
    # counted per call, whichever replica holds which session: each call once, in its arm
    assert len({r["call_id"] for r in exposed}) == len(calls)
    assert sum(r["counted"] for r in exposed) == len(calls)
    for replica in (a, b):
        summary = await replica.call("GET", "/v1/experiments/pitch", expect=200)
        assert summary["exposed"] == len(calls), summary
        arms = {v["name"]: v["exposed"] for v in summary["variants"]}
        prompts = {"calm": "Be calm.", "bold": "Be bold."}
        assert arms == {n: list(calls.values()).count(p) for n, p in prompts.items()}
