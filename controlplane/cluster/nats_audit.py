"""NATS adapter for the durable audit stream ``CP_AUDIT`` (DESIGN.md §4, §6).

The second of the two modules that import ``nats`` (justification: ``nats_bus`` owns the
connection and the policy stream; this one owns the audit stream's settings, the batched
shipping of version-log lines and the readers behind ``audit verify/export --nats-url``).

Stream: subjects ``<prefix>.audit.<session token>`` (``nats_bus.subject_token``), file
storage, limits retention with ``max_age`` = ``audit_max_age_days`` (default 400 days),
discard old. Each message is one version-log line exactly as the local JSONL file holds it
(canonical JSON, hash last), published with ``Nats-Msg-Id: <session_id>:<seq>``: a retried
batch is deduplicated by JetStream inside the duplicate window, and readers drop any exact
duplicate (same seq and hash) that arrives later than that, so a re-shipped entry never
looks like tampering.

Signed checkpoints (``sessions.checkpoints``) go to ``<prefix>.audit._checkpoint.<node token>``
with ``Nats-Msg-Id: checkpoint/<node>/<seq>``: four tokens, so no session subject (three
tokens, a session id never splits) can collide with them, and ``/`` never occurs in a session
id, so neither can the message ids. ``checkpoint_rows`` reads them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.js import api

from controlplane.audit.reader import dedupe
from controlplane.audit.shipper import AuditLine
from controlplane.cluster.nats_bus import NatsConnection, ensure_stream, subject_token
from controlplane.errors import Unavailable

__all__ = ["NatsAuditStream"]

log = logging.getLogger(__name__)

CHECKPOINT_TOKEN: Final = "_checkpoint"
DAY_S: Final = 86_400.0
DUPLICATE_WINDOW_S: Final = 600.0
MAX_ENTRY_BYTES: Final = 1024 * 1024
READ_BATCH: Final = 1000
READ_WAIT_S: Final = 2.0


class NatsAuditStream:
    """Ships version-log lines to ``CP_AUDIT`` and reads them back."""

    def __init__(self, conn: NatsConnection) -> None:
        s = conn.settings
        self._conn = conn
        self.stream = s.nats_audit_stream
        self._prefix = f"{s.nats_subject_prefix}.audit."
        self._ensured = False

    def subject(self, session_id: str) -> str:
        return self._prefix + subject_token(session_id)

    def checkpoint_subject(self, node: str) -> str:
        return f"{self._prefix}{CHECKPOINT_TOKEN}.{subject_token(node)}"

    def stream_config(self) -> api.StreamConfig:
        s = self._conn.settings
        return api.StreamConfig(
            name=self.stream,
            description="controlplane durable audit: every version-log entry of every session",
            subjects=[self._prefix + ">"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            max_age=s.audit_max_age_days * DAY_S,
            max_msgs=-1,
            max_bytes=-1,
            max_msg_size=MAX_ENTRY_BYTES,
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=s.nats_replicas,
        )

    async def ensure(self) -> None:
        try:
            await ensure_stream(self._conn.js, self.stream_config())
        except nats.errors.Error as exc:
            raise Unavailable(f"NATS: cannot set up stream {self.stream}: {exc}") from exc
        self._ensured = True

    # -- AuditTransport ------------------------------------------------------------------
    async def ship(self, lines: Sequence[AuditLine]) -> None:
        """Publish a batch and wait for every PubAck; raises Unavailable if any failed (the
        caller retries the whole batch: ``Nats-Msg-Id`` makes that idempotent)."""
        if not self._conn.connected:  # nothing buffered in the client: the disk is the buffer
            raise Unavailable("not connected to NATS", code="nats_unavailable")
        if not self._ensured:
            await self.ensure()
        js = self._conn.js
        futures: list[asyncio.Future[api.PubAck]] = []
        try:
            for line in lines:
                if line.node is None:
                    subject = self.subject(line.session_id)
                    headers = {"Nats-Msg-Id": f"{line.session_id}:{line.seq}"}
                else:
                    subject = self.checkpoint_subject(line.node)
                    headers = {"Nats-Msg-Id": f"checkpoint/{line.node}/{line.seq}"}
                futures.append(await js.publish_async(
                    subject, line.data, headers=headers, stream=self.stream,
                    wait_stall=self._conn.settings.nats_request_timeout_s,
                ))  # fmt: skip
            async with asyncio.timeout(self._conn.settings.nats_request_timeout_s):
                results = await asyncio.gather(*futures, return_exceptions=True)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise Unavailable(f"NATS: shipping {len(lines)} audit entries failed: {exc!r}") from exc
        finally:
            for future in futures:
                future.cancel()  # no-op when done; frees the client's slot when not
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            if any(isinstance(r, nats.js.errors.NoStreamResponseError) for r in failed):
                self._ensured = False  # the stream is gone: recreate it on the next attempt
            raise Unavailable(
                f"NATS: {len(failed)} of {len(lines)} audit entries were not stored: {failed[0]!r}"
            )

    # -- readers -------------------------------------------------------------------------
    async def has_trail(self, session_id: str) -> bool:
        """Whether the stream holds any entry of this session (one request: its last one)."""
        try:
            await self._conn.js.get_last_msg(self.stream, self.subject(session_id))
        except nats.js.errors.NotFoundError:
            return False  # no such message (or no stream yet: no trail either)
        except nats.errors.Error as exc:
            raise Unavailable(f"NATS: reading {self.stream} failed: {exc}") from exc
        return True

    async def read(
        self,
        sink: Callable[[bytes], None],
        *,
        session_id: str | None = None,
        since: float | None = None,
        checkpoints: bool = False,
    ) -> int:
        """Feed every stored line (of one session, or all, or with ``checkpoints`` every
        checkpoint; from ``since`` on by stream time) to ``sink``, in stream order; returns how
        many. A temporary consumer, deleted after."""
        if checkpoints:
            subject = f"{self._prefix}{CHECKPOINT_TOKEN}.>"
        else:
            subject = self._prefix + ">" if session_id is None else self.subject(session_id)
        config = api.ConsumerConfig(
            name=f"cp-audit-read-{uuid.uuid4().hex[:16]}",
            deliver_policy=(
                api.DeliverPolicy.ALL if since is None else api.DeliverPolicy.BY_START_TIME
            ),
            opt_start_time=None if since is None else dt.datetime.fromtimestamp(since, dt.UTC),
            ack_policy=api.AckPolicy.NONE,
            filter_subject=subject,
            replay_policy=api.ReplayPolicy.INSTANT,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )  # fmt: skip
        js = self._conn.js
        count = 0
        try:
            sub = await js.pull_subscribe(subject, stream=self.stream, config=config)
        except nats.js.errors.NotFoundError as exc:
            raise Unavailable(f"NATS: stream {self.stream} does not exist") from exc
        except nats.errors.Error as exc:
            raise Unavailable(f"NATS: reading {self.stream} failed: {exc}") from exc
        try:
            info = await sub.consumer_info()
            remaining = info.num_pending
            while remaining:
                try:
                    msgs = await sub.fetch(READ_BATCH, timeout=READ_WAIT_S)
                except nats.errors.TimeoutError:
                    remaining = (await sub.consumer_info()).num_pending
                    continue
                for msg in msgs:
                    sink(msg.data)
                    count += 1
                remaining = msgs[-1].metadata.num_pending
        except nats.errors.Error as exc:
            raise Unavailable(f"NATS: reading {self.stream} failed: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await js.delete_consumer(self.stream, config.name or "")
        return count

    async def session_rows(self, session_id: str) -> list[dict[str, Any]]:
        """One session's entries as stored (exact re-shipped duplicates dropped)."""
        rows: list[dict[str, Any]] = []
        await self.read(lambda data: rows.append(_row(data)), session_id=session_id)
        return dedupe(rows)

    async def checkpoint_rows(self) -> list[dict[str, Any]]:
        """Every stored checkpoint record of every node, in stream order (a line that is not
        a JSON object is kept as ``{}`` so verification names it)."""
        rows: list[dict[str, Any]] = []
        await self.read(lambda data: rows.append(_row(data)), checkpoints=True)
        return rows


def _row(data: bytes) -> dict[str, Any]:
    try:
        row = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to be ours
        return {}  # verify reports it as malformed
    return row if isinstance(row, dict) else {}
