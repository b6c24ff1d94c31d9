"""NATS adapter for the durable audit stream ``CP_AUDIT`` (DESIGN.md §4, §6).

The second of the two modules that import ``nats`` (justification: ``nats_bus`` owns the
connection and the policy stream; this one owns the audit stream's settings, the batched
shipping of version-log lines and the readers behind ``audit verify/export --nats-url``).

Stream: file storage, limits retention with ``max_age`` = ``audit_max_age_days`` (default 400
days), discard **new**, every subject under ``<prefix>.audit.``: a size or message cap an
operator sets refuses new lines once reached (the shipper keeps them on disk, ``/readyz``
says so) instead of deleting the oldest entries of the trail; age still expires them. Since
issue #23 (the NATS work of a publish must not grow with its sessions) entries travel in
batches:

- ``<prefix>.audit.<session token>`` (``nats_bus.subject_token``): the session's **first**
  entry (seq 1, the connect with its config) alone, exactly as the local JSONL file holds it,
  ``Nats-Msg-Id: <session_id>:1``. It anchors the session: ``has_trail`` is one last-message
  lookup, and a session read starts from its stream sequence. Stores written before batching
  hold every entry of a session here, one per message; they read the same.
- ``<prefix>.audit._batch.<node token>``: every later entry a node ships, as batches
  (``controlplane.audit.batches``: the lines joined by newlines, zlib, ``Cp-Audit-Encoding:
  zlib``), one message per shipping pass unless it would exceed the server's ``max_payload``,
  ``Nats-Msg-Id: batch/<node>/<first line's position>..<last line's position>/<digest>``: a
  re-ship of the same lines after a crash or a failed attempt is deduplicated by JetStream
  inside the duplicate window, and readers drop any exact duplicate (same seq and hash) that
  arrives later, so a re-shipped entry never looks like tampering.
- ``<prefix>.audit._checkpoint.<node token>``: that node's signed checkpoints
  (``sessions.checkpoints``), batched the same way (stores written before batching: one per
  message, ``Nats-Msg-Id: checkpoint/<node>/<seq>``).

Four tokens for batches and checkpoints, three for a session: no session subject collides. A
session's entries are read from its subject, then from the batches stored after its first
message (``_read_session``): a headers-only scan of them, each entry batch indexing its
sessions (header ``Cp-Audit-Sessions``, ``controlplane.audit.batches.session_filter``), then
one message get per batch that may hold the session, keeping its lines. A read fetched and
decompressed every node's batches since the session began (its cost grew with the fleet's
activity); now only its own, plus the headers. Batches without the index (older stores) are
always fetched; more than ``MAX_FETCHES`` of them are streamed as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.js import api

from controlplane.audit.batches import (
    ENCODING,
    ENCODING_HEADER,
    FILTER_HEADER,
    MAX_FILTER_BITS,
    BatchError,
    batch_id,
    may_hold,
    pack,
    session_filter,
    unpack,
)
from controlplane.audit.reader import dedupe
from controlplane.audit.shipper import AuditLine
from controlplane.cluster.nats_bus import (
    NatsConnection,
    ensure_stream,
    subject_token,
    translate,
)
from controlplane.errors import Unavailable

__all__ = ["NatsAuditStream", "ReadCost"]

log = logging.getLogger(__name__)

Message = tuple[str, bytes, dict[str, str]]  # subject, payload, headers

BATCH_TOKEN: Final = "_batch"
CHECKPOINT_TOKEN: Final = "_checkpoint"
DAY_S: Final = 86_400.0
DUPLICATE_WINDOW_S: Final = 600.0
MAX_ENTRY_BYTES: Final = 1024 * 1024
HEADER_ROOM: Final = 4096 + MAX_FILTER_BITS // 6 + 4096  # headers, the filter in base64
READ_BATCH: Final = 1000
MAX_FETCHES: Final = 256  # a session read's direct gets; more: stream the batches instead
FETCH_CONCURRENCY: Final = 16
READ_WAIT_S: Final = 2.0


@dataclass(slots=True)
class ReadCost:
    """Batches a session read went through: headers seen, payloads fetched and decoded."""

    batches_seen: int = 0
    batches_fetched: int = 0


class NatsAuditStream:
    """Ships version-log lines to ``CP_AUDIT`` and reads them back."""

    def __init__(self, conn: NatsConnection) -> None:
        s = conn.settings
        self._conn = conn
        self.stream = s.nats_audit_stream
        self._prefix = f"{s.nats_subject_prefix}.audit."
        self._node = s.node_id
        self._ensured = False
        self.read_cost = ReadCost()  # what session reads cost so far (batches)

    def subject(self, session_id: str) -> str:
        return self._prefix + subject_token(session_id)

    def batch_subject(self, node: str) -> str:
        return f"{self._prefix}{BATCH_TOKEN}.{subject_token(node)}"

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
            discard=api.DiscardPolicy.NEW,  # a cap refuses new lines, never deletes old ones
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
            raise translate(f"setting up stream {self.stream}", exc) from exc
        self._ensured = True

    # -- AuditTransport ------------------------------------------------------------------
    async def ship(self, lines: Sequence[AuditLine]) -> None:
        """Publish the lines of one chunk and wait for every PubAck; raises Unavailable if any
        failed (the caller retries the whole chunk: ``Nats-Msg-Id`` makes that idempotent).
        Each session's first entry (seq 1) is its own message on the session's subject (the
        anchor); every other entry goes into this node's batches, checkpoints into their
        node's checkpoint batches (module docstring).

        Order: a failed attempt may leave some of its messages stored and others not (after
        a NATS restart: a batch stored, an anchor not); its retry stores the missing ones
        after those. So the anchors are stored (every PubAck) before any batch is published,
        and each batch before the next: a stored batch never precedes a line of its own
        chunk that comes before it in the log (a session's entry 2 before its entry 1 reads
        as a broken chain)."""
        if not self._conn.connected:  # nothing buffered in the client: the disk is the buffer
            raise Unavailable("not connected to NATS", code="nats_unavailable")
        if not self._ensured:
            await self.ensure()
        anchors, batches = await asyncio.to_thread(self._messages, lines, self._cap())
        if anchors:
            await self._publish(anchors, len(lines))
        for batch in batches:
            await self._publish([batch], len(lines))

    async def _publish(self, messages: Sequence[Message], entries: int) -> None:
        """Publish these messages at once and wait for every PubAck (``entries``: the
        chunk's, for the error)."""
        js = self._conn.js
        futures: list[asyncio.Future[api.PubAck]] = []
        try:
            for subject, data, headers in messages:
                futures.append(await js.publish_async(
                    subject, data, headers=headers, stream=self.stream,
                    wait_stall=self._conn.settings.nats_request_timeout_s,
                ))  # fmt: skip
            async with asyncio.timeout(self._conn.settings.nats_request_timeout_s):
                results = await asyncio.gather(*futures, return_exceptions=True)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise Unavailable(f"NATS: shipping {entries} audit entries failed: {exc!r}") from exc
        finally:
            for future in futures:
                future.cancel()  # no-op when done; frees the client's slot when not
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            if any(isinstance(r, nats.js.errors.NoStreamResponseError) for r in failed):
                self._ensured = False  # the stream is gone: recreate it on the next attempt
            raise Unavailable(f"NATS: {len(failed)} of {len(messages)} audit messages "
                              f"({entries} entries) were not stored: {failed[0]!r}")  # fmt: skip

    def _cap(self) -> int:
        """The largest batch payload: under the server's max_payload and the stream's limit,
        leaving room for the headers."""
        limit = min(self._conn.client.max_payload or MAX_ENTRY_BYTES, MAX_ENTRY_BYTES)
        return max(limit - HEADER_ROOM, 1024)

    def _messages(
        self, lines: Sequence[AuditLine], cap: int
    ) -> tuple[list[Message], list[Message]]:
        """(subject, payload, headers) of every message of a chunk: the anchors, then the
        batches in order (worker thread: compression)."""
        out: list[Message] = []
        batches: list[Message] = []
        batched: dict[str, list[AuditLine]] = {}  # subject -> lines, in order
        for line in lines:
            if line.node is not None:
                batched.setdefault(self.checkpoint_subject(line.node), []).append(line)
            elif line.seq == 1:  # the anchor: has_trail and session reads start from it
                headers = {"Nats-Msg-Id": f"{line.session_id}:{line.seq}"}
                out.append((self.subject(line.session_id), line.data, headers))
            else:
                batched.setdefault(self.batch_subject(self._node), []).append(line)
        for subject, group in batched.items():
            node = group[0].node or self._node
            for payload, start, end in pack([ln.data for ln in group], cap):
                first, last = group[start].origin, group[end - 1].origin
                headers = {"Nats-Msg-Id": batch_id(node, first, last, payload),
                           ENCODING_HEADER: ENCODING}  # fmt: skip
                if group[0].node is None:  # entries: the index of their sessions
                    ids = {ln.session_id for ln in group[start:end]}
                    headers[FILTER_HEADER] = session_filter(ids)
                batches.append((subject, payload, headers))
        return out, batches

    # -- readers -------------------------------------------------------------------------
    async def has_trail(self, session_id: str) -> bool:
        """Whether the stream holds any entry of this session (one request: the last message
        of its subject, which holds its first entry)."""
        try:
            await self._conn.js.get_last_msg(self.stream, self.subject(session_id))
        except nats.js.errors.NotFoundError:
            return False  # no such message (or no stream yet: no trail either)
        except nats.errors.Error as exc:
            raise translate(f"reading {self.stream}", exc) from exc
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
        checkpoint; from ``since`` on by stream time) to ``sink``, in stream order (the lines of
        a batch in their order); returns how many."""
        if session_id is not None:
            return await self._read_session(sink, session_id)
        subject = f"{self._prefix}{CHECKPOINT_TOKEN}.>" if checkpoints else self._prefix + ">"
        count = 0

        def each(_seq: int, lines: list[bytes]) -> None:
            nonlocal count
            for line in lines:
                sink(line)
                count += 1

        await self._scan(subject, each, since=since)
        return count

    async def _read_session(self, sink: Callable[[bytes], None], session_id: str) -> int:
        """The session's own subject (its first entry; every entry in stores written before
        batching), then its lines in the batches stored after its first message: their
        headers only, and the payloads whose filter may hold the session (module docstring)."""
        found: list[tuple[int, int, bytes]] = []

        def own(seq: int, lines: list[bytes]) -> None:
            found.extend((seq, i, line) for i, line in enumerate(lines))

        await self._scan(self.subject(session_id), own)
        if found:
            needles = {json.dumps(session_id)[1:-1].encode(), session_id.encode()}

            def batched(seq: int, lines: list[bytes]) -> None:
                for i, line in enumerate(lines):
                    if (
                        any(n in line for n in needles)
                        and _row(line).get("session_id") == session_id
                    ):
                        found.append((seq, i, line))

            start = min(seq for seq, _, _ in found)
            batches = f"{self._prefix}{BATCH_TOKEN}.>"
            candidates: list[int] = []

            def indexed(seq: int, headers: dict[str, str] | None) -> None:
                self.read_cost.batches_seen += 1
                if may_hold(headers, session_id):
                    candidates.append(seq)

            await self._scan_messages(batches, indexed, start_seq=start, headers_only=True)
            if len(candidates) > MAX_FETCHES:  # mostly unindexed (an older store): stream them
                self.read_cost.batches_fetched += len(candidates)
                await self._scan(batches, batched, start_seq=start)
            else:
                await self._fetch(candidates, batched)
        found.sort(key=lambda item: (item[0], item[1]))
        for _, _, line in found:
            sink(line)
        return len(found)

    async def _fetch(self, seqs: Sequence[int], each: Callable[[int, list[bytes]], None]) -> None:
        """``each(seq, lines)`` of the messages at these stream sequences (direct gets, a few
        at a time)."""
        js = self._conn.js
        for i in range(0, len(seqs), FETCH_CONCURRENCY):
            part = seqs[i : i + FETCH_CONCURRENCY]
            try:
                msgs = await asyncio.gather(*(js.get_msg(self.stream, seq) for seq in part))
            except nats.errors.Error as exc:
                raise translate(f"reading {self.stream}", exc) from exc
            self.read_cost.batches_fetched += len(msgs)
            for seq, lines in await asyncio.to_thread(self._decode_raw, part, msgs):
                each(seq, lines)

    def _decode_raw(
        self, seqs: Sequence[int], msgs: Sequence[Any]
    ) -> list[tuple[int, list[bytes]]]:
        return [(seq, self._lines(seq, msg.data or b"", msg.headers))
                for seq, msg in zip(seqs, msgs, strict=True)]  # fmt: skip

    async def _scan(
        self,
        subject: str,
        each: Callable[[int, list[bytes]], None],
        *,
        since: float | None = None,
        start_seq: int | None = None,
    ) -> None:
        """``each(stream seq, lines)`` for every message on ``subject``, in stream order. A
        message that is not a readable batch gives one empty line (verification then names it
        as malformed)."""
        pending: list[tuple[int, bytes, dict[str, str] | None]] = []

        def keep(seq: int, headers: dict[str, str] | None, data: bytes) -> None:
            pending.append((seq, data, headers))

        async def drain() -> None:
            batch, pending[:] = list(pending), []
            for seq, lines in await asyncio.to_thread(self._decode, batch):  # zlib: off the loop
                each(seq, lines)

        await self._scan_messages(subject, keep, since=since, start_seq=start_seq,
                                  after_fetch=drain)  # fmt: skip

    async def _scan_messages(
        self,
        subject: str,
        each: Callable[..., None],
        *,
        since: float | None = None,
        start_seq: int | None = None,
        headers_only: bool = False,
        after_fetch: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``each(stream seq, headers)`` (``headers_only``) or ``each(stream seq, headers,
        data)`` for every message on ``subject``, in stream order; ``after_fetch`` after each
        fetch. A temporary consumer, deleted after."""
        if start_seq is not None:
            policy, start_time = api.DeliverPolicy.BY_START_SEQUENCE, None
        elif since is not None:
            policy = api.DeliverPolicy.BY_START_TIME
            start_time = dt.datetime.fromtimestamp(since, dt.UTC)
        else:
            policy, start_time = api.DeliverPolicy.ALL, None
        config = api.ConsumerConfig(
            name=f"cp-audit-read-{uuid.uuid4().hex[:16]}",
            deliver_policy=policy,
            opt_start_seq=start_seq,
            opt_start_time=start_time,
            ack_policy=api.AckPolicy.NONE,
            filter_subject=subject,
            replay_policy=api.ReplayPolicy.INSTANT,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
            headers_only=headers_only or None,
        )  # fmt: skip
        js = self._conn.js
        try:
            sub = await js.pull_subscribe(subject, stream=self.stream, config=config)
        except nats.js.errors.NotFoundError as exc:
            raise Unavailable(f"NATS: stream {self.stream} does not exist") from exc
        except nats.errors.Error as exc:
            raise translate(f"reading {self.stream}", exc) from exc
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
                    seq = msg.metadata.sequence.stream
                    if headers_only:
                        each(seq, msg.headers)
                    else:
                        each(seq, msg.headers, msg.data)
                if after_fetch is not None:
                    await after_fetch()
                remaining = msgs[-1].metadata.num_pending
        except nats.errors.Error as exc:
            raise translate(f"reading {self.stream}", exc) from exc
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await js.delete_consumer(self.stream, config.name or "")

    def _decode(
        self, msgs: Sequence[tuple[int, bytes, dict[str, str] | None]]
    ) -> list[tuple[int, list[bytes]]]:
        return [(seq, self._lines(seq, data, headers)) for seq, data, headers in msgs]

    def _lines(self, seq: int, data: bytes, headers: dict[str, str] | None) -> list[bytes]:
        try:
            return unpack(data, headers)
        except BatchError as exc:
            log.warning("%s: message %d: %s", self.stream, seq, exc)
            return [b""]

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
