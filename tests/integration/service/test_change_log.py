"""The service's log names every policy change it applies — publish, rollback, retire, with
the actor and the reason — so an SRE can grep who changed what when (it logged nothing for
them: the walk's serve log showed only the guard's halt)."""

from __future__ import annotations

import logging

import pytest

from tests.integration.service.conftest import ControlPlaneUnderTest


async def test_publish_rollback_and_retire_are_logged_with_actor_and_reason(
    cp: ControlPlaneUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="controlplane.service.events")
    await cp.publish({"id": "tone", "set": {"system_prompt": "a"}, "reason": "LR-1"})
    await cp.publish({"id": "tone", "set": {"system_prompt": "b"}})
    await cp.call("POST", "/v1/policies/tone/rollback", body={"to": 1, "reason": "not approved"},
                  expect=200)  # fmt: skip
    await cp.call("DELETE", "/v1/policies/tone?reason=done", expect=200)
    lines = [r.getMessage() for r in caplog.records if r.name == "controlplane.service.events"]
    changes = [line for line in lines if line.startswith("policy tone ")]
    assert [line.split(" by ")[0] for line in changes] == [
        "policy tone version 1 published", "policy tone version 2 published",
        "policy tone version 3 rolled back", "policy tone version 4 retired",
    ]  # fmt: skip
    assert changes[0].endswith(", reason 'LR-1'") and "admin:" in changes[0]
    assert changes[2].endswith(", reason 'not approved'")
    assert changes[3].endswith(", reason 'done'")
