"""Token buckets shared by every replica through Redis (distributed mode; docs/security.md
#rate-limits): a token's expensive REST reads are counted once for the cluster, not once per
replica (N replicas were N times the limit).

Keys (``p`` = prefix, default ``cp:``)::

    p rate:<id>   hash {t: tokens left, at: Redis time in µs of the last take}, PEXPIRE the
                  time a bucket takes to refill (an idle token holds no key)

``<id>`` is derived from the token's digest under its own label (never the digest itself, nor
the actor's ``sha256[:6]``): Redis learns nothing it could present or link to an actor.

One ``EVALSHA`` per read: the refill, the take and the expiry run atomically in Redis, on
Redis's clock (``TIME``), so two replicas taking at once never both spend the last token and
their clocks do not matter. Redis errors become ``BackendUnavailable`` here and nowhere else.
"""

from __future__ import annotations

import hashlib
from typing import Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from sessions.errors import BackendUnavailable

__all__ = ["RedisBuckets", "bucket_id"]

TIMEOUT_S: Final = 0.5  # a read waits at most this long for Redis before the local fallback

# KEYS: the bucket. ARGV: burst, rate per second. Returns {allowed (1/0), tokens left * 1000}.
_TAKE_LUA: Final = """
local now = redis.call('TIME')
local us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local burst, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens, at = tonumber(held[1]), tonumber(held[2])
if tokens == nil or at == nil then tokens, at = burst, us end
if us > at then tokens = math.min(burst, tokens + (us - at) / 1000000 * rate) end
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(math.max(us, at)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, math.floor(tokens * 1000)}
"""


def bucket_id(digest: bytes) -> str:
    """The Redis name of a token's bucket: a hash of its digest under a label of its own."""
    return hashlib.sha256(b"controlplane rate bucket\x00" + digest).hexdigest()[:32]


class RedisBuckets:
    """``url_or_client``: a URL (a small client with short timeouts, owned and closed here)
    or a client (the caller owns it)."""

    def __init__(self, url_or_client: str | Redis, *, prefix: str = "cp:") -> None:
        if isinstance(url_or_client, str):
            pool = BlockingConnectionPool.from_url(
                url_or_client, max_connections=8, timeout=TIMEOUT_S,
                socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
            )  # fmt: skip
            self._client = Redis.from_pool(pool)
            self._owns_client = True
        else:
            self._client = url_or_client
            self._owns_client = False
        self._p = prefix
        self._take = self._client.register_script(_TAKE_LUA)

    async def take(self, digest: bytes, *, burst: int, rate_per_s: float) -> tuple[bool, float]:
        """One read from the token's shared bucket: (allowed, tokens left after it)."""
        try:
            allowed, milli = await self._take(
                keys=[f"{self._p}rate:{bucket_id(digest)}"], args=[burst, repr(rate_per_s)]
            )
        except RedisError as exc:
            raise BackendUnavailable(f"redis rate limits: taking a read failed: {exc}") from exc
        return bool(int(allowed)), int(milli) / 1000.0

    async def close(self) -> None:
        if self._owns_client:
            try:
                await self._client.aclose()
            except RedisError as exc:
                raise BackendUnavailable(f"redis rate limits: close failed: {exc}") from exc
