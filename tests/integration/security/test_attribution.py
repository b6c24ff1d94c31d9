"""Every mutating REST action names who did it, never with the token: policy writes in the
policy history (``actor``, ``role``), a relabel in the process log (its version-log entries,
cause ``relabel``, carry no actor: docs/security.md)."""

from __future__ import annotations

import json
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


async def test_an_actors_token_digest_is_shown_only_to_compliance_and_admin(
    cp: ControlPlaneUnderTest,
) -> None:
    """``actor`` (``<role>:<sha256(token)[:6]>``) is derived from a secret: below compliance
    the policy, its versions, the list, the rollout status (halt, wave steps) and its stream
    show the role only; compliance and admin see it whole (docs/security.md#principles)."""
    actor = actor_for(Role.COMPLIANCE, COMPLIANCE)
    await cp.publish({"id": "waved", "set": {"prompt": "v1"}}, token=COMPLIANCE)
    waves = {"waves": [10, 100], "wave_interval_s": 3600}
    await cp.publish({"id": "waved", "set": {"prompt": "v2"}, "rollout": waves}, token=COMPLIANCE)
    await cp.call("POST", "/v1/policies/waved/pause", token=COMPLIANCE, expect=200)
    paths = ("/v1/policies/waved", "/v1/policies/waved/versions", "/v1/policies",
             "/v1/policies/waved/rollout")  # fmt: skip
    for token in ("tok-viewer", "tok-experimenter"):
        for path in paths:
            text = json.dumps(await cp.call("GET", path, token=token, expect=200))
            assert actor not in text and actor[-6:] not in text, (token, path)
            assert '"actor": "compliance"' in text, (token, path)
        async with cp.http.get(cp.base + "/v1/policies/waved/rollout/stream",
                               headers={"Authorization": f"Bearer {token}"}) as resp:  # fmt: skip
            first = await resp.content.readuntil(b"\n\n")
        assert b'"actor":"compliance"' in first and actor[-6:].encode() not in first
    for path in paths:
        assert actor in json.dumps(await cp.call("GET", path, token=COMPLIANCE, expect=200))
