"""Redis backend of the version log (the shared "recent log" of DESIGN §5).

Keys (``p`` = prefix, default ``cp:``): ``p log:<session_id>`` is a list of the session's
entries in append order, each the same line the file backend writes (without the newline);
``p logs`` is the set of session ids that have a log.

A flush is one pipeline: one Lua call per ~5,000 entries appends every buffered entry and is
idempotent (a list that already holds an entry's seq skips it), so retrying a flush whose
reply was lost never duplicates entries. Tails are rebuilt lazily: ``append()`` never
awaits, so for a session this process has not seen it chains from the genesis hash, and the
next flush reads the stored tails of such sessions (one pipelined ``LINDEX -1`` each) and
re-chains their pending entries onto them before writing. ``prepare(ids)`` loads tails ahead
of time so that ``append()`` returns the final seq and hash for sessions continuing here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sessions.clock import Clock
from sessions.errors import BackendUnavailable
from sessions.redis_registry import redis_client
from sessions.versionlog.core import (
    BufferedVersionLog,
    LogEntry,
    Pending,
    VerifyReport,
    parse_entries,
    reseal,
    verify_entries,
)

__all__ = ["RedisVersionLog"]

_SCRIPT_ENTRIES: Final = 5_000
_VERIFY_BATCH: Final = 100

# KEYS[1]: index set; KEYS[2..]: one list per session.
# ARGV, per session: session id, seq of its first entry, entry count, the entry lines.
_APPEND_LUA: Final = """
local a = 1
for k = 2, #KEYS do
  local sid, first, n = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local skip = redis.call('LLEN', KEYS[k]) - first + 1
  if skip < 0 then skip = 0 end
  for j = a + skip, a + n - 1 do redis.call('RPUSH', KEYS[k], ARGV[j]) end
  a = a + n
  redis.call('SADD', KEYS[1], sid)
end
return 1
"""


@contextmanager
def _translate(what: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise BackendUnavailable(f"redis version log: {what} failed: {exc}") from exc


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _row(raw: bytes | str) -> dict[str, Any]:
    try:
        row = json.loads(raw)
    except ValueError:
        return {}  # not JSON: verify reports it as malformed
    return row if isinstance(row, dict) else {}


class RedisVersionLog(BufferedVersionLog):
    """Version log in Redis lists. ``url_or_client``: a URL (the log owns and closes the
    client) or a ``redis.asyncio.Redis`` (the caller owns it)."""

    def __init__(
        self,
        url_or_client: str | Redis,
        clock: Clock,
        *,
        prefix: str = "cp:",
        flush_interval_s: float | None = 0.05,
    ) -> None:
        super().__init__(clock, flush_interval_s=flush_interval_s)
        if isinstance(url_or_client, str):
            self._client = redis_client(url_or_client)
            self._owns_client = True
        else:
            self._client = url_or_client
            self._owns_client = False
        self._prefix = prefix
        self._index = f"{prefix}logs"
        self._confirmed: set[str] = set()  # sessions whose in-memory tail matches Redis
        self._append_script = self._client.register_script(_APPEND_LUA)

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}log:{session_id}"

    async def prepare(self, session_ids: Iterable[str]) -> None:
        async with self._lock:
            await self._settle()
            unknown = [s for s in dict.fromkeys(session_ids) if s not in self._confirmed]
            if unknown:
                with _translate("prepare"):
                    await self._adopt_tails(unknown, [])

    def forget(self, session_id: str) -> None:
        super().forget(session_id)
        self._confirmed.discard(session_id)

    async def _adopt_tails(self, session_ids: list[str], batch: list[Pending]) -> None:
        """Read the stored tails and re-chain pending entries of these sessions onto them."""
        async with self._client.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.lindex(self._key(sid), -1)
            raws = await pipe.execute()
        for sid, raw in zip(session_ids, raws, strict=True):
            if raw is not None:
                last = _row(raw)
                stored = (int(last.get("seq", 0)), str(last.get("hash", "")))
                if self._tails.get(sid) != stored:
                    tail = reseal(batch, sid, stored)
                    self._tails[sid] = reseal(self._buffer, sid, tail)
            self._confirmed.add(sid)

    async def _write(self, batch: list[Pending]) -> None:
        groups: dict[str, list[Pending]] = {}
        for item in batch:
            groups.setdefault(item.session_id, []).append(item)
        with _translate("flush"):
            unknown = [sid for sid in groups if sid not in self._confirmed]
            if unknown:
                await self._adopt_tails(unknown, batch)
            async with self._client.pipeline(transaction=False) as pipe:
                keys: list[str] = [self._index]
                args: list[Any] = []
                for sid, items in groups.items():
                    keys.append(self._key(sid))
                    args += [sid, items[0].seq, len(items)]
                    args += [item.line[:-1] for item in items]
                    if len(args) >= _SCRIPT_ENTRIES:
                        await self._append_script(keys=keys, args=args, client=pipe)
                        keys, args = [self._index], []
                if args:
                    await self._append_script(keys=keys, args=args, client=pipe)
                await pipe.execute()

    async def _rows(self, session_id: str) -> list[dict[str, Any]]:
        with _translate("read"):
            raws = await self._client.lrange(self._key(session_id), 0, -1)
        return [_row(raw) for raw in raws]

    async def entries(self, session_id: str) -> list[LogEntry]:
        await self.flush()
        return parse_entries(session_id, await self._rows(session_id))

    async def verify(self, session_id: str | None = None) -> list[VerifyReport]:
        await self.flush()
        if session_id is not None:
            rows = await self._rows(session_id)
            return [verify_entries(session_id, rows, tail=self._tails.get(session_id))]
        ids = sorted(set(await self.session_ids()) | set(self._tails))
        reports: list[VerifyReport] = []
        for i in range(0, len(ids), _VERIFY_BATCH):
            chunk = ids[i : i + _VERIFY_BATCH]
            with _translate("verify"):
                async with self._client.pipeline(transaction=False) as pipe:
                    for sid in chunk:
                        pipe.lrange(self._key(sid), 0, -1)
                    lists = await pipe.execute()
            for sid, raws in zip(chunk, lists, strict=True):
                rows = [_row(raw) for raw in raws]
                reports.append(verify_entries(sid, rows, tail=self._tails.get(sid)))
        return reports

    async def session_ids(self) -> list[str]:
        await self.flush()
        with _translate("session_ids"):
            members = await self._client.smembers(self._index)
        return sorted(_text(m) for m in members)

    async def _close_storage(self) -> None:
        if self._owns_client:
            with _translate("close"):
                await self._client.aclose()
