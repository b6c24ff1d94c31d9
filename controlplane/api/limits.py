"""Per-token limits on the expensive reads of the REST API (docs/security.md#rate-limits).

A session's log (``GET /v1/sessions/{id}/log``: a flush of the version log and a read of the
session's files per request, whatever the page), ``config-at``, ``audit verify`` and an
experiment's assignment export cost the server far more than the request costs its sender;
without a limit one token could keep a replica busy polling them. Each such route is marked
``expensive`` in the route table (``controlplane.api.routes.ROUTES``); :class:`ReadLimits`
gives every token (by its digest: only authenticated tokens, so the table is bounded by the
configured tokens) one token bucket for all of them: ``burst`` reads at once, refilled at
``rate_per_s``. Past it the answer is 429 ``rate_limited`` with ``Retry-After`` (whole
seconds until a read is allowed again) naming the limit, and
``controlplane_rate_limited_total{route}`` counts it. ``rate_per_s`` 0 turns the limit off.

Distributed mode with Redis (session 12): the bucket is shared by every replica
(``shared``: ``sessions.redis_rates.RedisBuckets``, one atomic script per read), so N
replicas no longer give a token N times the limit. While Redis does not answer (an error or
no answer within ``sessions.redis_rates.TIMEOUT_S``) a replica falls back to its own bucket
for the token (the limit per replica, as before) and asks Redis again after
``RETRY_SHARED_S``; it logs one WARNING when it falls back and one when Redis answers again,
and ``controlplane_rate_limit_fallback_total`` counts the reads limited locally. Not refused
(an operator reading logs during a Redis outage needs them) and not unlimited.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Final, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from controlplane.api.auth import PRINCIPAL
from controlplane.errors import TooManyRequests
from sessions.clock import Clock
from sessions.errors import BackendUnavailable

__all__ = ["RETRY_SHARED_S", "ReadLimits", "SharedBuckets", "limited"]

log = logging.getLogger(__name__)

RETRY_SHARED_S: Final = 5.0  # after a Redis failure, limit locally this long, then ask again


class SharedBuckets(Protocol):
    """Buckets every replica shares (``sessions.redis_rates.RedisBuckets``)."""

    async def take(self, digest: bytes, *, burst: int, rate_per_s: float) -> tuple[bool, float]:
        """One read: (allowed, tokens left); raises ``BackendUnavailable``."""
        ...


class ReadLimits:
    """One token bucket per token digest, shared by the expensive routes (and, with
    ``shared``, by every replica)."""

    __slots__ = ("_buckets", "_clock", "_counted", "_fallback", "_local_until", "_shared",
                 "burst", "rate_per_s")  # fmt: skip

    def __init__(
        self, clock: Clock, *, burst: int, rate_per_s: float,
        counted: Callable[[str], None] = lambda route: None,
        shared: SharedBuckets | None = None,
        fallback: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        self._clock = clock
        self.burst = burst
        self.rate_per_s = rate_per_s
        self._counted = counted
        self._shared = shared
        self._fallback = fallback  # counts a read limited locally while Redis is down
        self._local_until: float | None = None  # Redis failed: local buckets until then
        self._buckets: dict[bytes, tuple[float, float]] = {}  # digest -> (tokens, at)

    async def take(self, digest: bytes, route: str) -> None:
        """One expensive read of ``route`` by the token with ``digest``; raises 429
        ``rate_limited`` (``details.retry_after_s``) when its bucket is empty."""
        if self.rate_per_s <= 0:
            return
        if self._shared is not None and not self._local():
            try:
                allowed, left = await self._shared.take(digest, burst=self.burst,
                                                        rate_per_s=self.rate_per_s)  # fmt: skip
            except BackendUnavailable as exc:
                if self._local_until is None:  # once per outage (retried every RETRY_SHARED_S)
                    log.warning("expensive-read limits: Redis unavailable, each replica limits "
                                "on its own (per replica) until it answers: %s", exc)  # fmt: skip
                self._local_until = self._clock.monotonic() + RETRY_SHARED_S
            else:
                if self._local_until is not None:
                    self._local_until = None
                    log.warning("expensive-read limits: Redis answers again, limits shared")
                if not allowed:
                    self._refuse(route, left)
                return
        short = self._local_take(digest)
        if short is not None:
            self._refuse(route, short)

    def _local(self) -> bool:
        if self._local_until is None:
            return False
        return self._clock.monotonic() < self._local_until

    def _local_take(self, digest: bytes) -> float | None:
        """This replica's bucket: None when allowed, else the tokens left."""
        if self._shared is not None:
            self._fallback()
        now = self._clock.monotonic()
        tokens, at = self._buckets.get(digest, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
        if tokens >= 1.0:
            self._buckets[digest] = (tokens - 1.0, now)
            return None
        self._buckets[digest] = (tokens, now)
        return tokens

    def _refuse(self, route: str, tokens: float) -> None:
        self._counted(route)
        wait_s = max(1, math.ceil((1.0 - tokens) / self.rate_per_s))
        raise TooManyRequests(
            f"too many expensive reads by this token: at most {self.burst} at once and "
            f"{self.rate_per_s:g} per second (settings expensive_read_burst, "
            f"expensive_read_rate_per_s); retry in {wait_s}s",
            details={"route": route, "burst": self.burst, "rate_per_s": self.rate_per_s,
                     "retry_after_s": wait_s},
        )  # fmt: skip


def limited(limits: ReadLimits, route: str, handler: Handler) -> Handler:
    """``handler`` after one read of the authenticated token's bucket (429 when empty); wrap
    it inside ``auth.require`` (the principal must be known)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        await limits.take(request[PRINCIPAL].digest, route)
        return await handler(request)

    return guarded
