"""Ending sessions in the Redis registry (``sessions/redis_registry.py``; its key layout).

``RedisEnds.end`` is what ``RedisRegistry.end`` calls: concurrent ends are written together
(``GroupCommit``: one optimistic WATCH/MULTI/EXEC per batch of up to ``END_BATCH`` sessions,
then one trim of the retained ended sessions and one MGET of the records of ids that were not
live). A WATCH transaction holds its connection from WATCH to EXEC (three reads in between):
one transaction per end made 5,000 clients disconnecting together from one replica wait for
the pool one end at a time and most of them failed with "No connection available" (a pool of
4 ended 127 of 3,000 within its 1 s timeout). Now the ends of a replica hold one connection.

``end_batch`` is the transaction itself, also used by the node-lost sweep (``only_node``).
Ending drops the owner (``sessions:owner``) in the same transaction as the live record, so a
late ``update_many`` of an ended id finds no owner and is skipped (never a resurrection).
"""

from __future__ import annotations

import builtins
import json
from typing import Final, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import WatchError

from sessions.errors import BackendUnavailable
from sessions.group_commit import GroupCommit
from sessions.model import Session
from sessions.registry import mark_ended

__all__ = ["END_BATCH", "EndItem", "RedisEnds", "RedisKeys", "dump", "load", "text"]

END_BATCH: Final = 500
_WATCH_RETRIES: Final = 8

# KEYS: ended zset, all zset, upstream hash. ARGV: max_ended, ended-key prefix, live-key prefix.
_TRIM_LUA: Final = """
local n = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if n <= 0 then return 0 end
local old = redis.call('ZRANGE', KEYS[1], 0, n - 1)
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[1], id)
  local raw = redis.call('GET', ARGV[2] .. id)
  if raw then
    local ok, s = pcall(cjson.decode, raw)
    local up = ok and type(s) == 'table' and s['upstream_id']
    if type(up) == 'string' and redis.call('HGET', KEYS[3], up) == id then
      redis.call('HDEL', KEYS[3], up)
    end
  end
  redis.call('DEL', ARGV[2] .. id)
  if redis.call('EXISTS', ARGV[3] .. id) == 0 then redis.call('ZREM', KEYS[2], id) end
end
return n
"""


def text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def dump(session: Session) -> str:
    return json.dumps(session.to_dict(), separators=(",", ":"), ensure_ascii=False)


def load(raw: bytes | str) -> Session:
    return Session.from_dict(json.loads(raw))


class RedisKeys:
    """The registry's key names under one prefix (the layout: redis_registry's docstring)."""

    __slots__ = ("all_z", "ended_z", "live_z", "nodes", "owner_h", "p", "records_h",
                 "upstream_h")  # fmt: skip

    def __init__(self, prefix: str) -> None:
        self.p = prefix
        self.live_z = f"{prefix}sessions:live"
        self.all_z = f"{prefix}sessions:all"
        self.ended_z = f"{prefix}sessions:ended"
        self.owner_h = f"{prefix}sessions:owner"
        self.upstream_h = f"{prefix}sessions:upstream"
        self.records_h = f"{prefix}sessions:records"
        self.nodes = f"{prefix}nodes"

    def live(self, session_id: str) -> str:
        return f"{self.p}session:{session_id}"

    def ended(self, session_id: str) -> str:
        return f"{self.p}session-ended:{session_id}"

    def claim(self, session_id: str) -> str:
        return f"{self.p}claim:{session_id}"

    def alive(self, node: str) -> str:
        return f"{self.p}node:{node}:alive"

    def owned(self, node: str) -> str:
        return f"{self.p}node:{node}:sessions"


class EndItem(NamedTuple):
    session_id: str
    cause: str
    at: float


