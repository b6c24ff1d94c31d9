"""Experiment exposures: which session first ran which variant, when, and when it left.

An exposure is kept per (experiment key, iteration, session id) for ever: a session leaving
the experiment (a ramp-down, a relabel, a retire) gets ``left_at``, it is never deleted. Rows
are written by the replica holding the session, in batches (``save``: one write per flush,
never a round trip per session), to a store shared by the replicas that answer summaries:

- :class:`FileExposureStore` (embedded mode): rows in memory, appended as JSON lines to
  ``<data_dir>/experiments/exposures.jsonl`` (the last line of a row wins on load);
- ``sessions.redis_exposures.RedisExposureStore`` (distributed mode).

The proof of an exposure is the session's hash-chained version log (docs/experiments.md):
these rows are an index over it, written by the same call that appends the entry.

Counts are per **call** (``call_id``: the session's ``bucket_key``, the call's first session
id; a Voice Agent call resumed through the gateway is a second session of the same call, in
the same arm): the first exposure of a call in an iteration counts, in its variant, and adds
one to the exposures-over-time histogram (``BIN_S`` bins); a resumed session's exposure keeps
its own row, counted nowhere. The store decides, once, which exposure counts (``save`` returns
them), so the summary, the SRM check and the chart read the same increments at any size, and
keeps that decision with the rows (``Exposure.counted``, as ``rows`` answers them): the export's
``counted`` column is the store's decision, never re-made by another rule (two sessions of one
call exposed at nearly the same moment on two replicas are saved in either order).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from sessions.config_at import LATE_ANSWER

__all__ = [
    "BIN_S",
    "RUNNING_STATUSES",
    "Exposure",
    "ExposureStore",
    "FileExposureStore",
    "counted_keys",
    "decide",
    "exposure_problem",
    "keep_first",
    "time_bin",
]

BIN_S: Final = 60  # the exposures-over-time histogram's bin, seconds


def time_bin(at: float) -> int:
    """The start (Unix seconds) of the histogram bin holding instant ``at``."""
    return int(at // BIN_S) * BIN_S


@dataclass(slots=True)
class Exposure:
    experiment: str
    iteration: int
    session_id: str
    variant: str
    policy: str
    version: int
    digest: str | None
    first_assigned_at: float
    exposed_at: float | None = None
    left_at: float | None = None
    ended_at: float | None = None  # the session ended (its rows stay)
    # the version-log entry (seq, hash) that exposed the session / that it left by
    exposed_seq: int | None = None
    exposed_hash: str | None = None
    left_seq: int | None = None
    upstream_session_id: str | None = None
    kind: str = ""
    model: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    call_id: str = ""  # the call's first session id (bucket_key); "": the session itself
    # the store counted this exposure (its call's counted one); None: not known (a row the
    # store wrote before it kept its decision: ``decide`` tells it from the exposures)
    counted: bool | None = None

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.experiment, self.iteration, self.session_id)

    @property
    def call(self) -> str:
        return self.call_id or self.session_id

    @property
    def mark(self) -> tuple[str, int, str]:
        """What is counted once: the call, per experiment and iteration."""
        return (self.experiment, self.iteration, self.call)

    def document(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment, "iteration": self.iteration,
            "session_id": self.session_id, "variant": self.variant, "policy": self.policy,
            "version": self.version, "digest": self.digest,
            "first_assigned_at": self.first_assigned_at, "exposed_at": self.exposed_at,
            "left_at": self.left_at, "ended_at": self.ended_at,
            "exposed_seq": self.exposed_seq, "exposed_hash": self.exposed_hash,
            "left_seq": self.left_seq,
            "upstream_session_id": self.upstream_session_id,
            "kind": self.kind, "model": self.model, "labels": dict(self.labels),
            "call_id": self.call, "counted": self.counted,
        }  # fmt: skip

    @classmethod
    def from_document(cls, raw: Mapping[str, Any]) -> Exposure:
        def opt_float(name: str) -> float | None:
            value = raw.get(name)
            return None if value is None else float(value)

        def opt_int(name: str) -> int | None:
            value = raw.get(name)
            return None if value is None else int(value)

        def opt_str(name: str) -> str | None:
            value = raw.get(name)
            return None if value is None else str(value)

        digest, upstream = raw.get("digest"), raw.get("upstream_session_id")
        counted = raw.get("counted")
        return cls(
            experiment=str(raw["experiment"]), iteration=int(raw["iteration"]),
            session_id=str(raw["session_id"]), variant=str(raw["variant"]),
            policy=str(raw["policy"]), version=int(raw["version"]),
            digest=None if digest is None else str(digest),
            first_assigned_at=float(raw["first_assigned_at"]),
            exposed_at=opt_float("exposed_at"), left_at=opt_float("left_at"),
            ended_at=opt_float("ended_at"),
            exposed_seq=opt_int("exposed_seq"), exposed_hash=opt_str("exposed_hash"),
            left_seq=opt_int("left_seq"),
            upstream_session_id=None if upstream is None else str(upstream),
            kind=str(raw.get("kind", "")), model=str(raw.get("model", "")),
            labels={str(k): str(v) for k, v in dict(raw.get("labels") or {}).items()},
            call_id=str(raw.get("call_id") or raw["session_id"]),
            counted=None if counted is None else bool(counted),
        )  # fmt: skip


def _order(row: Exposure) -> tuple[float, str]:
    return (row.exposed_at if row.exposed_at is not None else float("inf"), row.session_id)


def counted_keys(rows: Iterable[Exposure]) -> set[tuple[str, int, str]]:
    """The keys of the rows that count: per (experiment, iteration, call), its earliest
    exposure (ties: the lower session id). Sessions that left still count."""
    first: dict[tuple[str, int, str], Exposure] = {}
    for row in rows:
        if row.exposed_at is None:
            continue
        seen = first.get(row.mark)
        if seen is None or _order(row) < _order(seen):
            first[row.mark] = row
    return {row.key for row in first.values()}


def decide(rows: Iterable[Exposure]) -> None:
    """Set ``counted`` on the rows whose store did not record its decision (None: written
    before stores kept it): a call with a row recorded counted keeps it; a call without one
    counts its earliest exposure among those rows (``counted_keys``, the rule they were
    counted by then)."""
    rows = list(rows)
    decided = {row.mark for row in rows if row.counted}
    unknown = [row for row in rows if row.counted is None]
    first = counted_keys(row for row in unknown if row.mark not in decided)
    for row in unknown:
        row.counted = row.key in first


_FIRST_EXPOSURE = ("exposed_at", "exposed_seq", "exposed_hash", "variant", "policy", "version",
                   "digest", "counted")  # fmt: skip


def keep_first(row: Exposure, stored: Exposure | None) -> Exposure:
    """``row`` completed with what ``stored`` (the same key's row as stored) proves earlier:
    its first assignment and its first exposure stand. A session id registered again after
    its session ended (a control-channel app reconnecting) is a new live session whose row
    starts unexposed: written as it is, it replaced the first exposure (kept for ever, with
    the entry that proves it) by the later one. Updates ``row`` in place (the caller's live
    row then carries the first exposure too) and answers it."""
    if stored is None or stored is row:
        return row
    row.first_assigned_at = min(row.first_assigned_at, stored.first_assigned_at)
    if stored.exposed_at is not None and (row.exposed_at is None
                                          or stored.exposed_at < row.exposed_at):  # fmt: skip
        for name in _FIRST_EXPOSURE:
            setattr(row, name, getattr(stored, name))
    return row


class ExposureStore(Protocol):
    async def start(self) -> None: ...

    async def save(self, rows: Sequence[Exposure], exposed: Sequence[Exposure]) -> list[Exposure]:
        """Upsert ``rows`` (whole rows; the holding replica is their only writer; each
        completed by ``keep_first`` with the stored row of its key) and count ``exposed``
        (rows exposed for the first time, a subset of ``rows``) whose call is not counted yet
        in that iteration; answer the rows it counted."""
        ...

    async def rows(self, experiment: str) -> list[Exposure]: ...

    async def counts(self, experiment: str, iteration: int) -> dict[str, int]:
        """Counted exposures (calls) per variant."""
        ...

    async def timeline(self, experiment: str, iteration: int) -> dict[str, dict[int, int]]:
        """Counted exposures per variant per ``BIN_S`` bin (its start, Unix seconds)."""
        ...

    async def close(self) -> None: ...


class FileExposureStore:
    """Embedded mode: rows in memory, appended to a JSON-lines file (``path`` None: memory)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._rows: dict[tuple[str, int, str], Exposure] = {}
        self._counts: dict[tuple[str, int, str], int] = {}
        self._marks: set[tuple[str, int, str]] = set()  # the counted calls
        self._times: dict[tuple[str, int, str], dict[int, int]] = {}

    async def start(self) -> None:
        if self._path is None or not self._path.exists():
            return
        text = await asyncio.to_thread(self._path.read_text, "utf-8")
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                row = Exposure.from_document(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line (crash mid-append): the row is written again
            self._rows[row.key] = row
        decide(self._rows.values())
        for row in self._rows.values():
            if row.counted:
                self._count(row)

    def _count(self, row: Exposure) -> bool:
        if row.mark in self._marks:
            return False  # a resumed session of a counted call, or a batch saved again
        self._marks.add(row.mark)
        ckey = (row.experiment, row.iteration, row.variant)
        self._counts[ckey] = self._counts.get(ckey, 0) + 1
        bins = self._times.setdefault(ckey, {})
        at = time_bin(row.exposed_at if row.exposed_at is not None else row.first_assigned_at)
        bins[at] = bins.get(at, 0) + 1
        return True

    async def save(self, rows: Sequence[Exposure], exposed: Sequence[Exposure]) -> list[Exposure]:
        for row in rows:
            keep_first(row, self._rows.get(row.key))
        # decided before the rows are written, so each line says whether its row counts (the
        # decision read back at start, not re-made by another rule)
        counted: list[Exposure] = []
        marks: set[tuple[str, int, str]] = set()
        for row in exposed:
            if row.mark not in self._marks and row.mark not in marks:
                marks.add(row.mark)
                counted.append(row)
                row.counted = True
        for row in rows:
            if row.counted is None:
                row.counted = False
        if self._path is not None and rows:
            text = "".join(json.dumps(r.document(), separators=(",", ":")) + "\n" for r in rows)
            await asyncio.to_thread(self._append, self._path, text)
        for row in rows:
            self._rows[row.key] = row
        for row in counted:
            self._count(row)
        return counted

    @staticmethod
    def _append(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()

    async def rows(self, experiment: str) -> list[Exposure]:
        return [r for r in self._rows.values() if r.experiment == experiment]

    async def counts(self, experiment: str, iteration: int) -> dict[str, int]:
        return {
            variant: n
            for (key, it, variant), n in self._counts.items()
            if key == experiment and it == iteration
        }

    async def timeline(self, experiment: str, iteration: int) -> dict[str, dict[int, int]]:
        return {
            variant: dict(bins)
            for (key, it, variant), bins in self._times.items()
            if key == experiment and it == iteration
        }

    async def close(self) -> None:
        return None


RUNNING_STATUSES = ("sent", "acked", "unchanged", "unverified")


def exposure_problem(row: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the exposure ``row`` (an export row) is not backed by the session's version log
    ``entries`` (verified by ``audit verify``), or None: the entry at ``exposed_seq`` has the
    recorded hash, names the experiment's policy version and variant, with a status that runs
    it and a cause that can (not a client's own update, not an ``upstream`` doubt; an
    ``unverified`` answer only without an error, or a late answer); none before it names that
    variant with such a status (for ``sent``/``unverified``, which expose only on some
    transports, the entry is taken on the row's word)."""
    seq = row.get("exposed_seq")
    if seq is None:
        return "no exposure recorded" if row.get("exposed_at") else None
    at = {int(e["seq"]): e for e in entries}.get(int(seq))
    if at is None:
        return f"no log entry with seq {seq}"
    if at.get("hash") != row.get("exposed_hash"):
        return (
            f"log entry {seq} has hash {at.get('hash')!r}, the exposure {row.get('exposed_hash')!r}"
        )
    want = (row.get("policy"), row.get("variant"))
    if not any((p.get("id"), p.get("variant")) == want for p in at.get("policies") or []):
        return f"log entry {seq} does not name {want[0]} variant {want[1]}"
    if at.get("status") not in RUNNING_STATUSES:
        return f"log entry {seq} has status {at.get('status')!r}: not a configuration run"
    if at.get("cause") in ("client", "upstream"):  # a client's own update, a doubt
        return f"log entry {seq} has cause {at.get('cause')!r}: it never exposes"
    error = at.get("error")
    if at.get("status") == "unverified" and error and not str(error).startswith(LATE_ANSWER):
        return f"log entry {seq} is unverified ({error}): not known to run"
    return None
