"""Ownership survives a restart of the embedded store (issue #18): the owner role is derived
from the stored events, which keep the publisher's role."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from controlplane.app import SERVICE, build_app
from controlplane.config import Settings
from tests.integration.service.conftest import ControlPlaneUnderTest, _serve


async def test_the_owner_role_and_the_lock_ceiling_hold_after_a_restart(
    cp_settings: Callable[..., Settings],
) -> None:
    settings = cp_settings()
    lock = {"id": "eu-disclosure", "match": {"labels": {"region": "eu"}},
            "set": {"prompt": "Recorded."}, "lock": ["prompt"]}  # fmt: skip
    pitch = {"id": "upsell", "experiment": {"key": "upsell", "variants": [
        {"name": "pitch", "weight": 100, "set": {"prompt": "Buy."}}]}}  # fmt: skip
    for run in range(2):
        app = build_app(settings)
        runner, port = await _serve(app)
        try:
            async with aiohttp.ClientSession() as http:
                cp = ControlPlaneUnderTest(port, http, app[SERVICE], settings.data_dir)
                if run == 0:
                    await cp.publish(lock, token="tok-compliance")
                    continue
                policy = await cp.call("GET", "/v1/policies/eu-disclosure", expect=200)
                assert (policy["version"], policy["owner_role"]) == (1, "compliance")
                body = await cp.call("POST", "/v1/policies", body={**pitch, "id": "eu-disclosure"},
                                     token="tok-experimenter", expect=403)  # fmt: skip
                assert body["error"]["code"] == "policy_owned"
                body = await cp.call("POST", "/v1/policies", body=pitch,
                                     token="tok-experimenter", expect=409)  # fmt: skip
                assert body["error"]["code"] == "field_locked"
        finally:
            await runner.cleanup()
