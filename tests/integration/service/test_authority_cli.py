"""The CLI against the real service (issue #18): ownership and lock refusals name what failed,
and a lock crossed only on label-dependent sessions is printed as a warning."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from controlplane.cli.main import main
from tests.integration.service.conftest import ControlPlaneUnderTest

LOCK = {"id": "eu-disclosure", "match": {"labels": {"region": "eu"}},
        "set": {"prompt": "Recorded."}, "lock": ["prompt"]}  # fmt: skip


def pitch(**doc: Any) -> dict[str, Any]:
    return {"id": "upsell", "priority": 1_000_000, **doc, "experiment": {"key": "upsell",
            "variants": [{"name": "pitch", "weight": 100, "set": {"prompt": "Buy."}}]}}  # fmt: skip


async def cli(cp: ControlPlaneUnderTest, role: str, *argv: str) -> int:
    auth = ("--url", cp.base, "--token", f"tok-{role}")
    return await asyncio.to_thread(main, [*argv, *auth])


async def test_cli_refusals_and_warnings(
    cp: ControlPlaneUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await cp.publish(LOCK, token="tok-compliance")
    files = {}
    acme = pitch(match={"labels": {"tenant": "acme"}})
    hijack = {**pitch(), "id": "eu-disclosure"}
    for name, doc in (("everywhere", pitch()), ("acme", acme), ("hijack", hijack)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(doc))

    for command in ("apply", "preview"):
        assert await cli(cp, "experimenter", "policy", command, "-f", str(files["everywhere"])) == 1
        err = capsys.readouterr().err
        assert "field_locked (HTTP 409)" in err
        assert "'prompt'" in err and "'eu-disclosure' version 1" in err
        assert await cli(cp, "experimenter", "policy", command, "-f", str(files["hijack"])) == 1
        err = capsys.readouterr().err
        assert "policy_owned (HTTP 403)" in err and "owned by role compliance" in err

    assert await cli(cp, "experimenter", "policy", "apply", "-f", str(files["acme"])) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("published policy upsell version 1")
    assert out[1].startswith(
        "warning: field 'prompt' is locked by policy 'eu-disclosure' version 1"
    )
    assert await cli(cp, "experimenter", "policy", "retire", "eu-disclosure") == 1
    assert "policy_owned (HTTP 403)" in capsys.readouterr().err
    assert await cli(cp, "experimenter", "policy", "retire", "upsell") == 0
