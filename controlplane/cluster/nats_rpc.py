"""NATS adapter for owner requests: request/reply between replicas on
``<prefix>.node.<node>.<action>`` (core NATS, no stream). A replica answers its own node's
requests with ONE wildcard subscription, never one per session; ``controlplane.cluster.routing``
decides what is asked and turns replies back into results or errors.

With a policy signing key (``controlplane.signing``) a request is signed like a policy event,
over its subject instead of a ``Nats-Msg-Id`` (``Cp-Signature: v1=HMAC(key, subject + "\n" +
body)``), and carries ``sent_at`` (Unix seconds) and a random ``nonce``: a replica answers
only requests signed by a key it holds, for its own subject, sent within
``MAX_REQUEST_AGE_S`` and not answered before (a replay within the window: remembered in
memory and, with ``nonces`` (Redis in distributed mode), across the replica's restarts, so
bytes captured before a restart are still a replay after it); anything else gets
403 ``forbidden`` and runs nothing (a relabel moves a session in or out of a policy's ``match``,
so NATS publish rights alone must not do it where publish rights alone make no policy).
Its REPLY is signed the same way, over the requester's inbox subject: the requester takes the
first reply signed by a replica's key and ignores the others, so a NATS user that sees the
request (subscribe rights) cannot answer first with a forged session log or relabel result.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from controlplane.cluster.nats_bus import NatsConnection, subject_token, translate
from controlplane.errors import Unavailable
from controlplane.signing import SIGNATURE_HEADER, EventSigner
from sessions.errors import BackendUnavailable

__all__ = ["MAX_DEPTH", "MAX_REQUEST_AGE_S", "SENT_AT", "NatsRpc", "Nonces", "RpcHandler"]

log = logging.getLogger(__name__)

SENT_AT: Final = "sent_at"  # a signed request's wall-clock time (Unix seconds)
NONCE: Final = "nonce"  # makes every signed request unique: a second one is a replay
MAX_DEPTH: Final = 32  # levels of a request body, as the REST API's (api.inputs.MAX_DEPTH)
MAX_REQUEST_AGE_S: Final = 60.0  # a signed request further from now than this is refused

RpcHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class Nonces(Protocol):
    """Seen-once marks that outlive this process (``sessions.redis_nonces.RedisNonces``)."""

    async def first(self, digest: str, ttl_s: float) -> bool: ...

    async def close(self) -> None: ...


class NatsRpc:
    """Request/reply between replicas on ``<prefix>.node.<node>.<action>``."""

    def __init__(
        self, conn: NatsConnection, *, wall: Callable[[], float] = time.time,
        nonces: Nonces | None = None,
    ) -> None:  # fmt: skip
        self._conn = conn
        self._nonces = nonces
        self._prefix = f"{conn.settings.nats_subject_prefix}.node."
        self._sub: Subscription | None = None
        settings = conn.settings
        self._signer = EventSigner(settings.policy_signing_key, settings.policy_signing_key_file)
        self._wall = wall
        # signed requests answered within the freshness window: (forget at, digest)
        self._seen: set[bytes] = set()
        self._seen_order: deque[tuple[float, bytes]] = deque()

    def subject(self, node: str, action: str) -> str:
        return f"{self._prefix}{subject_token(node)}.{subject_token(action)}"

    async def serve(self, node: str, handler: RpcHandler) -> None:
        """Answer this node's requests: one wildcard subscription for every action."""

        async def on_request(msg: Msg) -> None:
            action = msg.subject.rsplit(".", 1)[-1]
            reply = await self._answer(msg, action, handler)
            data = json.dumps(reply, separators=(",", ":")).encode()
            if len(data) > self._conn.client.max_payload:  # e.g. a very long session log
                data = json.dumps({"error": {
                    "status": 503, "code": "reply_too_large", "details": {},
                    "message": f"the answer to {action} exceeds the NATS message size limit",
                }}).encode()  # fmt: skip
            if msg.reply:
                headers = self._signer.headers(msg.reply, data) or None
                with contextlib.suppress(nats.errors.Error):
                    await self._conn.client.publish(msg.reply, data, headers=headers)

        try:
            wildcard = f"{self._prefix}{subject_token(node)}.*"
            self._sub = await self._conn.client.subscribe(wildcard, cb=on_request)
        except nats.errors.Error as exc:
            raise translate("subscribing to owner requests", exc) from exc

    async def _answer(self, msg: Msg, action: str, handler: RpcHandler) -> dict[str, Any]:
        """The reply to one request: refused (403), not checkable (503: its replay check is
        down, fail closed), malformed (400), else the handler's."""
        try:
            refusal = await self._refusal(msg)
        except BackendUnavailable as exc:
            log.warning("owner request on %s not run: %s", msg.subject, exc)
            return _error(503, "backend_unavailable",
                          "owner request not run: its replay check is unavailable")  # fmt: skip
        if refusal is not None:
            log.warning("owner request on %s refused: %s", msg.subject, refusal)
            return _error(403, "forbidden", f"owner request refused: {refusal}")
        try:
            payload = _request(msg.data)
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        payload.pop(SENT_AT, None)
        payload.pop(NONCE, None)
        return await handler(action, payload)

    async def request(self, node: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One request to ``node`` (signed with a signing key); Unavailable (503) when it
        does not answer."""
        subject = self.subject(node, action)
        if self._signer.enabled:
            payload = {**payload, SENT_AT: self._wall(), NONCE: uuid.uuid4().hex}
        data = json.dumps(payload, separators=(",", ":")).encode()
        headers = self._signer.headers(subject, data) or None
        timeout = self._conn.settings.nats_request_timeout_s
        try:
            if self._signer.enabled:
                msg = await self._signed_reply(subject, data, headers, timeout)
            else:
                msg = await self._conn.client.request(subject, data, timeout, headers=headers)
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
        if self._nonces is not None:
            with contextlib.suppress(BackendUnavailable):
                await self._nonces.close()

    async def _signed_reply(
        self, subject: str, data: bytes, headers: dict[str, str] | None, wait_s: float
    ) -> Msg:
        """The first reply on a fresh inbox signed (over that inbox) by a key held here, not
        by a scoped key; others are logged and ignored. Raises as ``Client.request`` does."""
        client = self._conn.client
        inbox = client.new_inbox()
        sub = await client.subscribe(inbox)
        try:
            await client.publish(subject, data, reply=inbox, headers=headers)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while True:
                msg = await sub.next_msg(timeout=max(0.001, deadline - loop.time()))
                if (msg.headers or {}).get("Status") == "503" and not msg.data:
                    raise nats.errors.NoRespondersError
                why = self._signer.check(msg.headers, msg.data or b"", msg_id=inbox)
                if why is None:
                    return msg
                log.warning("reply to the owner request on %s ignored: not signed by a "
                            "replica's key (%s)", subject, why)  # fmt: skip
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _refusal(self, msg: Msg) -> str | None:
        """Why a request may not run (None: it may): with a signing key, it must be signed
        for this subject and sent within ``MAX_REQUEST_AGE_S`` (never the signature's text)."""
        if not self._signer.enabled:
            return None
        data = msg.data or b""
        why = self._signer.check(msg.headers, data, msg_id=msg.subject)
        if why == "unsigned":
            return f"no {SIGNATURE_HEADER} header (this cluster signs owner requests)"
        if why == "role_above_key":
            return "signed only by keys scoped to a role (owner requests need a replica's key)"
        if why is not None:
            return f"{SIGNATURE_HEADER} does not match (wrong key, other subject or changed body)"
        try:
            sent = _request(data).get(SENT_AT)
        except ValueError:
            return None  # signed by a key holder: answered 400 as before
        if isinstance(sent, bool) or not isinstance(sent, int | float):
            return f"signed, but no numeric {SENT_AT!r}"
        now = self._wall()
        if not abs(now - sent) <= MAX_REQUEST_AGE_S:  # (NaN too)
            return f"signed, but not sent within the last {MAX_REQUEST_AGE_S:g}s ({SENT_AT!r})"
        digest = hashlib.sha256(msg.subject.encode() + b"\n" + data).digest()
        replayed = self._replayed(digest, now)
        if replayed is not None or self._nonces is None:
            return replayed
        if not await self._nonces.first(digest.hex(), 2 * MAX_REQUEST_AGE_S):
            return "a replay of a request already answered (before this replica restarted)"
        return None

    def _replayed(self, digest: bytes, now: float) -> str | None:
        """A signed request seen within the window is a replay; this one is remembered until
        no copy of it can be fresh any more."""
        order, seen = self._seen_order, self._seen
        while order and order[0][0] < now:
            seen.discard(order.popleft()[1])
        if digest in seen:
            return "a replay of a request already answered"
        seen.add(digest)
        order.append((now + 2 * MAX_REQUEST_AGE_S, digest))
        return None


def _error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message, "details": {}}}


def _request(data: bytes) -> dict[str, Any]:
    """A request body: a JSON object at most ``MAX_DEPTH`` levels deep, else ValueError naming
    the limit (anyone who may publish on the subject can send anything, a 5,000-deep array
    included; the REST API's limit, ``api.inputs.MAX_DEPTH``)."""
    try:
        payload = json.loads(data)
        too_deep = _deeper_than(payload, MAX_DEPTH)
    except RecursionError:
        too_deep = True
    if too_deep:
        raise ValueError(f"request is nested deeper than {MAX_DEPTH} levels")
    if not isinstance(payload, dict):
        raise ValueError("request must be a JSON object")
    return payload


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether a decoded JSON value nests more than ``limit`` levels (no recursion)."""
    level: list[Any] = [value]
    for _ in range(limit + 1):
        level = [v for item in level if isinstance(item, dict | list)
                 for v in (item.values() if isinstance(item, dict) else item)]  # fmt: skip
        if not level:
            return False
    return True
