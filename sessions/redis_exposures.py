"""Experiment exposures in Redis (distributed mode; see ``sessions.exposures``).

Keys (``p`` = prefix, default ``cp:``)::

    p exposures:<experiment>         hash: "<iteration>/<session id>" -> JSON row
    p exposure-counts:<experiment>   hash: "<iteration>/<variant>" -> exposed calls
    p exposed:<experiment>           hash: "<iteration>/<call id>" -> variant (counted)
    p exposure-times:<experiment>    hash: "<iteration>/<bin start>/<variant>" -> exposed calls

``save`` reads the batch's stored rows (one HMGET per experiment, one round trip) so a
session id registered again keeps its first exposure (``keep_first``), then writes the whole
batch in one pipeline: two round trips per flush, never one per session. A row is only ever
written by the replica holding its session, so an upsert is safe. A count
is idempotent and per call: an exposure is counted (and binned) only when its call's
``exposed`` mark is new (one script per experiment in the pipeline), so the flush's retry of
a batch Redis already applied (a save that raised after Redis ran it) counts nothing twice,
and a resumed session of a counted call (same call id) counts nothing. Marks written before
calls were counted name the session id, which is its call's id for a call's first session.
Redis errors become ``BackendUnavailable`` here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sessions.errors import BackendUnavailable
from sessions.exposures import Exposure, keep_first, time_bin
from sessions.redis_registry import redis_client

__all__ = ["RedisExposureStore"]


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


# KEYS: the experiment's marks, counts, time bins; ARGV: (mark field, variant, count field,
# bin field) per exposure; answers 1 per exposure it counted, else 0
_COUNT_ONCE = """
local counted = {}
for i = 1, #ARGV, 4 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[i + 2], 1)
    redis.call('HINCRBY', KEYS[3], ARGV[i + 3], 1)
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
        marks: dict[str, list[str]] = {}
        batches: dict[str, list[Exposure]] = {}
        for row in exposed:
            at = row.exposed_at if row.exposed_at is not None else row.first_assigned_at
            marks.setdefault(row.experiment, []).extend((
                f"{row.iteration}/{row.call}", row.variant, f"{row.iteration}/{row.variant}",
                f"{row.iteration}/{time_bin(at)}/{row.variant}",
            ))  # fmt: skip
            batches.setdefault(row.experiment, []).append(row)
        try:
            await self._keep_first(rows)
            async with self._client.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.hset(
                        f"{self._p}exposures:{row.experiment}",
                        f"{row.iteration}/{row.session_id}",
                        json.dumps(row.document(), separators=(",", ":")),
                    )
                for experiment, args in marks.items():  # (the script is a few dozen bytes)
                    pipe.eval(_COUNT_ONCE, 3, f"{self._p}exposed:{experiment}",
                              f"{self._p}exposure-counts:{experiment}",
                              f"{self._p}exposure-times:{experiment}", *args)  # fmt: skip
                answers = await pipe.execute()
        except RedisError as exc:
            raise BackendUnavailable(f"redis exposures: save failed: {exc}") from exc
        counted: list[Exposure] = []
        for experiment, flags in zip(batches, answers[len(rows) :], strict=True):
            counted += [row for row, flag in zip(batches[experiment], flags, strict=True) if flag]
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
        try:
            raw = await self._client.hgetall(f"{self._p}exposures:{experiment}")
        except RedisError as exc:
            raise BackendUnavailable(f"redis exposures: read failed: {exc}") from exc
        return [Exposure.from_document(json.loads(_text(v))) for v in raw.values()]

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
