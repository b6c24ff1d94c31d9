"""``audit at`` and checkpoint verification on a real control plane against the emulator:
the rebuilt configuration is the one the upstream actually ran at each instant, and
checkpoints survive a restart and catch what the restarted server's own tails cannot."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import stat
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from cryptography.hazmat.primitives import serialization

from controlplane import cli
from sessions.checkpoints import load_public_key
from tests.integration.audit.conftest import Stack
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest, Emulator, eventually


async def _recv_type(ws: Any, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if msg.get("type") == kind:
            return dict(msg)


@contextlib.asynccontextmanager
async def _agent_session(cp: ControlPlaneUnderTest) -> AsyncIterator[str]:
    """A Voice Agent session through the gateway (prompt "Hi."), open while inside: its
    control-plane session id."""
    async with websockets.connect(
        cp.ws_base + "/v1/ws", additional_headers={"Authorization": "Bearer test-key"}
    ) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {"system_prompt": "Hi."}}))
        upstream_id = (await _recv_type(ws, "session.ready"))["session_id"]
        yield cp.live_by_upstream(upstream_id)


async def _entries(cp: ControlPlaneUnderTest, sid: str, status: str, cause: str) -> list[Any]:
    return [e for e in await cp.log(sid) if e["status"] == status and e["cause"] == cause]


async def _upstream_prompt(emulator: Emulator, upstream_id: str) -> str:
    return str((await emulator.session(upstream_id))["config"].get("system_prompt"))


async def _config_at(cp: ControlPlaneUnderTest, sid: str, at: float, **kw: Any) -> Any:
    return await cp.call("GET", f"/v1/sessions/{sid}/config-at?at={at!r}", **kw)


async def test_audit_at_answers_what_the_upstream_ran_at_each_instant(
    stack: Stack, emulator: Emulator, capsys: Any
) -> None:
    cp = await stack.start()
    instants: list[tuple[float, str, str]] = []  # (at, the upstream's prompt, what happened)

    async def mark(what: str) -> None:
        await asyncio.sleep(0.05)
        instants.append((time.time(), await _upstream_prompt(emulator, upstream_id), what))
        await asyncio.sleep(0.05)

    async with websockets.connect(
        cp.ws_base + "/v1/ws", additional_headers={"Authorization": "Bearer test-key"}
    ) as ws:
        await ws.send(json.dumps({"type": "session.update",
                                  "session": {"system_prompt": "Be kind."}}))  # fmt: skip
        upstream_id = (await _recv_type(ws, "session.ready"))["session_id"]
        sid = cp.live_by_upstream(upstream_id)
        await mark("connect")

        tone = {"id": "tone", "match": {"kind": ["voice-agent-v1"]}}
        await cp.publish({**tone, "set": {"system_prompt": "Be concise."}})
        await eventually(lambda: _entries(cp, sid, "acked", "policy"))
        await mark("acked")

        await emulator.faults(upstream_id, {"reject_next_update": {"code": "invalid_config"}})
        await cp.publish({**tone, "set": {"system_prompt": "Be brief."}})
        await eventually(lambda: _entries(cp, sid, "rejected", "policy"))
        await mark("rejected")

        # the client overrides the (unlocked) policy field: the upstream runs the client's
        # value while the effective config keeps the policy's; the log must say the former
        await ws.send(json.dumps({"type": "session.update",
                                  "session": {"system_prompt": "Client prompt."}}))  # fmt: skip
        # logged once the upstream's session.updated is attributed to it (issue 17)
        await eventually(lambda: _entries(cp, sid, "acked", "client"))

        async def client_prompt_upstream() -> bool:
            return await _upstream_prompt(emulator, upstream_id) == "Client prompt."

        await eventually(client_prompt_upstream)
        await mark("client")

    assert [prompt for _, prompt, _ in instants] == [
        "Be kind.", "Be concise.", "Be concise.", "Client prompt."
    ]  # fmt: skip
    log = await cp.log(sid)
    assert log[0]["config"] == {"system_prompt": "Be kind."}  # the connect entry's config

    async def covered() -> bool:
        answer = await _config_at(cp, sid, instants[-1][0], expect=200)
        return bool(answer["checkpoint"]["covered"])

    await eventually(covered)  # a checkpoint (every 0.2 s) commits to the client's entry
    by_seq = {e["seq"]: e for e in log}
    for at, prompt, what in instants:
        answer = await _config_at(cp, sid, at, expect=200)
        assert answer["config"].get("system_prompt") == prompt, (what, answer)
        assert answer["verified"] is True, (what, answer)
        assert answer["rebuild"]["failures"] == []
        assert answer["chain"]["ok"] is True and answer["checkpoint"]["covered"] is True
        established = by_seq[answer["established_by"]["seq"]]
        assert answer["established_by"]["hash"] == established["hash"]
        if what == "connect":
            assert established["cause"] == "connect" and established["seq"] == 1
            assert answer["established_by"]["meaning"].startswith("connect parameters")
        elif what in ("acked", "rejected"):
            assert (established["cause"], established["status"]) == ("policy", "acked")
            assert answer["policies"] == [await cp.ref("tone", 1)]
            assert answer["sent_by"]["status"] == "sent"
        else:
            assert (established["cause"], established["status"]) == ("client", "acked")
    rejected = await _config_at(cp, sid, instants[2][0], expect=200)
    assert any("was rejected" in n and "previous config stayed in effect" in n
               for n in rejected["notes"])  # fmt: skip

    # the same answer offline from the files, and through the CLI against the server
    when = str(instants[1][0])
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["audit", "at", sid, when, "--data-dir",
                                              str(cp.data_dir), "--json"])  # fmt: skip
    offline = json.loads(capsys.readouterr().out)
    assert code == 0 and offline["config"] == {"system_prompt": "Be concise."}
    assert offline["source"] == "local" and offline["verified"] is True
    code = await asyncio.to_thread(cli.main, ["audit", "at", sid, when, "--url", cp.base,
                                              "--token", ADMIN])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "system_prompt: Be concise." in out and "policies: tone@1" in out
    assert "acknowledged by the upstream (version 2)" in out
    assert out.rstrip().endswith("VERIFIED")


async def test_config_at_errors_are_clear(stack: Stack, capsys: Any) -> None:
    cp = await stack.start()
    async with _agent_session(cp) as sid:
        pass
    first = (await cp.log(sid))[0]["at"]
    unknown = await _config_at(cp, "nope", first, expect=404)
    assert unknown["error"]["code"] == "session_not_found"
    early = await _config_at(cp, sid, first - 3600, expect=404)
    assert early["error"]["code"] == "before_session"
    assert "its first entry (seq 1)" in early["error"]["message"]
    bad = await cp.call("GET", f"/v1/sessions/{sid}/config-at?at=yesterday", expect=400)
    assert "RFC 3339" in bad["error"]["message"]
    missing = await cp.call("GET", f"/v1/sessions/{sid}/config-at", expect=400)
    assert "'at' is required" in missing["error"]["message"]
    viewer = await cp.call("GET", f"/v1/sessions/{sid}/config-at?at={first}", token="tok-viewer",
                           expect=403)  # fmt: skip
    assert viewer["error"]["code"] == "forbidden"
    iso = "2020-01-01T00:00:00Z"
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["audit", "at", sid, iso, "--url", cp.base,
                                              "--token", ADMIN])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err  # instants as the operator typed them, not Unix floats
    assert (
        "before_session (HTTP 404)" in err and "no configuration at 2020-01-01T00:00:00.000Z" in err
    )
    assert re.search(r"first entry \(seq 1\) is at \d{4}-\d\d-\d\dT[\d:.]+Z", err), err
    code = await asyncio.to_thread(cli.main, ["audit", "at", "nope", iso, "--data-dir",
                                              str(cp.data_dir)])  # fmt: skip
    assert code == 1
    assert "no version log entries for session 'nope'" in capsys.readouterr().err


async def test_checkpoints_survive_a_restart_and_catch_a_truncated_tail(
    stack: Stack, emulator: Emulator
) -> None:
    cp = await stack.start()
    async with websockets.connect(
        cp.ws_base + "/v3/ws?sample_rate=16000&speech_model=universal-3-5-pro",
        additional_headers={"Authorization": "test-key"},
    ) as ws:
        begin = json.loads(await asyncio.wait_for(ws.recv(), 5))
        sid = cp.live_by_upstream(begin["id"])
        for n in (1, 2):
            await cp.publish({"id": "p", "set": {"prompt": f"v{n}"}})
            await eventually(lambda n=n: len(_pushed(cp, sid)) >= n)  # type: ignore[misc]

        async def all_covered() -> bool:
            answer = await cp.call("GET", f"/v1/audit/verify?session={sid}", expect=200)
            item = answer["items"][0]
            return bool(item["covered_seq"] == item["count"] and answer["ok"])

        await eventually(all_covered)  # written by the running service, not only at close
    count = len(await cp.log(sid))
    first_run = await cp.call("GET", "/v1/audit/verify", expect=200)
    key_ids = first_run["checkpoints"]["trusted_keys"]["node-a"]
    await stack.stop(cp)

    data = cp.data_dir
    key_file = data / "keys" / "audit-signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    (pub,) = (data / "audit").glob("signing-key-*.pub")
    assert key_file.read_bytes() not in (data / "audit").joinpath(pub.name).read_bytes()
    for path in (data / "audit").iterdir():  # the private key never goes near the trail
        assert b"PRIVATE KEY" not in path.read_bytes()

    # delete the session's newest entry: its chain is still a valid chain
    (log_file,) = (data / "audit").glob("versionlog-*.jsonl")
    lines = log_file.read_text().splitlines(keepends=True)
    last = max(i for i, line in enumerate(lines) if f'"session_id":"{sid}"' in line)
    log_file.write_text("".join(lines[:last] + lines[last + 1 :]))

    again = await stack.start()  # same data dir: same key, the checkpoint chain goes on
    answer = await again.call("GET", f"/v1/audit/verify?session={sid}", expect=200)
    assert answer["ok"] is False
    assert answer["items"][0]["first_bad_seq"] == count
    assert answer["items"][0]["problem"].startswith(f"truncated: seq {count} missing at the end")
    raw = load_public_key(pub.read_bytes()).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    pinned = base64.b64encode(raw).decode()
    whole = await again.call(
        "GET", "/v1/audit/verify?public_key=" + pinned.replace("+", "%2B").replace("/", "%2F"),
        expect=200,
    )  # fmt: skip
    assert whole["checkpoints"]["ok"] is True and whole["checkpoints"]["trust"] == "pinned"
    assert whole["checkpoints"]["trusted_keys"] == {"*": key_ids}
    bad_key = await again.call("GET", "/v1/audit/verify?public_key=abc", expect=400)
    assert bad_key["error"]["code"] == "bad_public_key"


def _pushed(cp: ControlPlaneUnderTest, sid: str) -> list[Any]:
    ls = cp.service.engine.live.get(sid)
    return [] if ls is None else [v for v in range(2, ls.push.sent_version + 1)]


@pytest.mark.parametrize("where", ["server", "offline"])
async def test_verify_names_a_bad_checkpoint(stack: Stack, where: str, capsys: Any) -> None:
    cp = await stack.start()
    async with _agent_session(cp) as sid:  # connect sent, connect acked (session.ready)
        assert len(await cp.log(sid)) == 2
    await stack.stop(cp)
    (path,) = (cp.data_dir / "audit").glob("checkpoints-*.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[-1]["heads"][sid][0] += 5  # claims entries that never existed; not re-signed
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if where == "server":
        cp = await stack.start()
        answer = await cp.call("GET", "/v1/audit/verify", expect=200)
    else:
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, ["audit", "verify", "--data-dir",
                                                  str(cp.data_dir), "--json"])  # fmt: skip
        answer = json.loads(capsys.readouterr().out)
        assert code == 1
    assert answer["ok"] is False
    bad = answer["checkpoints"]["first_bad"]
    assert (bad["node"], bad["seq"], bad["kind"]) == ("node-a", rows[-1]["seq"], "edited")
