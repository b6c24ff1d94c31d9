"""Issue #21 in distributed mode: exposures recorded by each replica for its own sessions are
shared through Redis, so any replica answers the whole experiment's summary and export."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from controlplane.edges.client import ControlClient
from tests.integration.distributed.conftest import Cluster, Replica
from tests.integration.service.conftest import eventually
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
        rows = (await b.call("GET", f"/v1/experiments/{KEY}/assignments", expect=200))["items"]
        exposed = {r["session_id"] for r in rows if r["exposed_at"] is not None}
        assert exposed == set(ids)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
