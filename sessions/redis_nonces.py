"""Seen-once marks in Redis: a signed owner request answered by a replica is remembered here
(distributed mode; docs/security.md#owner-requests), so its bytes replayed to that replica
after a restart (its in-memory window gone) are still a replay.

Keys (``p`` = prefix, default ``cp:``)::

    p nonce:<hex digest>   "1", PEXPIRE ttl: set once (SET NX PX); a second SET fails

One command per signed request, never per session. Redis errors become
``BackendUnavailable`` here and nowhere else.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sessions.errors import BackendUnavailable
from sessions.redis_registry import redis_client

__all__ = ["RedisNonces"]


class RedisNonces:
    """``url_or_client``: a URL (a small client owned and closed here) or a client (the
    caller owns it)."""

    def __init__(self, url_or_client: str | Redis, *, prefix: str = "cp:") -> None:
        if isinstance(url_or_client, str):
            self._client = redis_client(url_or_client, pool_size=4)
            self._owns_client = True
        else:
            self._client = url_or_client
            self._owns_client = False
        self._p = prefix

    async def first(self, digest: str, ttl_s: float) -> bool:
        """Mark ``digest`` seen for ``ttl_s``; True when it was not seen within that window."""
        try:
            done = await self._client.set(
                f"{self._p}nonce:{digest}", b"1", nx=True, px=max(1, round(ttl_s * 1000))
            )
        except RedisError as exc:
            raise BackendUnavailable(f"redis nonces: marking a request seen failed: {exc}") from exc
        return bool(done)

    async def close(self) -> None:
        if self._owns_client:
            try:
                await self._client.aclose()
            except RedisError as exc:
                raise BackendUnavailable(f"redis nonces: close failed: {exc}") from exc
