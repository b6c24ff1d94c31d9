"""The CLI's client commands against a real server running the API over a fake service."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.cli.main import main
from tests.support.servers import free_port
from tests.unit.api.fake_service import TOKENS, FakeControlPlane, serve_fake

POLICY_YAML = """\
id: eu-disclosure
priority: 100
match:
  labels: {region: [eu-west-1, eu-central-1]}
set:
  prompt: "This call is recorded."
  keyterms: [acme, refund]
lock: [prompt]
"""


@dataclass
class Server:
    url: str
    fake: FakeControlPlane


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    fake = FakeControlPlane()
    client = await serve_fake(fake)
    try:
        yield Server(str(client.make_url("")).rstrip("/"), fake)
    finally:
        await client.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTROLPLANE_URL", raising=False)
    monkeypatch.delenv("CONTROLPLANE_TOKEN", raising=False)


async def cli(*argv: str) -> int:
    """Run ``main`` off the event loop (it blocks on urllib while our server answers)."""
    return await asyncio.to_thread(main, list(argv))


def no_tokens(*texts: str) -> None:
    for text in texts:
        for token in TOKENS.values():
            assert token not in text


async def test_policy_apply_yaml_file(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_YAML)
    code = await cli(
        "policy", "apply", "-f", str(path), "--url", server.url, "--token", TOKENS["compliance"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip() == "published policy eu-disclosure version 3 (event eu-disclosure:3)"
    (name, doc, actor) = server.fake.calls[0]
    assert name == "publish_policy" and doc["set"]["keyterms"] == ["acme", "refund"]
    assert actor.startswith("compliance:")
    no_tokens(out, err)


async def test_a_file_the_server_cannot_parse_says_which_parser_it_went_to(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a YAML policy saved as .json was "not valid JSON: Expecting value at line 1 column 1"
    auth = ("--url", server.url, "--token", TOKENS["compliance"])
    (tmp_path / "eu.json").write_text(POLICY_YAML)
    assert await cli("policy", "apply", "-f", str(tmp_path / "eu.json"), *auth) == 1
    err = capsys.readouterr().err
    assert "bad_json (HTTP 400): request body is not valid JSON" in err
    assert f"({tmp_path / 'eu.json'} was sent as JSON: its name ends in .json)" in err
    (tmp_path / "eu.txt").write_text("id: [unclosed\n")
    assert await cli("policy", "preview", "-f", str(tmp_path / "eu.txt"), *auth) == 1
    err = capsys.readouterr().err
    assert f"({tmp_path / 'eu.txt'} was sent as YAML: not a .json file and no leading {{)" in err
    assert server.fake.calls == []


async def test_policy_apply_json_from_stdin_with_env_settings(
    server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONTROLPLANE_URL", server.url)
    monkeypatch.setenv("CONTROLPLANE_TOKEN", TOKENS["admin"])
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"id": "new-one"}')))
    code = await cli("policy", "apply", "-f", "-", "--json")
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out) == {"id": "new-one", "version": 1, "event_id": "new-one:1"}


async def test_policy_ls_table_and_json(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    auth = ("--url", server.url, "--token", TOKENS["viewer"])
    assert await cli("policy", "ls", *auth) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "VERSION", "STATUS", "PRIORITY", "PUBLISHED", "ACTOR"]
    assert out[1].split() == [
        "eu-disclosure",
        "2",
        "active",
        "100",
        "2026-09-21T14:13:20.500Z",
        "compliance",  # a viewer sees the actor's role, not its token digest (security.md)
    ]
    assert out[0].index("VERSION") == out[1].index("2 ")  # aligned columns
    assert await cli("policy", "ls", "--all", "--json", *auth) == 0
    items = json.loads(capsys.readouterr().out)
    assert [p["id"] for p in items] == ["eu-disclosure"]
    assert server.fake.calls[-1] == ("list_policies", True)


async def test_sessions_ls_with_selector(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await cli(
        "sessions",
        "ls",
        "--selector",
        "region in (eu-west-1,eu-central-1)",
        "--selector",
        "tenant=acme",
        "--kind",
        "streaming-v3",
        "--url",
        server.url,
        "--token",
        TOKENS["viewer"],
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "KIND",
        "MODEL",
        "STATE",
        "DESIRED/SENT/ACKED",
        "NODE",
        "LABELS",
    ]
    assert [line.split()[0] for line in lines[1:]] == ["s-1", "s-2"]
    assert "2/2/-" in lines[1] and "region=eu-west-1,tenant=acme" in lines[1]
    assert server.fake.calls[-1][1] == {"region": ["eu-west-1", "eu-central-1"], "tenant": ["acme"]}


async def test_sessions_ls_follows_cursors(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(5, 1105):
        server.fake.sessions[f"t-{i:05}"] = {**server.fake.sessions["s-1"], "id": f"t-{i:05}"}
    code = await cli("sessions", "ls", "--json", "--url", server.url, "--token", TOKENS["viewer"])
    assert code == 0
    assert len(json.loads(capsys.readouterr().out)) == 1104
    assert [c[4:] for c in server.fake.calls] == [(1000, None), (1000, "1000")]


async def test_server_error_exits_1_with_code_and_message(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"id": "Bad_Id", "set": {"keyterms": ["k"] * 101}}))
    code = await cli(
        "policy", "apply", "-f", str(path), "--url", server.url, "--token", TOKENS["admin"]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert "invalid_policy (HTTP 422): policy is invalid (2 violations)" in err
    assert "  - set.keyterms: has 101 items" in err
    no_tokens(out, err)


async def test_forbidden_and_unauthorized(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await cli(
        "policy", "retire", "eu-disclosure", "--url", server.url, "--token", TOKENS["viewer"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "forbidden (HTTP 403)" in err and "requires role experimenter" in err
    code = await cli("policy", "ls", "--url", server.url)
    err = capsys.readouterr().err
    assert code == 1
    assert "unauthorized (HTTP 401)" in err and "CONTROLPLANE_TOKEN" in err
    no_tokens(err)


async def test_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code = await cli("sessions", "ls", "--url", url, "--token", TOKENS["admin"])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.startswith(f"controlplane: cannot reach control plane at {url}: ")
    assert "refused" in err.lower()
    no_tokens(out, err)


async def test_usage_errors_exit_2(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("policy", "rollback", "eu-disclosure", "--to", "zero") == 2
    assert await cli("policy", "apply") == 2
    assert await cli("sessions", "relabel", "s-1", "=x", "--url", server.url) == 2
    assert await cli("policy", "ls", "--url", "ftp://x") == 2
    capsys.readouterr()
    assert server.fake.calls == []


async def test_relabel_show_log_rollback_rollout(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    auth = ("--url", server.url, "--token", TOKENS["compliance"])
    assert await cli("sessions", "relabel", "s-1", "tier=gold", "tenant-", *auth) == 0
    assert capsys.readouterr().out.strip() == "session s-1 labels: region=eu-west-1,tier=gold"
    assert server.fake.calls[0][2] == {"tier": "gold", "tenant": None}
    assert await cli("sessions", "show", "s-1", *auth) == 0
    assert "kind: streaming-v3" in capsys.readouterr().out
    assert await cli("sessions", "log", "s-1", *auth) == 0
    log = capsys.readouterr().out.splitlines()
    assert log[0].split()[:5] == ["SEQ", "AT", "CAUSE", "VERSION", "STATUS"]
    assert "eu-disclosure@2" in log[2]
    assert await cli("policy", "rollback", "eu-disclosure", "--to", "1", *auth) == 0
    assert "now version 3" in capsys.readouterr().out
    assert await cli("policy", "rollout", "eu-disclosure", *auth) == 0
    rollout = capsys.readouterr().out.splitlines()
    assert rollout[0] == "policy eu-disclosure version 3 (active)"
    assert rollout[1] == "guard: more than 1.00% failed of at least 50 sessions within 300s -> halt"
    assert rollout[2].split()[-2:] == ["PENDING", "FAILURES"]
    assert rollout[-1].split() == ["total", "3", "0", "2", "1", "0", "0", "1", "0"]
    assert await cli("policy", "show", "nope", *auth) == 1
    assert "not_found (HTTP 404)" in capsys.readouterr().err


async def test_experiment_assignments_csv(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await cli(
        "experiments",
        "assignments",
        "upsell-q4",
        "--csv",
        "--url",
        server.url,
        "--token",
        TOKENS["viewer"],
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["variant"] for r in rows] == ["control", "enterprise, pitch"]


async def test_audit_verify_server_mode(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    auth = ("--url", server.url, "--token", TOKENS["compliance"])
    assert await cli("audit", "verify", *auth) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "4 chain(s) verified, 0 broken"
    server.fake.broken_sessions.add("s-2")
    assert await cli("audit", "verify", *auth) == 1
    out = capsys.readouterr().out
    assert "BROKEN  s-2  first bad seq 2: hash mismatch" in out
    assert await cli("audit", "verify", "s-2", "--json", *auth) == 1
    assert json.loads(capsys.readouterr().out)["items"][0]["first_bad_seq"] == 2


async def test_audit_verify_local_mode_without_audit_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("audit", "verify", "--data-dir", str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "no audit log at" in err or "unavailable in this build" in err


async def test_audit_verify_local_mode_detects_tampering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sessions.clock import FakeClock
    from sessions.versionlog.file import FileVersionLog

    log = FileVersionLog(tmp_path / "audit", FakeClock(), fsync=False)
    await log.start()
    try:
        for sid in ("call-a", "call-b"):
            for version in (1, 2, 3):
                log.append(
                    sid,
                    version=version,
                    cause="policy",
                    status="sent",
                    delta={"prompt": f"v{version}"},
                    config={"prompt": f"v{version}"},
                )
        await log.flush()
    finally:
        await log.close()

    assert await cli("audit", "verify", "--data-dir", str(tmp_path)) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 chain(s) verified, 0 broken"

    (path,) = (tmp_path / "audit").glob("*.jsonl")
    lines = path.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if '"call-b"' in line and '"seq":2' in line)
    lines[index] = lines[index].replace('"v2"', '"v9"')
    path.write_text("".join(lines))

    assert await cli("audit", "verify", "--data-dir", str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "ok      call-a" in out
    assert "BROKEN  call-b  first bad seq 2" in out
    assert await cli("audit", "verify", "call-a", "--data-dir", str(tmp_path), "--json") == 0
    assert json.loads(capsys.readouterr().out)["items"][0]["count"] == 3
