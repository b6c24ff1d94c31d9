"""``sessions log ID --follow``: an operator watches one call from the terminal — the log so
far, each entry as the service writes it, and the end of the session (there was no way to
watch a session but re-running ``sessions log``)."""

from __future__ import annotations

import asyncio
import json

import pytest

from controlplane.cli.main import main
from controlplane.edges.client import ControlClient
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, eventually


async def _entries(cp: ControlPlaneUnderTest, sid: str) -> list[dict[str, object]]:
    body = await cp.call("GET", f"/v1/sessions/{sid}/log", expect=200)
    return list(body["items"])


@pytest.mark.timeout(60)
async def test_follow_prints_each_entry_as_it_is_written_until_the_session_ends(
    cp: ControlPlaneUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    async with ControlClient(f"{cp.ws_base}/v1/control", token=ADMIN, kind="voice-agent-v1",
                             model="voice-agent", labels={"team": "follow"}) as app:  # fmt: skip
        sid = str(app.session_id)
        argv = ["sessions", "log", sid, "--follow", "--json", "--interval", "0.1",
                "--url", cp.base, "--token", ADMIN]  # fmt: skip
        follow = asyncio.create_task(asyncio.to_thread(main, argv))
        await asyncio.sleep(0.5)  # it is following: the connect entry is out
        await cp.publish({"id": "follow", "match": {"labels": {"team": ["follow"]}},
                          "set": {"system_prompt": "Be brief."}})  # fmt: skip
        push = await anext(app.pushes())
        await app.applied(push.version)

        async def acked() -> bool:
            return any(e["status"] == "unverified" or e["status"] == "acked"
                       for e in await _entries(cp, sid) if e["cause"] == "policy")  # fmt: skip

        await eventually(acked, timeout=10)
        await asyncio.sleep(0.3)
        assert not follow.done(), "follow ended while the session was live"
    code = await asyncio.wait_for(follow, timeout=20)  # the session ended: so does follow
    out, err = capsys.readouterr()
    assert code == 0, err
    printed = [json.loads(line) for line in out.splitlines()]
    assert printed == await _entries(cp, sid)  # every entry once, in order, as stored
    assert [e["cause"] for e in printed][:1] == ["connect"] and len(printed) >= 3
    assert f"controlplane: session {sid} ended" in err


async def test_watching_an_unknown_policy_says_so_once(
    cp: ControlPlaneUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    # was: "rollout stream unavailable (policy_not_found …); polling every 1s", then the error
    argv = ["policy", "rollout", "nope", "--watch", "--url", cp.base, "--token", ADMIN]
    assert await asyncio.to_thread(main, argv) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["controlplane: policy_not_found (HTTP 404): no policy 'nope'"]
