"""The distributed-mode pieces on their own: subject tokens, redaction, dedupe, rollout sums,
settings checks, and the audit shipper over real JSONL files with a recording transport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from controlplane.audit.reader import dedupe
from controlplane.audit.shipper import AuditLine, AuditShipper
from controlplane.cluster.nats_bus import redact, subject_token
from controlplane.cluster.ports import ClusterUpkeep
from controlplane.config import Settings, SettingsError
from controlplane.metrics import Metrics
from controlplane.rollouts.counts import rollout_body
from sessions.clock import FakeClock
from sessions.errors import BackendUnavailable
from sessions.registry import MemoryRegistry
from sessions.versionlog.core import verify_entries
from sessions.versionlog.file import FileVersionLog


@pytest.mark.parametrize(
    ("value", "token"),
    [("cps_0a9f", "cps_0a9f"), ("call:42-x", "call:42-x"), ("a.b", "a%2Eb"), ("*", "%2A"),
     (">", "%3E"), ("a b", "a%20b"), ("50%", "50%25"), ("é", "%C3%A9"), ("", "%")],
)  # fmt: skip
def test_subject_tokens_never_split_or_widen_a_subject(value: str, token: str) -> None:
    assert subject_token(value) == token


def test_urls_are_redacted_for_logs() -> None:
    assert redact("nats://user:s3cret@nats:4222") == "nats://***@nats:4222"
    assert redact("rediss://:s3cret@redis:6380/0") == "rediss://***@redis:6380/0"
    assert redact("nats://a:4222,nats://tok@b:4222") == "nats://a:4222,nats://***@b:4222"
    assert redact("redis://redis:6379/0") == "redis://redis:6379/0"


def test_dedupe_drops_exact_reshipments_only() -> None:
    rows = [{"seq": 1, "hash": "a"}, {"seq": 2, "hash": "b"}, {"seq": 1, "hash": "a"},
            {"seq": 2, "hash": "evil"}]  # fmt: skip
    assert dedupe(rows) == [rows[0], rows[1], rows[3]]


def test_rollout_sums_every_replica() -> None:
    row = {"version": 2, "variant": "b", "targeted": 2, "pending": 0, "sent": 0,
           "acknowledged": 2, "unverified": 0, "rejected": 0, "unchanged": 0}  # fmt: skip
    other = {**row, "variant": None, "targeted": 1, "acknowledged": 0, "pending": 1}
    body = rollout_body("p", 2, False, [[row], [row, other]])
    assert [(v["variant"], v["targeted"]) for v in body["versions"]] == [(None, 1), ("b", 4)]
    assert body["totals"]["targeted"] == 5 and body["totals"]["acknowledged"] == 4
    assert body["status"] == "active"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"redis_url": "redis://r/0"}, "--redis-url needs --nats-url"),
     ({"heartbeat_interval_s": 30.0, "session_ttl_s": 30.0}, "heartbeat interval"),
     ({"nats_url": "nats://n", "nats_creds": Path("a"), "nats_nkey": Path("b")}, "either"),
     ({"nats_policy_stream": "CP.POLICY"}, "not a valid JetStream stream name"),
     ({"nats_subject_prefix": "cp.*"}, "not a valid subject prefix")],
)  # fmt: skip
def test_settings_that_cannot_work_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings(**overrides).check()  # type: ignore[arg-type]
    Settings(nats_url="nats://n", redis_url="redis://r/0").check()
    Settings(nats_url="nats://n").check()


class Recorder:
    """A transport that stores what it is given, and fails when told to."""

    def __init__(self) -> None:
        self.stored: list[AuditLine] = []
        self.fail = 0

    async def ship(self, lines: Sequence[AuditLine]) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("transport down")
        self.stored.extend(lines)


def _append(log: FileVersionLog, sid: str, n: int) -> None:
    for i in range(n):
        log.append(sid, version=i + 1, cause="policy", status="sent",
                   delta={"prompt": f"v{i}"}, config={"prompt": f"v{i}"})  # fmt: skip


async def test_shipper_ships_durable_entries_once_and_resumes_from_its_cursor(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    log = FileVersionLog(tmp_path / "audit", clock, fsync=False, flush_interval_s=None)
    await log.start()
    metrics = Metrics()
    transport = Recorder()
    cursor = tmp_path / "cursor.json"

    def shipper() -> AuditShipper:
        return AuditShipper(tmp_path / "audit", cursor, transport, flush=log.flush,
                            metrics=metrics, batch_lines=3)  # fmt: skip

    first = shipper()
    _append(log, "s1", 4)
    _append(log, "s2", 2)
    assert log.pending == 6  # not durable yet: the shipper flushes before it reads
    transport.fail = 1
    with pytest.raises(ConnectionError):
        await first.ship_pending()
    assert transport.stored == [] and first.backlog_bytes > 0
    assert metrics.audit_append_failures._value.get() == 3  # one failed batch of 3
    assert await first.ship_pending() == 6
    assert [(x.session_id, x.seq) for x in transport.stored] == [
        ("s1", 1), ("s1", 2), ("s1", 3), ("s1", 4), ("s2", 1), ("s2", 2)]  # fmt: skip
    assert first.backlog_bytes == 0
    # what was shipped is byte for byte what the file holds, and verifies
    (path,) = (tmp_path / "audit").glob("*.jsonl")
    assert [x.data for x in transport.stored] == path.read_bytes().splitlines()
    rows = [json.loads(x.data) for x in transport.stored if x.session_id == "s1"]
    assert verify_entries("s1", rows).ok
    # a new day's file and a line that is not an entry
    clock.advance(86_400)
    _append(log, "s1", 1)
    await log.flush()
    with path.open("ab") as fh:
        fh.write(b"garbage\n")
    # a restarted shipper resumes from the persisted cursor: nothing is shipped twice
    second = shipper()
    await second.start()
    await second.close(final_timeout_s=5)
    assert [(x.session_id, x.seq) for x in transport.stored[6:]] == [("s1", 5)]
    assert len(list((tmp_path / "audit").glob("*.jsonl"))) == 2
    await log.close()


class EatsCancellation(MemoryRegistry):
    """A registry that does what redis-py 8.1 does when a cancel lands during a failing AUTH:
    it turns the CancelledError into its own error."""

    async def heartbeat(self, node: str) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise BackendUnavailable("connection reset while cancelling") from None


async def test_background_loops_stop_even_when_a_backend_eats_the_cancellation() -> None:
    registry = EatsCancellation(FakeClock())
    upkeep = ClusterUpkeep(node_id="n", registry=registry, clock=FakeClock(),
                           heartbeat_interval_s=0.01)  # fmt: skip
    upkeep._task = asyncio.get_running_loop().create_task(upkeep._run())
    await asyncio.sleep(0.05)  # inside heartbeat()
    task = upkeep._task
    async with asyncio.timeout(2):
        await upkeep.close()
    assert task.done()


class _EatsCancel(Recorder):
    """A transport that swallows a cancel arriving while it ships (as a client library
    retrying inside may), then returns normally."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def ship(self, lines: Sequence[AuditLine]) -> None:
        self.entered.set()
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            pass
        self.stored.extend(lines)


async def test_a_stop_eaten_inside_a_shipping_pass_still_ends_the_loop(tmp_path: Path) -> None:
    """The loop checks ``cancelling()`` after each pass (controlplane/tasks.py's rule for
    loops): one cancel stops it even when the pass swallowed it; without the check the loop
    sleeps and ships on, and a stop waits out STOP_WAIT_S and cancels again."""
    log = FileVersionLog(tmp_path / "audit", FakeClock(), fsync=False, flush_interval_s=None)
    await log.start()
    transport = _EatsCancel()
    shipper = AuditShipper(tmp_path / "audit", tmp_path / "cursor.json", transport,
                           flush=log.flush, metrics=Metrics(), interval_s=0.05)  # fmt: skip
    await shipper.start()
    _append(log, "s1", 3)
    await log.flush()
    await asyncio.wait_for(transport.entered.wait(), 10)
    task = shipper._task
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), 10)
    assert task.cancelled()
    await shipper.close(final_timeout_s=5)
    await log.close()
