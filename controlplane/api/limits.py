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
"""

from __future__ import annotations

import math
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from controlplane.api.auth import PRINCIPAL
from controlplane.errors import TooManyRequests
from sessions.clock import Clock

__all__ = ["ReadLimits", "limited"]


class ReadLimits:
    """One token bucket per token digest, shared by the expensive routes."""

    __slots__ = ("_buckets", "_clock", "_counted", "burst", "rate_per_s")

    def __init__(
        self, clock: Clock, *, burst: int, rate_per_s: float,
        counted: Callable[[str], None] = lambda route: None,
    ) -> None:  # fmt: skip
        self._clock = clock
        self.burst = burst
        self.rate_per_s = rate_per_s
        self._counted = counted
        self._buckets: dict[bytes, tuple[float, float]] = {}  # digest -> (tokens, at)

    def take(self, digest: bytes, route: str) -> None:
        """One expensive read of ``route`` by the token with ``digest``; raises 429
        ``rate_limited`` (``details.retry_after_s``) when its bucket is empty."""
        if self.rate_per_s <= 0:
            return
        now = self._clock.monotonic()
        tokens, at = self._buckets.get(digest, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
        if tokens >= 1.0:
            self._buckets[digest] = (tokens - 1.0, now)
            return
        self._buckets[digest] = (tokens, now)
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
        limits.take(request[PRINCIPAL].digest, route)
        return await handler(request)

    return guarded
