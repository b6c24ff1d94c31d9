"""A preview is answered under the publish rules of the caller's role (docs/api.md): an
experimenter previewing what it may not publish (no ``experiment`` block, or a ``lock``) gets
the same 403 ``forbidden`` naming ``compliance`` as the publish would, instead of a preview of
changes it can never make. Compliance previews the same document."""

from __future__ import annotations

import pytest

from tests.integration.service.conftest import ControlPlaneUnderTest
from tests.integration.service.test_authority import LOCK_FREE

COMPLIANCE, EXPERIMENTER = "tok-compliance", "tok-experimenter"


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"id": "tone", "set": {"prompt": "Hi."}}, "no 'experiment' block"),
        ({**LOCK_FREE, "lock": ["prompt"]}, "has a 'lock'"),
    ],
)
async def test_an_experimenter_previews_only_what_it_may_publish(
    cp: ControlPlaneUnderTest, doc: dict[str, object], reason: str
) -> None:
    for path in ("/v1/policies/preview", "/v1/policies"):
        body = await cp.call("POST", path, body=doc, token=EXPERIMENTER, expect=403)
        assert body["error"]["code"] == "forbidden"
        assert reason in body["error"]["message"]
        assert body["error"]["details"]["required_role"] == "compliance"
    await cp.call("POST", "/v1/policies/preview", body=doc, token=COMPLIANCE, expect=200)
    await cp.call("POST", "/v1/policies/preview", body=LOCK_FREE, token=EXPERIMENTER, expect=200)
    await cp.call("GET", "/v1/policies/tone", expect=404)