class RedisEnds:
    """The ends of one registry. ``end`` raises ``RedisError`` (the registry translates it),
    ``BackendUnavailable`` when a batch kept conflicting; a failed batch fails each of its
    ends (the caller retries: ``RegistrySync.end_later``)."""

    def __init__(self, client: Redis, keys: RedisKeys, *, max_ended: int) -> None:
        self._client = client
        self._k = keys
        self._max_ended = max_ended
        self._trim_script = client.register_script(_TRIM_LUA)
        self._ends = GroupCommit(self._end_items, max_batch=END_BATCH, name="redis-end")

    async def end(self, session_id: str, *, cause: str, at: float) -> Session | None:
        """The session's final record: ended now, or as it ended before; None if unknown."""
        return await self._ends.submit(EndItem(session_id, cause, at))

    async def close(self, drain_s: float = 0.0) -> builtins.list[EndItem]:
        """Write the ends still queued for up to ``drain_s`` seconds; returns those not
        written."""
        return await self._ends.close(drain_s)

    async def _end_items(self, batch: builtins.list[EndItem]) -> builtins.list[Session | None]:
        first: dict[str, EndItem] = {}
        for item in batch:  # an id twice in a batch: the first end wins, as one after another
            first.setdefault(item.session_id, item)
        ended = {s.id: s for s in await self.end_batch(list(first.values()), only_node=None)}
        if ended:
            await self.trim()
        before = [sid for sid in first if sid not in ended]
        if before:  # not live: ended earlier (the stored record) or unknown
            raws = await self._client.mget([self._k.ended(sid) for sid in before])
            ended |= {sid: load(raw) for sid, raw in zip(before, raws, strict=True) if raw}
        results: builtins.list[Session | None] = []
        given: set[str] = set()
        for item in batch:
            session = ended.get(item.session_id)
            if session is not None and item.session_id in given:  # an independent copy
                session = Session.from_dict(session.to_dict())
            given.add(item.session_id)
            results.append(session)
        return results

    async def end_batch(
        self, items: builtins.list[EndItem], *, only_node: str | None
    ) -> builtins.list[Session]:
        """End the live sessions among ``items`` (owned by ``only_node`` if given) atomically;
        the ids must be distinct. Returns the sessions ended."""
        ids = [item.session_id for item in items]
        live_keys = [self._k.live(i) for i in ids]
        for _ in range(_WATCH_RETRIES):
            try:
                async with self._client.pipeline(transaction=True) as pipe:
                    await pipe.watch(*live_keys)
                    raws = await pipe.mget(live_keys)
                    owners = await pipe.hmget(self._k.owner_h, ids)
                    # not watched: only the owner updates its live sessions, and it ends its
                    # own after its last update (the push engine's sync); a node-lost sweep
                    # ends those of a node that stopped writing
                    updates = await pipe.hmget(self._k.records_h, ids)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    ended: builtins.list[Session] = []
                    for item, live, updated, owner in zip(items, raws, updates, owners,
                                                          strict=True):  # fmt: skip
                        sid = item.session_id
                        raw = live if live is None or updated is None else updated
                        node = None if owner is None else text(owner)
                        if raw is None or (only_node is not None and node != only_node):
                            if only_node is not None:  # stale membership: drop it
                                pipe.srem(self._k.owned(only_node), sid)
                            continue
                        session = load(raw)
                        mark_ended(session, cause=item.cause, at=item.at)
                        pipe.set(self._k.ended(sid), dump(session))
                        pipe.delete(self._k.live(sid))
                        pipe.hdel(self._k.records_h, sid)
                        pipe.zrem(self._k.live_z, sid)
                        pipe.zadd(self._k.ended_z, {sid: item.at})
                        pipe.hdel(self._k.owner_h, sid)
                        if node is not None:
                            pipe.srem(self._k.owned(node), sid)
                        ended.append(session)
                    await pipe.execute()
                    return ended
            except WatchError:
                continue  # a concurrent write touched one of the sessions: read again
        raise BackendUnavailable(f"redis registry: end of {len(ids)} session(s) kept conflicting")

    async def trim(self) -> None:
        """Drop the oldest retained ended sessions beyond ``max_ended``."""
        await self._trim_script(
            keys=[self._k.ended_z, self._k.all_z, self._k.upstream_h],
            args=[self._max_ended, self._k.ended(""), self._k.live("")],
        )
