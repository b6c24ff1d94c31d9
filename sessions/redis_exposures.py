"""Experiment exposures in Redis (distributed mode; see ``sessions.exposures``).

Keys (``p`` = prefix, default ``cp:``)::

    p exposures:<experiment>         hash: "<iteration>/<session id>" -> JSON row
    p exposure-counts:<experiment>   hash: "<iteration>/<variant>" -> exposed sessions
    p exposed:<experiment>           hash: "<iteration>/<session id>" -> variant (counted)

``save`` writes a whole batch in one pipeline (one round trip per flush, never per session);
a row is only ever written by the replica holding its session, so an upsert is safe. A count
is idempotent: an exposure is counted only when its ``exposed`` mark is new (one script per
experiment in the pipeline), so the flush's retry of a batch Redis already applied (a save
that raised after Redis ran it) counts nothing twice. Redis errors become
``BackendUnavailable`` here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sessions.errors import BackendUnavailable
from sessions.exposures import Exposure
from sessions.redis_registry import redis_client

__all__ = ["RedisExposureStore"]


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


# KEYS: the experiment's marks, its counts; ARGV: (mark field, variant, count field) triples
_COUNT_ONCE = """
for i = 1, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[i + 2], 1)
  end
end
return 0
"""


class RedisExposureStore:
    def __init__(self, url: str, *, prefix: str = "cp:") -> None:
        self._client: Redis = redis_client(url)
        self._p = prefix

    async def start(self) -> None:
        return None

    async def save(self, rows: Sequence[Exposure], exposed: Sequence[Exposure]) -> None:
        if not rows and not exposed:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.hset(
                        f"{self._p}exposures:{row.experiment}",
                        f"{row.iteration}/{row.session_id}",
                        json.dumps(row.document(), separators=(",", ":")),
                    )
                marks: dict[str, list[str]] = {}
                for row in exposed:
                    marks.setdefault(row.experiment, []).extend((
                        f"{row.iteration}/{row.session_id}", row.variant,
                        f"{row.iteration}/{row.variant}",
                    ))  # fmt: skip
                for experiment, args in marks.items():  # (the script is a few dozen bytes)
                    marked = f"{self._p}exposed:{experiment}"
                    pipe.eval(_COUNT_ONCE, 2, marked, f"{self._p}exposure-counts:{experiment}",
                              *args)  # fmt: skip
                await pipe.execute()
        except RedisError as exc:
            raise BackendUnavailable(f"redis exposures: save failed: {exc}") from exc

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

    async def close(self) -> None:
        await self._client.aclose()
