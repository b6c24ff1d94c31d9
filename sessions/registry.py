"""The live session registry: contract (``Registry``) and the in-memory backend.

Contract shared by every backend (checked by ``tests/contract/test_registry_contract.py``):

- ``register(session)`` *claims* the id cluster-wide, stores the session as live and makes
  ``session.node`` its owner. The claim is atomic: it raises ``SessionIdTaken`` (permanent)
  when the id is live (on any node) or held by another node, which keeps the id's durable
  trail (``cp.audit.<id>``): one writer per trail. A node may re-register an ended id it
  holds (its local chain continues). Redis keeps a claim ``claim_ttl_s`` after the last
  registration (default: the audit retention, the trail's lifetime); memory keeps it while the
  ended record is retained. It also counts as a heartbeat of ``session.node``.
  ``register_many(sessions)`` is the write-back of a node's own live sessions after the
  backend lost or ended them (pipelined on Redis): an upsert, except for ids another node
  holds, which it skips and returns. ``holders(ids)`` answers the node holding each id's
  claim, or None (the audit shipper's fence).
- ``update(session)`` replaces the record of a *live* session; it raises ``UnknownSession``
  when the id is unknown or already ended (ended is terminal). It never changes the owner.
  ``update_many(sessions)`` does the same as one batch (one pipeline on Redis) and returns the
  ids it skipped instead of raising.
- ``end(session_id, *, cause, at)`` marks the session ended, drops its owner, and returns the
  final record; ending an ended session is a no-op that returns the stored record. Ended
  sessions are kept for inspection, at most ``max_ended`` of them (oldest dropped first).
- ``get`` returns an independent copy; ``list`` pages in id order (byte order of UTF-8) with
  an opaque cursor, applies ``predicate`` before paging, and returns ``next=None`` exactly
  when nothing more matches. ``predicate`` must not mutate the session it is given.
- ``heartbeat(node)`` keeps a node alive for ``ttl_s``; ``expire_dead_nodes()`` ends, with
  cause ``node_lost`` and ``ended_at = clock.now()``, every live session whose owner's
  heartbeat has lapsed, and returns their ids (sorted).
- Backend failures surface as ``sessions.errors.BackendUnavailable`` (retryable).
"""

from __future__ import annotations

import bisect
import builtins
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from sessions.clock import Clock
from sessions.errors import SessionIdTaken, UnknownSession
from sessions.model import Session, SessionState

__all__ = [
    "DEFAULT_MAX_ENDED",
    "NODE_LOST",
    "MemoryRegistry",
    "Page",
    "Predicate",
    "Registry",
]

NODE_LOST: Final = "node_lost"
DEFAULT_MAX_ENDED: Final = 10_000

