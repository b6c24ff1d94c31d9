"""Redis backend of the session registry (shared across replicas).

Key layout (``p`` = prefix, default ``cp:``)::

    p session:<id>            live session, JSON of Session.to_dict() as registered
    p sessions:records        hash: live id -> its record as last updated (``update``), which
                              supersedes ``session:<id>``; dropped at register and end
    p session-ended:<id>      ended session, JSON (kept for inspection, at most max_ended)
    p sessions:live           zset, score 0: live ids in byte order (list pages via ZRANGEBYLEX)
    p sessions:all            zset, score 0: live + retained ended ids (include_ended listing)
    p sessions:ended          zset scored by ended_at: trim order for retained ended sessions
    p sessions:owner          hash: live id -> owner node
    p sessions:upstream       hash: upstream id -> session id (live + retained ended): the
                              session that last learnt it (a resumed call's latest); written
                              by register, and by the first update of a session carrying
                              it, only while that session is live
    p nodes                   set of nodes that own (or owned) sessions or sent heartbeats
    p node:<node>:alive       heartbeat, SET ... PX ttl (Redis is the one clock for liveness)
    p node:<node>:sessions    set of live ids the node owns
    p claim:<id>              the node holding the id (its trail's one writer), PX claim_ttl

Costs: ``update_many`` (the push engine's sync of every changed session) is one MULTI/EXEC of
a fixed number of commands whatever the batch size: ``HMGET sessions:owner`` (live ids have an
owner; unknown and ended ids have none and are skipped, so an update can never resurrect an
ended session) and one ``HSET sessions:records`` of every record, then one ``HDEL`` of the
skipped ones if any (a command per session per push made the Redis work of one publish grow
with the sessions: issue #23, ``loadtest/bench_cluster.py``); concurrent ``update`` calls
share one such write (group commit); ``register`` one claim script (the atomic check-and-set
of ``claim:<id>``) then one MULTI/EXEC, concurrent ``register`` calls sharing them (a pipeline
of claims, one MULTI/EXEC per batch: group commit), ``register_many`` one pipeline of claims
and one MULTI/EXEC per 500 sessions (a replica writing back what Redis lost); ``end`` and
the node-lost sweep are optimistic WATCH/MULTI/EXEC transactions of up to 500 sessions,
concurrent ``end`` calls sharing one (group commit: ``sessions/redis_ends.py``; a
WATCH holds its connection for four round trips); ``list`` reads ids in batches and fetches
records with MGET. The small Lua scripts build key names from the prefix, so all keys must
live on one Redis node (no Redis Cluster). Redis errors become ``BackendUnavailable`` here and
nowhere else.

Connections (``redis_client``): a *blocking* pool of ``pool_size`` connections; a command that
finds them all busy waits up to ``pool_timeout_s`` for one (redis-py's default asyncio pool
raised "Too many connections" at once: a reconnect storm of a few hundred sessions onto one
replica had most of them refused).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from sessions.clock import Clock
from sessions.errors import BackendUnavailable, SessionIdTaken, UnknownSession
from sessions.group_commit import GroupCommit
from sessions.model import Session
from sessions.redis_ends import END_BATCH, EndItem, RedisEnds, RedisKeys
from sessions.redis_ends import dump as _dump
from sessions.redis_ends import load as _load
from sessions.redis_ends import text as _text
from sessions.registry import (
    DEFAULT_MAX_ENDED,
    NODE_LOST,
    Page,
    Predicate,
    check_limit,
    check_storable,
)

__all__ = [
    "CLOSE_DRAIN_S",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_POOL_TIMEOUT_S",
    "RedisRegistry",
    "redis_client",
]

DEFAULT_POOL_SIZE: Final = 50
DEFAULT_POOL_TIMEOUT_S: Final = 10.0
CLOSE_DRAIN_S: Final = 5.0  # close: how long the writes still queued may take


def redis_client(
    url: str,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
) -> Redis:
    """A client over a blocking pool: at most ``pool_size`` connections; a command waits up
    to ``pool_timeout_s`` for a free one, then fails (``ConnectionError``: "No connection
    available"). Closing the client closes its pool."""
    pool = BlockingConnectionPool.from_url(url, max_connections=pool_size, timeout=pool_timeout_s)
    return Redis.from_pool(pool)


log = logging.getLogger(__name__)


_REGISTER_BATCH: Final = 500
_UPDATE_BATCH: Final = 2000
_Update = tuple[str, str, str | None]  # session id, its record (JSON), its upstream id
DEFAULT_CLAIM_TTL_S: Final = 400 * 86_400.0  # the default CP_AUDIT retention

# KEYS: claim key, owner hash. ARGV: node, claim TTL ms, session id, strict ('1': a live id
# is refused even on its own node). Returns the holder that refuses the claim, or nil (claimed).
_CLAIM_LUA: Final = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
local owner = redis.call('HGET', KEYS[2], ARGV[3])
if owner and (owner ~= ARGV[1] or ARGV[4] == '1') then return owner end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# KEYS: node alive key, node sessions set, nodes set. ARGV: node.
# KEYS: owner hash, upstream hash; ARGV: (upstream id, session id) pairs. An update's index
# entry only for a session still live (owned): an ended one's never points the index back
_MAP_LIVE_LUA: Final = """
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i + 1]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""
_PRUNE_NODE_LUA: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('SCARD', KEYS[2]) == 0 then
  return redis.call('SREM', KEYS[3], ARGV[1])
end
return 0
"""


@contextmanager
def _translate(what: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise BackendUnavailable(f"redis registry: {what} failed: {exc}") from exc


class RedisRegistry:
    """Registry in Redis. ``url_or_client``: a URL (the registry owns and closes the client)
    or a ``redis.asyncio.Redis`` (the caller owns it)."""

    def __init__(
        self,
        url_or_client: str | Redis,
        clock: Clock,
        *,
        ttl_s: float = 30.0,
        prefix: str = "cp:",
        max_ended: int = DEFAULT_MAX_ENDED,
        claim_ttl_s: float = DEFAULT_CLAIM_TTL_S,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
    ) -> None:
        if isinstance(url_or_client, str):
            self._client = redis_client(
                url_or_client, pool_size=pool_size, pool_timeout_s=pool_timeout_s
            )
            self._owns_client = True
        else:
            self._client = url_or_client
            self._owns_client = False
        self._clock = clock
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._claim_ms = max(1, round(claim_ttl_s * 1000))
        self._max_ended = max_ended
        self._k = k = RedisKeys(prefix)
        self._live_z, self._all_z, self._ended_z = k.live_z, k.all_z, k.ended_z
        self._owner_h, self._upstream_h, self._records_h = k.owner_h, k.upstream_h, k.records_h
        self._nodes = k.nodes
        self._ends = RedisEnds(self._client, k, max_ended=max_ended)
        self._prune_script = self._client.register_script(_PRUNE_NODE_LUA)
        self._claim_script = self._client.register_script(_CLAIM_LUA)
        self._registrations = GroupCommit(
            self._register_batch, max_batch=_REGISTER_BATCH, name="redis-register"
        )
        self._updates = GroupCommit(self._update_batch, max_batch=_UPDATE_BATCH,
                                    name="redis-update")  # fmt: skip
        self._live_key, self._ended_key, self._claim_key = k.live, k.ended, k.claim
        self._alive_key, self._owned_key = k.alive, k.owned
        # session id -> the upstream id its index entry was written for here: an update
        # writes it once (when the session learns it), never again: a later update of a call's
        # earlier session (still live here while the call resumed on another replica, or
        # delayed behind a Redis outage) pointed the index back at it
        self._mapped: dict[str, str] = {}

    async def register(self, session: Session) -> None:
        """Claim the id and store the session. Concurrent registrations are written together
        (``GroupCommit``: one pipeline of claims and one MULTI/EXEC per batch)."""
        check_storable(session)
        holder = await self._registrations.submit(session)
        if holder is not None:
            raise SessionIdTaken(session.id, holder=holder)

    async def _register_batch(self, batch: builtins.list[Session]) -> builtins.list[str | None]:
        """Strict claims of ``batch`` (a live id is refused even on its own node), then one
        store of the claimed; per session the holder that refused it, or None."""
        holders: builtins.list[str | None] = []
        with _translate("register"):
            async with self._client.pipeline(transaction=False) as pipe:
                for session in batch:
                    await self._claim_script(
                        keys=[self._claim_key(session.id), self._owner_h],
                        args=[session.node, self._claim_ms, session.id, "1"],
                        client=pipe,
                    )
                raw = await pipe.execute()
            seen: set[str] = set()
            for session, holder in zip(batch, raw, strict=True):
                if holder is None and session.id in seen:  # twice in one batch: live already
                    holders.append(session.node)
                else:
                    holders.append(None if holder is None else _text(holder))
                seen.add(session.id)
            await self._store([s for s, h in zip(batch, holders, strict=True) if h is None])
        return holders

    async def register_many(self, sessions: Iterable[Session]) -> builtins.list[str]:
        batch = list(sessions)
        for session in batch:
            check_storable(session)
        refused: builtins.list[str] = []
        with _translate("register"):
            for i in range(0, len(batch), _REGISTER_BATCH):
                chunk = batch[i : i + _REGISTER_BATCH]
                async with self._client.pipeline(transaction=False) as pipe:
                    for session in chunk:
                        await self._claim_script(
                            keys=[self._claim_key(session.id), self._owner_h],
                            args=[session.node, self._claim_ms, session.id, "0"],
                            client=pipe,
                        )
                    holders = await pipe.execute()
                refused += [s.id for s, h in zip(chunk, holders, strict=True) if h is not None]
                await self._store([s for s, h in zip(chunk, holders, strict=True) if h is None])
        return refused

    async def holders(self, session_ids: Iterable[str]) -> builtins.list[str | None]:
        ids = list(session_ids)
        if not ids:
            return []
        with _translate("holders"):
            raws = await self._client.mget([self._claim_key(i) for i in ids])
        return [None if raw is None else _text(raw) for raw in raws]

    async def _store(self, sessions: builtins.list[Session]) -> None:
        if sessions:
            async with self._client.pipeline(transaction=True) as pipe:
                for session in sessions:
                    self._queue_register(pipe, session)
                await pipe.execute()

    def _queue_register(self, pipe: Pipeline, session: Session) -> None:
        sid, node = session.id, session.node
        pipe.set(self._live_key(sid), _dump(session))
        pipe.hdel(self._records_h, sid)  # an update of an earlier life no longer applies
        pipe.delete(self._ended_key(sid))
        pipe.zrem(self._ended_z, sid)
        pipe.zadd(self._live_z, {sid: 0})
        pipe.zadd(self._all_z, {sid: 0})
        pipe.hset(self._owner_h, sid, node)
        if session.upstream_id:
            pipe.hset(self._upstream_h, session.upstream_id, sid)
            self._mapped[sid] = session.upstream_id
        pipe.sadd(self._owned_key(node), sid)
        pipe.sadd(self._nodes, node)
        pipe.set(self._alive_key(node), repr(self._clock.now()), px=self._ttl_ms)

    async def update(self, session: Session) -> None:
        """Concurrent updates are written together (one ``_write`` per batch); the record is
        the session as it is now (dumped before waiting)."""
        check_storable(session)
        if await self._updates.submit((session.id, _dump(session), session.upstream_id)):
            raise UnknownSession(session.id)

    async def _update_batch(self, batch: builtins.list[_Update]) -> builtins.list[bool]:
        records = {sid: record for sid, record, _ in batch}  # the last one of an id wins
        upstream = {str(up): sid for sid, _, up in batch if up and self._mapped.get(sid) != up}
        with _translate("update"):
            skipped = set(await self._write(records, upstream))
        return [sid in skipped for sid, _, _ in batch]  # skipped: unknown or ended

    async def update_many(self, sessions: Iterable[Session]) -> builtins.list[str]:
        batch = list(sessions)
        if not batch:
            return []
        for session in batch:
            check_storable(session)
        records = {s.id: _dump(s) for s in batch}  # the last one of an id wins, as in order
        # an id learnt after register (Begin, session.ready)
        upstream = {str(s.upstream_id): s.id for s in batch
                    if s.upstream_id and self._mapped.get(s.id) != s.upstream_id}  # fmt: skip
        with _translate("update_many"):
            gone = set(await self._write(records, upstream))
        return [s.id for s in batch if s.id in gone]

    async def _write(self, records: dict[str, str], upstream: dict[str, str]) -> builtins.list[str]:
        """One MULTI/EXEC (+ an HDEL of the skipped): the ids skipped (no owner)."""
        ids = builtins.list(records)
        async with self._client.pipeline(transaction=True) as pipe:  # MULTI/EXEC
            pipe.hmget(self._owner_h, ids)
            pipe.hset(self._records_h, mapping=records)  # type: ignore[arg-type]
            if upstream:
                pipe.eval(_MAP_LIVE_LUA, 2, self._owner_h, self._upstream_h,
                          *(x for pair in upstream.items() for x in pair))  # fmt: skip
            owners = (await pipe.execute())[0]
        skipped = [sid for sid, owner in zip(ids, owners, strict=True) if owner is None]
        for up, sid in upstream.items():  # (a skipped one's was not written: again next time)
            if sid not in skipped:
                self._mapped[sid] = up
        if skipped:  # unknown or ended: their record must not stay
            await self._client.hdel(self._records_h, *skipped)
        return skipped

    async def end(self, session_id: str, *, cause: str, at: float) -> Session:
        """Concurrent ends are written together (``RedisEnds``: one transaction per batch)."""
        self._mapped.pop(session_id, None)
        with _translate("end"):
            session = await self._ends.end(session_id, cause=cause, at=at)
        if session is None:
            raise UnknownSession(session_id)
        return session

    async def get(self, session_id: str) -> Session:
        with _translate("get"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(self._live_key(session_id))
                pipe.hget(self._records_h, session_id)
                pipe.get(self._ended_key(session_id))
                live, updated, ended = await pipe.execute()
        raw = (live if updated is None else updated) if live is not None else ended
        if raw is None:
            raise UnknownSession(session_id)
        return _load(raw)

    async def list(
        self,
        predicate: Predicate | None = None,
        *,
        include_ended: bool = False,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        check_limit(limit)
        index = self._all_z if include_ended else self._live_z
        low = "-" if cursor is None else "(" + cursor
        batch = limit + 1 if predicate is None else max(limit + 1, 256)
        found: builtins.list[Session] = []
        with _translate("list"):
            while True:
                ids = [
                    _text(i)
                    for i in await self._client.zrangebylex(index, low, "+", start=0, num=batch)
                ]
                if not ids:
                    return Page(found, None)
                for raw in await self._fetch(ids, include_ended):
                    if raw is None:  # ended or trimmed between the two reads
                        continue
                    session = _load(raw)
                    if predicate is None or predicate(session):
                        if len(found) == limit:
                            return Page(found, found[-1].id)
                        found.append(session)
                if len(ids) < batch:
                    return Page(found, None)
                low = "(" + ids[-1]

    async def _fetch(
        self, ids: builtins.list[str], include_ended: bool
    ) -> builtins.list[bytes | str | None]:
        """The current record of each id: its last update, else as registered (live), else
        its ended record (``include_ended``), else None."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.mget([self._live_key(i) for i in ids])
            pipe.hmget(self._records_h, ids)
            if include_ended:
                pipe.mget([self._ended_key(i) for i in ids])
            found = await pipe.execute()
        lives, updates = found[0], found[1]
        endeds = found[2] if include_ended else [None] * len(ids)
        return [
            (live if updated is None else updated) if live is not None else ended
            for live, updated, ended in zip(lives, updates, endeds, strict=True)
        ]

    async def owner(self, session_id: str) -> str | None:
        with _translate("owner"):
            node = await self._client.hget(self._owner_h, session_id)
        return None if node is None else _text(node)

    async def find_upstream(self, upstream_id: str) -> str | None:
        with _translate("find_upstream"):
            found = await self._client.hget(self._upstream_h, upstream_id)
        return None if found is None else _text(found)

    async def heartbeat(self, node: str) -> None:
        with _translate("heartbeat"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(self._alive_key(node), repr(self._clock.now()), px=self._ttl_ms)
                pipe.sadd(self._nodes, node)
                await pipe.execute()

    async def expire_dead_nodes(self) -> builtins.list[str]:
        with _translate("expire_dead_nodes"):
            nodes = sorted(_text(n) for n in await self._client.smembers(self._nodes))
            if not nodes:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.exists(self._alive_key(node))
                alive = await pipe.execute()
            dead = [node for node, up in zip(nodes, alive, strict=True) if not up]
            if not dead:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                for node in dead:
                    pipe.smembers(self._owned_key(node))
                owned = await pipe.execute()
            at = self._clock.now()
            expired: builtins.list[str] = []
            for node, members in zip(dead, owned, strict=True):
                ids = sorted(_text(m) for m in members)
                for i in range(0, len(ids), END_BATCH):
                    chunk = [EndItem(sid, NODE_LOST, at) for sid in ids[i : i + END_BATCH]]
                    ended = await self._ends.end_batch(chunk, only_node=node)
                    expired.extend(s.id for s in ended)
                await self._prune_script(
                    keys=[self._alive_key(node), self._owned_key(node), self._nodes], args=[node]
                )
            if expired:
                await self._ends.trim()
        return sorted(expired)

    async def close(self, drain_s: float = CLOSE_DRAIN_S) -> None:
        """Write what is still queued (registrations, updates, ends) for up to ``drain_s``
        seconds, then close; the ends that could not be written are logged (their ids): the
        sessions stay live in Redis until another replica's node-lost sweep ends them."""
        registrations, updates, ends = await asyncio.gather(
            self._registrations.close(drain_s), self._updates.close(drain_s),
            self._ends.close(drain_s),
        )  # fmt: skip
        if registrations or updates:
            log.warning("redis registry closed with %d registration(s) and %d update(s) not "
                        "written", len(registrations), len(updates))  # fmt: skip
        if ends:
            ids = sorted({item.session_id for item in ends})
            log.error("redis registry closed with %d session end(s) not written (left to the "
                      "node-lost sweep of another replica): %s%s", len(ids),
                      ", ".join(ids[:20]), " ..." if len(ids) > 20 else "")  # fmt: skip
        if self._owns_client:
            with _translate("close"):
                await self._client.aclose()
