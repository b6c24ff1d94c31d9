"""A burst of 10,000 random and hostile policy events through the service's bus.

Each event goes the way a NATS message does: ``PolicyEvent.from_json`` (the decoder) and, when
it decodes, ``bus.publish`` → the service's handler. Afterwards the process is healthy, every
decodable event is accounted for in ``controlplane_policy_events_total`` (applied + ignored +
invalid == decodable; the undecodable ones are refused by the decoder, which is where the NATS
consumer counts them as ``result="invalid"``), a live control-channel session got pushes and
survived, and a valid policy published afterwards is pushed to it.

The control plane's data directory is on a memory file system when there is one (/dev/shm):
each applied event is a policy file written with two fsyncs, and on a shared CI disk those
took most of the run (13 s alone, past the 60 s timeout under load; 3 s on tmpfs). Durability
is not what this test asserts (tests/unit/store/test_policy_files.py and the restart tests
do). The timeout is a hang guard sized for a loaded 2-core machine, nothing is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.config import Settings
from controlplane.intake.bus import PolicyEvent
from tests.integration.service.conftest import ADMIN, ControlPlaneUnderTest

EVENTS = 10_000
SEED = 20261120
POOL = [f"burst-{i}" for i in range(8)]
AUTH = {"Authorization": f"Bearer {ADMIN}"}
HOSTILE = [
    "\ud800",
    "",
    " ",
    "\x00",
    "x" * 3000,
    "../../etc",
    "burst-0\n",
    10**30,
    -1,
    0,
    1.5,
    None,
    True,
    [],
    {},
    [1, 2],
    {"id": "x"},
    "NaN",
]


MEMORY_FS = Path("/dev/shm")


@pytest.fixture
def data_root(tmp_path: Path) -> Iterator[Path]:
    """A directory on a memory file system if the machine has one, else ``tmp_path``."""
    if not (MEMORY_FS.is_dir() and os.access(MEMORY_FS, os.W_OK)):
        yield tmp_path
        return
    root = Path(tempfile.mkdtemp(prefix="cp-burst-", dir=MEMORY_FS))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cp_settings(cp_settings: Callable[..., Settings], data_root: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return cp_settings(**{"data_dir": data_root / "data", **overrides})

    return make


def _valid_policy(rng: random.Random, versions: dict[str, int]) -> dict[str, Any]:
    """Mostly the next version of a pool policy; sometimes a duplicate or an older one."""
    policy_id = rng.choice(POOL)
    versions.setdefault(policy_id, 0)
    if rng.random() < 0.7:
        versions[policy_id] = versions.get(policy_id, 0) + rng.randint(1, 3)
        version = versions[policy_id]
    else:
        version = rng.randint(1, max(1, versions.get(policy_id, 1)))
    doc: dict[str, Any] = {"id": policy_id, "version": version}
    config: dict[str, Any] = {}
    if rng.random() < 0.6:
        config["system_prompt"] = f"prompt {rng.randint(0, 10**6)}"
    if rng.random() < 0.4:
        config["keyterms"] = [f"term{rng.randint(0, 99)}" for _ in range(rng.randint(0, 5))]
    if rng.random() < 0.3:
        low = rng.randint(50, 5000)
        config["min_turn_silence_ms"], config["max_turn_silence_ms"] = low, low + 100
    doc["set"] = config
    if rng.random() < 0.7:
        doc["match"] = {"labels": {"burst": "yes"}}
    if rng.random() < 0.2:
        doc["lock"] = sorted(config)[:1]
    if rng.random() < 0.2:
        doc["rollout"] = {"percent": rng.choice([0, 10, 50, 100]), "bucket_by": "caller"}
    if rng.random() < 0.2:
        weight = rng.randint(0, 100)
        doc["experiment"] = {
            "key": "exp-burst",
            "bucket_by": rng.choice(["session_id", "caller"]),
            "variants": [
                {"name": "a", "weight": weight},
                {"name": "b", "weight": 100 - weight, "set": {"system_prompt": "variant b"}},
            ],
        }
    if rng.random() < 0.1:
        doc["apply"] = "next_turn"
        doc["apply_deadline_s"] = rng.choice([0.5, 1, 300])
    return doc


def _corrupt(rng: random.Random, value: dict[str, Any]) -> dict[str, Any]:
    """Replace, drop or add one field somewhere in ``value`` (one level deep)."""
    target = value
    if rng.random() < 0.5 and value.get("set"):
        target = value["set"]
    key = rng.choice([*target, "extra", "version", "priority", "match", "lock", "rollout"])
    action = rng.random()
    if action < 0.6:
        target[key] = rng.choice(HOSTILE)
    elif action < 0.8:
        target.pop(key, None)
    else:
        target[key] = [target.get(key)]
    return value


def _event(rng: random.Random, versions: dict[str, int]) -> Any:
    kind = rng.random()
    event: dict[str, Any] = {
        "type": "policy.retired" if rng.random() < 0.1 else "policy.published",
        "policy": _valid_policy(rng, versions),
        "actor": "compliance:3f9a1c",
        "published_at": "2026-11-20T10:00:00Z",
        "event_id": f"e{rng.randint(0, 10**9)}",
    }
    if kind < 0.40:  # well-formed: applied, or ignored as a duplicate / older version
        return event
    if kind < 0.45:  # the next version, for the live session, with one hostile text value
        policy = event["policy"]
        versions[policy["id"]] += 1
        policy["version"] = versions[policy["id"]]
        policy["match"] = {"labels": {"burst": "yes"}}
        field = rng.choice(["system_prompt", "prompt"])
        policy["set"][field] = rng.choice(["\ud800", "a\udfffb", "\x00\x1b", "é" * 1750])
        return event
    if kind < 0.75:  # the policy inside breaks a rule: refused by the policy schema
        event["policy"] = _corrupt(rng, event["policy"])
        return event
    if kind < 0.9:  # the envelope is broken: refused by the decoder
        return _corrupt(rng, event)
    return rng.choice(
        [
            None,
            [],
            "policy.published",
            7,
            {"type": "policy.published"},
            {"policy": event["policy"]},
            json.dumps(event),
        ]
    )


def _totals(text: str, name: str, label: str | None = None) -> Counter[str]:
    """The samples of counter ``name`` summed per value of ``label``."""
    totals: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                totals[sample.labels[label] if label else ""] += int(sample.value)
    return totals


async def _app(
    cp: ControlPlaneUnderTest, pushes: list[dict[str, Any]], ws: aiohttp.ClientWebSocketResponse
) -> None:
    """A well-behaved app: acknowledge every push, as soon as it arrives."""
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        frame = json.loads(msg.data)
        if frame["type"] == "push":
            pushes.append(frame)
            await ws.send_json({"type": "applied", "version": frame["version"]})


@pytest.mark.timeout(240)
async def test_ten_thousand_random_and_hostile_events_are_all_accounted_for(
    cp: ControlPlaneUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(SEED)
    versions: dict[str, int] = {}
    pushes: list[dict[str, Any]] = []
    async with cp.http.ws_connect(cp.ws_base + "/v1/control", headers=AUTH) as ws:
        await ws.send_json(
            {
                "type": "register",
                "session_id": "burst-app",
                "kind": "voice-agent-v1",
                "model": "voice-agent",
                "labels": {"burst": "yes", "caller": "c1"},
            }
        )
        assert json.loads((await ws.receive(timeout=5)).data)["type"] == "registered"
        reader = asyncio.get_running_loop().create_task(_app(cp, pushes, ws))
        try:
            decodable = refused = 0
            started = time.monotonic()
            for n in range(EVENTS):
                if n % 20 == 0:
                    await asyncio.sleep(0)  # let the app read and acknowledge meanwhile
                try:
                    event = PolicyEvent.from_json(_event(rng, versions))
                except ValueError as exc:
                    assert str(exc)
                    refused += 1
                    continue
                decodable += 1
                await cp.service.bus.publish(event)
            elapsed = time.monotonic() - started
            assert decodable + refused == EVENTS
            metrics = await cp.call("GET", "/metrics", token=None, expect=200)
            totals = _totals(metrics, "controlplane_policy_events_total", "result")
            assert _totals(metrics, "controlplane_audit_append_failures_total")[""] == 0
            assert _totals(metrics, "controlplane_audit_appends_total")[""] > 0
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert not errors, errors[:3]
            assert sum(totals.values()) == decodable, (totals, decodable, refused)
            assert min(totals["applied"], totals["ignored"], totals["invalid"], refused) > 100, (
                totals,
                refused,
            )
            assert (await cp.call("GET", "/healthz", token=None, expect=200))["status"] == "ok"
            assert "burst-app" in cp.service.engine.live, "the live session survived the burst"
            before = len(pushes)
            # each push waits for its acknowledgement and, write-ahead, for its log entry to be
            # durable (a thread hop the burst loop only yields to every 20 events): a handful
            assert before >= 2, "the session received pushes during the burst"

            await cp.publish(
                {
                    "id": "after-burst",
                    "priority": 10**6,
                    "match": {"labels": {"burst": "yes"}},
                    "set": {"keyterms": ["after-burst"]},
                }
            )

            async def pushed() -> dict[str, Any] | None:
                for frame in pushes[before:]:
                    keyterms = frame["message"].get("session", {}).get("input", {})
                    if keyterms.get("keyterms") == ["after-burst"]:
                        return frame
                return None

            deadline = time.monotonic() + 30  # a condition waited for, bounded
            while (frame := await pushed()) is None:
                assert time.monotonic() < deadline, f"no push after the burst ({elapsed:.1f}s)"
                await asyncio.sleep(0.05)
            assert frame["session_id"] == "burst-app"
            log = await cp.log("burst-app")
            assert log and all(e["session_id"] == "burst-app" for e in log)
            verify = await cp.call("GET", "/v1/audit/verify?session=burst-app", expect=200)
            assert verify["ok"], verify
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
