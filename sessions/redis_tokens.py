"""Token labels shared by replicas (Redis).

A temporary token minted through one replica's gateway with an API key that has credential
labels carries those labels to the session it opens, on whichever replica the client then
connects to (controlplane.labels). One key per token, never the token itself::

    p token-labels:<sha256 hex of the token>   JSON {label: value}, PX = the redemption window

Redis errors become ``BackendUnavailable`` here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sessions.errors import BackendUnavailable
from sessions.redis_registry import redis_client

__all__ = ["RedisTokenLabels"]


@contextmanager
def _translate(what: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise BackendUnavailable(f"redis token labels: {what} failed: {exc}") from exc


class RedisTokenLabels:
    """``put`` / ``get`` of one token's labels (the ``TokenLabelStore`` of the gateway)."""

    def __init__(self, url_or_client: str | Redis, *, prefix: str = "cp:") -> None:
        if isinstance(url_or_client, str):
            self._client = redis_client(url_or_client, pool_size=8, pool_timeout_s=5.0)
            self._owns_client = True
        else:
            self._client = url_or_client
            self._owns_client = False
        self._p = f"{prefix}token-labels:"

    async def put(self, digest: str, labels: Mapping[str, str], ttl_s: float) -> None:
        with _translate("put"):
            await self._client.set(self._p + digest, json.dumps(dict(labels)),
                                   px=max(1, round(ttl_s * 1000)))  # fmt: skip

    async def get(self, digest: str) -> dict[str, str] | None:
        with _translate("get"):
            raw = await self._client.get(self._p + digest)
        if raw is None:
            return None
        found = json.loads(raw)
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else None

    async def close(self) -> None:
        if self._owns_client:
            with _translate("close"):
                await self._client.aclose()
