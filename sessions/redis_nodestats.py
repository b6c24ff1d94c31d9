"""Per-node summaries in Redis, expiring with the node (e.g. a replica's rollout counters).

Keys (``p`` = prefix, default ``cp:``)::

    p nodestats:<node>     hash: name -> JSON document, PEXPIRE ttl (gone when the node is)
    p nodestats:nodes      set of nodes that published (pruned lazily when their hash expired)

``publish`` replaces a node's whole hash in one MULTI/EXEC (one round trip per period, never
per session); ``collect`` reads one field of every node in one pipeline. Redis errors become
``BackendUnavailable`` here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sessions.errors import BackendUnavailable
from sessions.redis_registry import DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT_S, redis_client

__all__ = ["RedisNodeStats"]


@contextmanager
def _translate(what: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise BackendUnavailable(f"redis node stats: {what} failed: {exc}") from exc


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class RedisNodeStats:
    """``url_or_client``: a URL (owned and closed here) or a client (the caller owns it)."""

    def __init__(
        self,
        url_or_client: str | Redis,
        *,
        ttl_s: float,
        prefix: str = "cp:",
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
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._p = prefix
        self._nodes = f"{prefix}nodestats:nodes"

    def _key(self, node: str) -> str:
        return f"{self._p}nodestats:{node}"

    async def publish(self, node: str, documents: Mapping[str, Any]) -> None:
        """Replace ``node``'s documents (JSON-able values); they expire after the TTL."""
        key = self._key(node)
        with _translate("publish"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if documents:
                    pipe.hset(key, mapping={
                        name: json.dumps(doc, separators=(",", ":"))
                        for name, doc in documents.items()
                    })  # fmt: skip
                    pipe.pexpire(key, self._ttl_ms)
                pipe.sadd(self._nodes, node)
                await pipe.execute()

    async def collect(self, name: str, *, exclude: str | None = None) -> dict[str, Any]:
        """Document ``name`` of every live node (but ``exclude``): node -> document."""
        with _translate("collect"):
            nodes = sorted(_text(n) for n in await self._client.smembers(self._nodes))
            nodes = [n for n in nodes if n != exclude]
            if not nodes:
                return {}
            async with self._client.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.exists(self._key(node))
                    pipe.hget(self._key(node), name)
                replies = await pipe.execute()
            out: dict[str, Any] = {}
            gone: list[str] = []
            for node, alive, raw in zip(nodes, replies[::2], replies[1::2], strict=True):
                if not alive:
                    gone.append(node)
                elif raw is not None:
                    out[node] = json.loads(raw)
            if gone:
                await self._client.srem(self._nodes, *gone)
        return out

    async def close(self) -> None:
        if self._owns_client:
            with _translate("close"):
                await self._client.aclose()
