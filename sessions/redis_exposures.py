"""Experiment exposures in Redis (distributed mode; see ``sessions.exposures``).

Keys (``p`` = prefix, default ``cp:``)::

    p exposures:<experiment>         hash: "<iteration>/<session id>" -> JSON row
    p exposure-counts:<experiment>   hash: "<iteration>/<variant>" -> exposed calls
    p exposed:<experiment>           hash: "<iteration>/<call id>" -> "<variant>/<session id>"
    p exposure-times:<experiment>    hash: "<iteration>/<bin start>/<variant>" -> exposed calls

``save`` reads the batch's stored rows (one HMGET per experiment, one round trip) so a
session id registered again keeps its first exposure (``keep_first``), then writes the whole
batch: one script per experiment, in one pipeline: two round trips per flush, never one per
session. A row is only ever written by the replica holding its session, so an upsert is safe.
A count is idempotent and per call: an exposure is counted (and binned) only when its call's
``exposed`` mark is new, so the flush's retry of a batch Redis already applied (a save that
raised after Redis ran it) counts nothing twice, and a resumed session of a counted call
(same call id) counts nothing. The mark names the session whose exposure it counted, and the
script writes the rows, the marks, the counts and the bins of an experiment at once (atomic:
no reader sees a row without its mark): ``rows`` reads rows and marks in one MULTI and sets
each row's ``counted`` from its call's mark, so the export's ``counted`` column is the
decision the counts hold whichever replica's flush came first. Marks written before they
named the session (a variant alone; before that, keyed by session id) leave those calls to
``decide``. Redis errors become ``BackendUnavailable`` here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sessions.errors import BackendUnavailable
from sessions.exposures import Exposure, decide, keep_first, time_bin
from sessions.redis_registry import redis_client

__all__ = ["RedisExposureStore"]


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


# KEYS: the experiment's rows, marks, counts, time bins; ARGV: the number of rows, then
# (row field, JSON row) per row, then (mark field, mark, count field, bin field) per exposure;
# answers 1 per exposure it counted, else 0. One script: the rows and what counts them change
# together (a MULTI cannot make the count depend on the mark)
_SAVE = """
local rows = tonumber(ARGV[1])
for i = 2, 2 * rows, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local counted = {}
for i = 2 * rows + 2, #ARGV, 4 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('HINCRBY', KEYS[3], ARGV[i + 2], 1)
    redis.call('HINCRBY', KEYS[4], ARGV[i + 3], 1)
    counted[#counted + 1] = 1
  else
    counted[#counted + 1] = 0
  end
end
return counted
"""


class RedisExposureStore:
    def __init__(self, url: str, *, prefix: str = "cp:") -> None:
        self._client: Redis = redis_client(url)
        self._p = prefix

    async def start(self) -> None:
        return None

    async def save(self, rows: Sequence[Exposure], exposed: Sequence[Exposure]) -> list[Exposure]:
        if not rows and not exposed:
            return []
        writes: dict[str, list[str]] = {}
        marks: dict[str, list[str]] = {}
        batches: dict[str, list[Exposure]] = {}
        try:
            await self._keep_first(rows)
            for row in rows:
                writes.setdefault(row.experiment, []).extend((
                    f"{row.iteration}/{row.session_id}",
                    json.dumps(row.document(), separators=(",", ":")),
                ))  # fmt: skip
            for row in exposed:
                at = row.exposed_at if row.exposed_at is not None else row.first_assigned_at
                marks.setdefault(row.experiment, []).extend((
                    f"{row.iteration}/{row.call}", f"{row.variant}/{row.session_id}",
                    f"{row.iteration}/{row.variant}",
                    f"{row.iteration}/{time_bin(at)}/{row.variant}",
                ))  # fmt: skip
                batches.setdefault(row.experiment, []).append(row)
            experiments = list(dict.fromkeys((*writes, *marks)))
            async with self._client.pipeline(transaction=False) as pipe:
                for experiment in experiments:
                    args = writes.get(experiment, [])
                    pipe.eval(_SAVE, 4, f"{self._p}exposures:{experiment}",
                              f"{self._p}exposed:{experiment}",
                              f"{self._p}exposure-counts:{experiment}",
                              f"{self._p}exposure-times:{experiment}",
                              len(args) // 2, *args, *marks.get(experiment, []))  # fmt: skip
                answers = dict(zip(experiments, await pipe.execute(), strict=True))
        except RedisError as exc:
            raise BackendUnavailable(f"redis exposures: save failed: {exc}") from exc
        counted: list[Exposure] = []
        for experiment, batch in batches.items():
            for row, flag in zip(batch, answers[experiment], strict=True):
                if flag:
                    row.counted = True
                    counted.append(row)
        return counted

    async def _keep_first(self, rows: Sequence[Exposure]) -> None:
        """The batch's rows completed with their stored rows (one HMGET per experiment, in
        one round trip): a session id registered again keeps its first exposure."""
        batches: dict[str, list[Exposure]] = {}
        for row in rows:
            batches.setdefault(row.experiment, []).append(row)
        async with self._client.pipeline(transaction=False) as pipe:
            for experiment, batch in batches.items():
                pipe.hmget(f"{self._p}exposures:{experiment}",
                           [f"{r.iteration}/{r.session_id}" for r in batch])  # fmt: skip
            stored = await pipe.execute()
        for batch, found in zip(batches.values(), stored, strict=True):
            for row, raw in zip(batch, found, strict=True):
                if raw is not None:
                    keep_first(row, Exposure.from_document(json.loads(_text(raw))))

    async def rows(self, experiment: str) -> list[Exposure]:
        """Every row of ``experiment``, each with ``counted`` as its call's mark says (rows and
        marks read in one MULTI: a snapshot the save script never splits)."""
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(f"{self._p}exposures:{experiment}")
                pipe.hgetall(f"{self._p}exposed:{experiment}")
                raw, marks = await pipe.execute()
        except RedisError as exc:
            raise BackendUnavailable(f"redis exposures: read failed: {exc}") from exc
        counted: dict[str, str] = {}  # "<iteration>/<call>" -> the counted session's id
        for field, value in marks.items():
            _, slash, session = _text(value).partition("/")
            if slash:  # (a mark of an older version names the variant alone)
                counted[_text(field)] = session
        out = [Exposure.from_document(json.loads(_text(v))) for v in raw.values()]
        for row in out:
            which = counted.get(f"{row.iteration}/{row.call}")
            row.counted = None if which is None else which == row.session_id
        decide(out)
        return out

    async def counts(self, experiment: str, iteration: int) -> dict[str, int]:
        try:
            raw = await self._client.hgetall(f"{self._p}exposure-counts:{experiment}")
        except RedisError as exc:
            raise BackendUnavailable(f"redis exposures: read failed: {exc}") from exc
        out: dict[str, int] = {}
        for k, v in raw.items():
            it, _, variant = _text(k).partition("/")
            if it == str(iteration):
                out[variant] = int(_text(v))
        return out

    async def timeline(self, experiment: str, iteration: int) -> dict[str, dict[int, int]]:
        try:
            raw = await self._client.hgetall(f"{self._p}exposure-times:{experiment}")
        except RedisError as exc:
            raise BackendUnavailable(f"redis exposures: read failed: {exc}") from exc
        out: dict[str, dict[int, int]] = {}
        for k, v in raw.items():
            it, _, rest = _text(k).partition("/")
            start, _, variant = rest.partition("/")
            if it == str(iteration) and start.lstrip("-").isdigit():
                bins = out.setdefault(variant, {})
                bins[int(start)] = bins.get(int(start), 0) + int(_text(v))
        return out

    async def close(self) -> None:
        await self._client.aclose()
