"""Every mutating REST action names who did it, never with the token: policy writes in the
policy history (``actor``, ``role``), a relabel in the process log (its version-log entries,
cause ``relabel``, carry no actor: docs/security.md)."""

from __future__ import annotations

import logging

import pytest

from controlplane.api.auth import actor_for
from controlplane.roles import Role
from tests.integration.service.conftest import ControlPlaneUnderTest
from tests.integration.service.test_authority import _app

COMPLIANCE = "tok-compliance"


async def test_a_relabel_and_a_publish_name_their_actor_but_not_the_token(
    cp: ControlPlaneUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    actor = actor_for(Role.COMPLIANCE, COMPLIANCE)
    await cp.publish({"id": "vip", "match": {"labels": {"tier": "vip"}},
                      "set": {"prompt": "VIP"}}, token=COMPLIANCE)  # fmt: skip
    versions = await cp.call("GET", "/v1/policies/vip/versions", expect=200)
    assert versions["items"][0]["actor"] == actor
    async with _app(cp, tier="basic") as app:
        sid = app.session_id
        await cp.call("PATCH", f"/v1/sessions/{sid}/labels", token=COMPLIANCE,
                      body={"labels": {"tier": "vip", "trial": None}}, expect=200)  # fmt: skip
    assert f"session {sid} relabelled by {actor}: tier=vip, trial-" in caplog.text
    assert COMPLIANCE not in caplog.text
