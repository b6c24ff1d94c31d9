"""NATS adapter for owner requests: request/reply between replicas on
``<prefix>.node.<node>.<action>`` (core NATS, no stream). A replica answers its own node's
requests with ONE wildcard subscription, never one per session; ``controlplane.cluster.routing``
decides what is asked and turns replies back into results or errors.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from controlplane.cluster.nats_bus import NatsConnection, subject_token, translate
from controlplane.errors import Unavailable

__all__ = ["NatsRpc", "RpcHandler"]

RpcHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class NatsRpc:
    """Request/reply between replicas on ``<prefix>.node.<node>.<action>``."""

    def __init__(self, conn: NatsConnection) -> None:
        self._conn = conn
        self._prefix = f"{conn.settings.nats_subject_prefix}.node."
        self._sub: Subscription | None = None

    def subject(self, node: str, action: str) -> str:
        return f"{self._prefix}{subject_token(node)}.{subject_token(action)}"

    async def serve(self, node: str, handler: RpcHandler) -> None:
        """Answer this node's requests: one wildcard subscription for every action."""

        async def on_request(msg: Msg) -> None:
            action = msg.subject.rsplit(".", 1)[-1]
            try:
                payload = _request(msg.data)
            except ValueError as exc:
                reply: dict[str, Any] = {"error": {"status": 400, "code": "bad_request",
                                                   "message": str(exc), "details": {}}}  # fmt: skip
            else:
                reply = await handler(action, payload)
            data = json.dumps(reply, separators=(",", ":")).encode()
            if len(data) > self._conn.client.max_payload:  # e.g. a very long session log
                data = json.dumps({"error": {
                    "status": 503, "code": "reply_too_large", "details": {},
                    "message": f"the answer to {action} exceeds the NATS message size limit",
                }}).encode()  # fmt: skip
            if msg.reply:
                with contextlib.suppress(nats.errors.Error):
                    await msg.respond(data)

        try:
            wildcard = f"{self._prefix}{subject_token(node)}.*"
            self._sub = await self._conn.client.subscribe(wildcard, cb=on_request)
        except nats.errors.Error as exc:
            raise translate("subscribing to owner requests", exc) from exc

    async def request(self, node: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One request to ``node``; Unavailable (503) when it does not answer."""
        data = json.dumps(payload, separators=(",", ":")).encode()
        timeout = self._conn.settings.nats_request_timeout_s
        try:
            msg = await self._conn.client.request(self.subject(node, action), data, timeout)
        except nats.errors.NoRespondersError:
            raise Unavailable(
                f"replica {node!r} that holds this session does not answer (no responders)",
                code="owner_unreachable", details={"node": node},
            ) from None  # fmt: skip
        except nats.errors.TimeoutError:
            raise Unavailable(
                f"replica {node!r} that holds this session did not answer in {timeout:.0f}s",
                code="owner_unreachable", details={"node": node},
            ) from None  # fmt: skip
        except nats.errors.Error as exc:
            raise translate(f"request to replica {node!r}", exc) from exc
        try:
            reply = json.loads(msg.data)
        except ValueError as exc:
            raise Unavailable(f"replica {node!r} answered garbage: {exc}") from None
        if not isinstance(reply, dict):
            raise Unavailable(f"replica {node!r} answered a non-object")
        return reply

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _request(data: bytes) -> dict[str, Any]:
    """A request body: a JSON object, else ValueError (anyone who may publish on the subject
    can send anything, a 5,000-deep array included)."""
    try:
        payload = json.loads(data)
    except RecursionError:
        raise ValueError("request is nested too deeply") from None
    if not isinstance(payload, dict):
        raise ValueError("request must be a JSON object")
    return payload
