"""Embedded `serve` keeps its policies: `kill -9` in the middle of a rollout, restart on the
same data directory, and every policy and version is back, numbers are never reused, and the
audit trail answers the same (issue #18)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controlplane.edges.client import ControlClient
from tests.integration.test_serve_process import EXE, _env, _read_line
from tests.support.servers import free_port, wait_port

TOKEN = "restart-admin-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def _serve(tmp_path: Path, procs: list[subprocess.Popen[str]]) -> str:
    port = free_port()
    env = _env(tmp_path, CONTROLPLANE_TOKENS=f"admin:{TOKEN}")
    proc = subprocess.Popen(
        [EXE, "serve", "--listen", f"127.0.0.1:{port}"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    procs.append(proc)
    _read_line(proc, "controlplane serving on")
    wait_port(port, proc=proc)  # type: ignore[arg-type]
    return f"127.0.0.1:{port}"


async def _call(http: aiohttp.ClientSession, method: str, url: str, expect: int,
                body: Any = None) -> Any:  # fmt: skip
    async with http.request(method, url, json=body, headers=HEADERS) as resp:
        assert resp.status == expect, f"{method} {url}: {resp.status} {await resp.text()}"
        return await resp.json()


async def _trail(http: aiohttp.ClientSession, base: str, sids: list[str], at: float) -> Any:
    """What `audit verify` and `audit at` answer for these sessions, minus the instant's
    own bookkeeping (``verified_at`` and the like are not part of the evidence)."""
    verify = await _call(http, "GET", f"{base}/v1/audit/verify", 200)
    rows = {r["session_id"]: r for r in verify["items"] if r["session_id"] in sids}
    at_answers = {}
    for sid in sids:
        answer = await _call(http, "GET", f"{base}/v1/sessions/{sid}/config-at?at={at!r}", 200)
        at_answers[sid] = {k: answer[k] for k in ("config", "policies", "established_by",
                                                  "verified")}  # fmt: skip
    return rows, at_answers


def test_kill_9_mid_rollout_then_restart_keeps_every_version_and_never_reuses_a_number(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    first = _serve(tmp_path, procs)

    async def before_kill() -> tuple[dict[str, Any], list[str], float, Any]:
        base = f"http://{first}"
        tone = {"id": "tone", "set": {"system_prompt": "first"}, "lock": ["system_prompt"]}
        async with aiohttp.ClientSession() as http:
            apps = [ControlClient(f"ws://{first}/v1/control", token=TOKEN, kind="voice-agent-v1",
                                  model="voice-agent", config={}) for _ in range(2)]  # fmt: skip
            for app in apps:
                await app.__aenter__()
            try:
                streams = [app.pushes() for app in apps]

                async def each_applied(status: int, path: str, body: Any = None) -> Any:
                    answer = await _call(http, "POST" if body is not None else "DELETE",
                                         f"{base}/v1/policies{path}", status, body)  # fmt: skip
                    for app, stream in zip(apps, streams, strict=True):
                        await app.applied((await asyncio.wait_for(anext(stream), 5)).version)
                    return answer

                await each_applied(201, "", tone)
                await each_applied(201, "", {**tone, "set": {"system_prompt": "second"},
                                             "reason": "tone it up"})  # fmt: skip
                await each_applied(200, "/tone/rollback", {"to": 1})
                await each_applied(201, "", {"id": "gone", "set": {"keyterms": ["x"]}})
                await each_applied(200, "/gone")
                url = f"{base}/v1/policies"
                at = time.time()
                await asyncio.sleep(0.05)
                # mid-rollout: version 4 is pushed to both sessions, neither reports back
                published = await _call(http, "POST", url, 201,
                                        {**tone, "set": {"system_prompt": "third"}})  # fmt: skip
                assert published["version"] == 4
                for stream in streams:
                    await asyncio.wait_for(anext(stream), 5)
                versions = {
                    pid: (await _call(http, "GET", f"{url}/{pid}/versions", 200))["items"]
                    for pid in ("tone", "gone")
                }
                sids = [str(app.session_id) for app in apps]
                trail = await _trail(http, base, sids, at)
                # the sessions are still connected when the process dies
                procs[0].kill()
                procs[0].wait(timeout=10)
                return versions, sids, at, trail
            finally:
                for app in apps:
                    await app.__aexit__(None, None, None)

    versions, sids, at, trail = asyncio.run(before_kill())
    assert [v["version"] for v in versions["tone"]] == [1, 2, 3, 4]
    assert [v["version"] for v in versions["gone"]] == [1, 2]
    assert all(len(v["digest"]) == 64 for v in versions["tone"])
    assert (tmp_path / "data" / "policies" / "tone" / "4.json").is_file()
    assert not [p for p in (tmp_path / "data" / "policies").rglob("*") if ".tmp-" in p.name]

    second = _serve(tmp_path, procs)

    async def after_restart() -> None:
        base = f"http://{second}"
        url = f"{base}/v1/policies"
        async with aiohttp.ClientSession() as http:
            for pid, before in versions.items():
                after = (await _call(http, "GET", f"{url}/{pid}/versions", 200))["items"]
                assert after == before, pid  # documents, digests, actors, times: all back
            listed = (await _call(http, "GET", url, 200))["items"]
            assert [(p["id"], p["version"]) for p in listed] == [("tone", 4)]
            tone = await _call(http, "GET", f"{url}/tone", 200)
            assert tone["policy"]["set"] == {"system_prompt": "third"}
            # the next numbers: never one that already named other content
            again = await _call(http, "POST", url, 201,
                                {"id": "tone", "set": {"system_prompt": "fourth"}})  # fmt: skip
            assert again["version"] == 5
            back = await _call(http, "POST", url, 201, {"id": "gone", "set": {"keyterms": ["y"]}})
            assert back["version"] == 3  # version 2 was the retirement
            stale = await _call(
                http, "POST", url, 409, {"id": "tone", "version": 2, "set": {"system_prompt": "x"}}
            )
            assert stale["error"]["details"]["current"] == 5
            # the audit trail answers exactly as before the kill, digests included
            assert await _trail(http, base, sids, at) == trail
            rows, at_answers = trail
            assert all(row["ok"] for row in rows.values()) and set(rows) == set(sids)
            digests = {v["version"]: v["digest"] for v in versions["tone"]}
            for answer in at_answers.values():
                assert answer["verified"] is True
                assert answer["config"]["system_prompt"] == "first"
                (ref,) = [p for p in answer["policies"] if p["id"] == "tone"]
                assert ref == {"id": "tone", "version": 3, "variant": None, "digest": digests[3]}

    asyncio.run(after_restart())
    # offline, from the files alone: the same chains verify
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    done = subprocess.run(
        [EXE, "audit", "verify", "--data-dir", str(tmp_path / "data")], env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    shown = subprocess.run(
        [EXE, "audit", "at", sids[0], repr(at), "--data-dir", str(tmp_path / "data")], env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    digest = next(v["digest"] for v in versions["tone"] if v["version"] == 3)
    assert f"tone@3={digest[:12]}" in shown.stdout


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ('{"type": "policy.publ', "not JSON"),  # damaged outside the service
        ("[" * 5000 + "]" * 5000, "nested deeper than 32 levels"),  # was a RecursionError
    ],
    ids=["truncated", "5000-deep"],
)
def test_serve_refuses_to_start_on_a_policy_file_it_cannot_replay(
    tmp_path: Path, damage: str, reason: str
) -> None:
    """A stored file is an event this node accepted: a damaged one stops the start with one
    clear line (quarantining it would free its version number for other content)."""
    stored = tmp_path / "data" / "policies" / "tone"
    stored.mkdir(parents=True)
    (stored / "1.json").write_text(damage)
    env = _env(tmp_path, CONTROLPLANE_TOKENS=f"admin:{TOKEN}")
    done = subprocess.run(
        [EXE, "serve", "--listen", f"127.0.0.1:{free_port()}"], env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert f"policy store file {stored / '1.json'} cannot be read: {reason}" in done.stderr
    assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr
