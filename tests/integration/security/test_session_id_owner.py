"""A session id keeps the team that registered it for the life of its record
(docs/security.md#control-channel-v1control): another app's token may not register an ENDED
id of another team on the control channel (its chain would continue under a new writer);
the owner team may, through any of its tokens. Real sockets, real REST."""

from __future__ import annotations

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