Predicate = Callable[[Session], bool]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing; ``next`` is the cursor for the following page, or None."""

    items: list[Session]
    next: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"items": [s.to_dict() for s in self.items], "next": self.next}


class Registry(Protocol):
    async def register(self, session: Session) -> None: ...

    async def register_many(self, sessions: Iterable[Session]) -> builtins.list[str]: ...

    async def holders(self, session_ids: Iterable[str]) -> builtins.list[str | None]: ...

    async def update(self, session: Session) -> None: ...

    async def update_many(self, sessions: Iterable[Session]) -> builtins.list[str]: ...

    async def end(self, session_id: str, *, cause: str, at: float) -> Session: ...

    async def get(self, session_id: str) -> Session: ...

    async def list(
        self,
        predicate: Predicate | None = None,
        *,
        include_ended: bool = False,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page: ...

    async def owner(self, session_id: str) -> str | None: ...

    async def find_upstream(self, upstream_id: str) -> str | None:
        """The id of the live or retained ended session whose upstream id this is."""
        ...

    async def heartbeat(self, node: str) -> None: ...

    async def expire_dead_nodes(self) -> builtins.list[str]: ...

    async def close(self) -> None: ...


def check_storable(session: Session) -> None:
    """Shared guard: ``end()`` is the only way into the ended state."""
    if session.state is SessionState.ENDED:
        raise ValueError(f"session {session.id!r}: use Registry.end() to end a session")


def check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


def mark_ended(session: Session, *, cause: str, at: float) -> None:
    session.state = SessionState.ENDED
    session.ended_at = at
    session.end_cause = cause
    session.updated_at = at


class MemoryRegistry:
    """Single-process registry (embedded mode and tests). Time comes from ``clock``."""

    def __init__(self, clock: Clock, ttl_s: float = 30.0, *, max_ended: int = DEFAULT_MAX_ENDED):
        self._clock = clock
        self._ttl_s = ttl_s
        self._max_ended = max_ended
        self._live: dict[str, Session] = {}
        self._ended: OrderedDict[str, Session] = OrderedDict()  # end order, oldest first
        self._owners: dict[str, str] = {}  # live session id -> node
        self._by_node: dict[str, set[str]] = {}
        self._beats: dict[str, float] = {}  # node -> clock.monotonic() of its last heartbeat
        self._sorted: dict[bool, builtins.list[str]] = {}  # include_ended -> sorted ids
        self._by_upstream: dict[str, str] = {}  # upstream id -> session id (live + ended)

    async def register(self, session: Session) -> None:
        check_storable(session)
        holder = self._holder(session.id)
        if session.id in self._live or (holder is not None and holder != session.node):
            raise SessionIdTaken(session.id, holder=holder)
        self._store(session)

    def _holder(self, session_id: str) -> str | None:
        held = self._live.get(session_id) or self._ended.get(session_id)
        return None if held is None else held.node

    def _store(self, session: Session) -> None:
        self._disown(session.id)
        self._ended.pop(session.id, None)
        self._live[session.id] = session.copy()
        self._index_upstream(session)
        self._owners[session.id] = session.node
        self._by_node.setdefault(session.node, set()).add(session.id)
        self._beats[session.node] = self._clock.monotonic()
        self._sorted.clear()

    async def register_many(self, sessions: Iterable[Session]) -> builtins.list[str]:
        refused: builtins.list[str] = []
        for session in sessions:
            check_storable(session)
            holder = self._holder(session.id)
            if holder is not None and holder != session.node:
                refused.append(session.id)
            else:
                self._store(session)
        return refused

    async def holders(self, session_ids: Iterable[str]) -> builtins.list[str | None]:
        return [self._holder(sid) for sid in session_ids]

    async def update(self, session: Session) -> None:
        if not self._store_live(session):
            raise UnknownSession(session.id)

    async def update_many(self, sessions: Iterable[Session]) -> builtins.list[str]:
        return [s.id for s in sessions if not self._store_live(s)]

    async def end(self, session_id: str, *, cause: str, at: float) -> Session:
        ended = self._ended.get(session_id)
        if ended is not None:
            return ended.copy()
        session = self._live.pop(session_id, None)
        if session is None:
            raise UnknownSession(session_id)
        self._disown(session_id)
        mark_ended(session, cause=cause, at=at)
        self._ended[session_id] = session
        while len(self._ended) > self._max_ended:
            _, dropped = self._ended.popitem(last=False)
            if dropped.upstream_id and self._by_upstream.get(dropped.upstream_id) == dropped.id:
                del self._by_upstream[dropped.upstream_id]
        self._sorted.clear()
        return session.copy()

    async def get(self, session_id: str) -> Session:
        session = self._live.get(session_id) or self._ended.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        return session.copy()

    async def list(
        self,
        predicate: Predicate | None = None,
        *,
        include_ended: bool = False,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        check_limit(limit)
        ids = self._sorted_ids(include_ended)
        start = 0 if cursor is None else bisect.bisect_right(ids, cursor)
        found: builtins.list[Session] = []
        for session_id in ids[start:]:
            session = self._live.get(session_id) or self._ended[session_id]
            if predicate is None or predicate(session):
                if len(found) == limit:  # one more match exists: there is a next page
                    return Page([s.copy() for s in found], found[-1].id)
                found.append(session)
        return Page([s.copy() for s in found], None)

    async def owner(self, session_id: str) -> str | None:
        return self._owners.get(session_id)

    async def find_upstream(self, upstream_id: str) -> str | None:
        return self._by_upstream.get(upstream_id)

    async def heartbeat(self, node: str) -> None:
        self._beats[node] = self._clock.monotonic()

    async def expire_dead_nodes(self) -> builtins.list[str]:
        now = self._clock.monotonic()
        expired: builtins.list[str] = []
        for node in set(self._beats) | set(self._by_node):
            last = self._beats.get(node)
            if last is not None and now - last < self._ttl_s:
                continue
            for session_id in sorted(self._by_node.get(node, ())):
                await self.end(session_id, cause=NODE_LOST, at=self._clock.now())
                expired.append(session_id)
            self._beats.pop(node, None)
            self._by_node.pop(node, None)
        return sorted(expired)

    async def close(self) -> None:
        return None

    def _store_live(self, session: Session) -> bool:
        check_storable(session)
        if session.id not in self._live:
            return False
        self._live[session.id] = session.copy()
        self._index_upstream(session)
        return True

    def _index_upstream(self, session: Session) -> None:
        if session.upstream_id:
            self._by_upstream[session.upstream_id] = session.id

    def _disown(self, session_id: str) -> None:
        node = self._owners.pop(session_id, None)
        owned = self._by_node.get(node) if node is not None else None
        if node is not None and owned is not None:
            owned.discard(session_id)
            if not owned:
                del self._by_node[node]

    def _sorted_ids(self, include_ended: bool) -> builtins.list[str]:
        ids = self._sorted.get(include_ended)
        if ids is None:
            pool = set(self._live) | set(self._ended) if include_ended else set(self._live)
            ids = self._sorted[include_ended] = sorted(pool)  # code point order = UTF-8 order
        return ids
