"""Every policy event is counted exactly once, with one result (issue #19): also when a step
of its handling fails after the policy store took it. ``controlplane_policy_events_total``
counted such an event ``applied`` (the service) and ``error`` (the NATS consumer): twice.

The failure is injected at a real step of the handling, the reconcile of live sessions that
follows the store's change (``service.events.reconcile``, on the replica's own object)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.integration.distributed.conftest import Cluster, event
from tests.integration.service.conftest import ControlPlaneUnderTest, eventually
from tests.integration.service.fleet import metric_sum

NAME = "controlplane_policy_events_total"
RESULTS = ("applied", "ignored", "invalid", "error", "unsigned", "bad_signature")


async def _failing_reconcile(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("injected: reconcile failed")


async def _counts(replica: ControlPlaneUnderTest) -> dict[str, float]:
    """This replica's policy.published counts by result (the results it has)."""
    text = str(await replica.call("GET", "/metrics", token=None))
    counts = {r: metric_sum(text, NAME, type="policy.published", result=r) for r in RESULTS}
    return {r: n for r, n in counts.items() if n}


async def test_a_step_failing_after_the_store_took_the_event_counts_it_once_as_error(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    caplog.set_level(logging.ERROR, logger="controlplane")
    a = await cluster.start("node-a")
    monkeypatch.setattr(a.service.events, "reconcile", _failing_reconcile)
    doc = {"id": "acct", "version": 1, "set": {"system_prompt": "v1"}}
    await cluster.publish_raw("acct", event(doc), msg_id="acct:1")
    await eventually(lambda: a.service.store.current_version("acct") == 1)
    monkeypatch.undo()  # the next event of the stream is handled in full
    await cluster.publish_raw("acct", event({**doc, "version": 2}), msg_id="acct:2")

    async def both_handled() -> dict[str, float] | None:
        counts = await _counts(a)
        return counts if sum(counts.values()) >= 2 else None

    counts = await eventually(both_handled)
    assert counts == {"error": 1, "applied": 1}  # one result each: v1 error, v2 applied
    assert "injected: reconcile failed" in caplog.text
