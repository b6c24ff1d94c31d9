"""Every policy event is counted exactly once (issue #19), in embedded mode too: a step of
its handling failing after the store took it made the in-process bus hand the failure to the
publisher with the event counted ``applied``; it is ``error``, once (the NATS case:
tests/integration/distributed/test_event_accounting.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.distributed.test_event_accounting import _counts
from tests.integration.service.conftest import ControlPlaneUnderTest


async def _failing_reconcile(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("injected: reconcile failed")


async def test_embedded_a_failing_step_counts_the_event_once_as_error(
    cp: ControlPlaneUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cp.service.events, "reconcile", _failing_reconcile)
    with pytest.raises(RuntimeError, match="injected"):
        await cp.service.publish_policy(
            {"id": "acct", "set": {"system_prompt": "v1"}}, actor="admin:test"
        )
    assert cp.service.store.current_version("acct") == 1  # the store took it
    monkeypatch.undo()
    await cp.publish({"id": "acct", "set": {"system_prompt": "v2"}})
    assert await _counts(cp) == {"error": 1, "applied": 1}
