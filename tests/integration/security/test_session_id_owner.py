"""A session id keeps the team that registered it for the life of its record
(docs/security.md#control-channel-v1control): another app's token may not register an ENDED
id of another team on the control channel (its chain would continue under a new writer);
the owner team may, through any of its tokens. Real sockets, real REST."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable

import pytest

from controlplane.config import Settings
from controlplane.edges.client import ControlClient, ControlError
from tests.integration.service.conftest import ControlPlaneUnderTest, eventually, serving

TOKENS = {
    "tok-alpha-1": "app@alpha",
    "tok-alpha-2": "app@alpha",
    "tok-beta": "app@beta",
    "tok-solo-1": "app",  # no team: each its own
    "tok-solo-2": "app",
    "tok-admin": "admin",
    "tok-viewer": "viewer",
    "tok-experimenter": "experimenter",
    "tok-compliance": "compliance",
}


@pytest.fixture
async def cp(cp_settings: Callable[..., Settings]) -> AsyncIterator[ControlPlaneUnderTest]:
    async with serving(cp_settings(tokens=TOKENS)) as cp:
        yield cp


def client(cp: ControlPlaneUnderTest, token: str, session_id: str) -> ControlClient:
    return ControlClient(cp.ws_base + "/v1/control", token=token, kind="voice-agent-v1",
                         model="voice-agent", session_id=session_id,
                         labels={"tenant": "acme"})  # fmt: skip


async def ended(cp: ControlPlaneUnderTest, session_id: str) -> dict[str, object]:
    async def check() -> dict[str, object] | None:
        body = await cp.call("GET", f"/v1/sessions/{session_id}", token="tok-admin", expect=200)
        return dict(body) if body["state"] == "ended" else None

    return dict(await eventually(check))


async def test_another_team_may_not_register_an_ended_session_id(
    cp: ControlPlaneUnderTest,
) -> None:
    async with client(cp, "tok-alpha-1", "call-1"):
        pass
    record = await ended(cp, "call-1")
    assert record["registered_by"] == "alpha"
    entries = len(await cp.log("call-1"))

    with pytest.raises(ControlError) as refused:
        async with client(cp, "tok-beta", "call-1"):
            pass
    assert refused.value.code == "session_exists"
    assert "another app" in refused.value.message and "new id" in refused.value.message
    # nothing changed: still ended, still alpha's, no entry added to its chain
    assert (await ended(cp, "call-1"))["registered_by"] == "alpha"
    assert len(await cp.log("call-1")) == entries

    # the owner team continues its own session, through another of its tokens
    async with client(cp, "tok-alpha-2", "call-1") as again:
        assert again.session_id == "call-1"
    assert (await ended(cp, "call-1"))["registered_by"] == "alpha"
    assert len(await cp.log("call-1")) > entries


async def test_app_tokens_without_a_team_are_different_owners(cp: ControlPlaneUnderTest) -> None:
    async with client(cp, "tok-solo-1", "call-2"):
        pass
    record = await ended(cp, "call-2")
    assert str(record["registered_by"]).startswith("token:")
    with pytest.raises(ControlError) as refused:
        async with client(cp, "tok-solo-2", "call-2"):
            pass
    assert refused.value.code == "session_exists"
    async with client(cp, "tok-solo-1", "call-2"):
        pass


async def test_a_team_less_apps_identity_is_shown_only_to_compliance_and_admin(
    cp: ControlPlaneUnderTest,
) -> None:
    """``registered_by`` of a team-less token is derived from the token (``token:<sha256
    prefix>``): roles below compliance see ``token``, in the session and in the list; a team
    name is shown to every role (docs/security.md#teams)."""
    async with client(cp, "tok-solo-1", "call-3"), client(cp, "tok-alpha-1", "call-4"):
        for token in ("tok-viewer", "tok-solo-2", "tok-experimenter"):
            one = await cp.call("GET", "/v1/sessions/call-3", token=token, expect=200)
            listed = await cp.call("GET", "/v1/sessions", token=token, expect=200)
            shown = {i["id"]: i["registered_by"] for i in listed["items"]}
            expected = ("token", {"call-3": "token", "call-4": "alpha"})
            assert (one["registered_by"], shown) == expected, token
            digest = hashlib.sha256(b"tok-solo-1").hexdigest()
            assert digest[:6] not in json.dumps([one, listed]), token
        for token in ("tok-compliance", "tok-admin"):
            one = await cp.call("GET", "/v1/sessions/call-3", token=token, expect=200)
            expected = "token:" + hashlib.sha256(b"tok-solo-1").hexdigest()[:8]
            assert one["registered_by"] == expected, token
