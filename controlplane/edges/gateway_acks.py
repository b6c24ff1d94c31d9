"""The gateway's Voice Agent leg: one ``session.update`` outstanding, answers attributed.

``AgentLink`` is the I/O around ``sessions.dialects.voice_agent_v1_upstream.AgentUpstream``
(the sans-I/O rules; read its docstring): it sends what the model hands out, passes each
answer in, forwards to the client exactly the answers to the client's own messages, and
records each verdict — our push's to the push engine (``acked``, ``rejected`` with the
refused fields, ``unverified`` with the reason), the client's as a ``client`` log entry when
its answer comes (``acked`` with the effect the upstream echoed, ``rejected``, or
``unverified``). An update without an answer within the acknowledgement timeout ends
(``unverified``) and frees the slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from controlplane.push.engine import LiveSession, param_fields
from controlplane.push.protocol import Push
from policies.fields import Delta
from sessions.dialects.base import ordered_fields
from sessions.dialects.voice_agent_v1 import VOICE_AGENT_V1
from sessions.dialects.voice_agent_v1_upstream import (
    AgentUpstream,
    Update,
    Verdict,
    canonical_view,
)
from sessions.errors import DialectError

if TYPE_CHECKING:
    from controlplane.service.plane import ControlPlane

__all__ = ["AgentLink"]

log = logging.getLogger(__name__)


class AgentLink:
    """One Voice Agent session's upstream leg (created per connection by the gateway)."""

    def __init__(
        self,
        service: ControlPlane,
        upstream: aiohttp.ClientWebSocketResponse,
        client: web.WebSocketResponse,
    ) -> None:
        self.service = service
        self.upstream = upstream
        self.client = client
        self.model = AgentUpstream(
            applies_rest=service.settings.agent_partial_updates == "apply_rest"
        )
        self.ls: LiveSession | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- outgoing ------------------------------------------------------------------------
    async def send_first(self, message: dict[str, Any]) -> None:
        self._arm(self.model.first(message))
        await self.upstream.send_str(json.dumps(message))

    async def push(self, push: Push, wire: dict[str, Any]) -> None:
        """One of our pushes: queued behind an outstanding update, else sent now. The
        engine's acknowledgement timer starts when it is written (``upstream_written``), so a
        push waiting for a slow client update never times out before it went out."""
        update = Update("ours", wire, version=push.version, token=push)
        if not self.model.submit(update):  # (the engine records it not sent: wire_failed)
            raise ConnectionError("too many session.update messages waiting for an answer")
        await self._pump()
        if self.ls is not None and update in self.model.queue:
            self.service.engine.upstream_queued(self.ls, push)

    async def client_update(self, message: dict[str, Any]) -> None:
        """The client's ``session.update`` (locked fields already stripped)."""
        if not self.model.submit(Update("client", message)):
            await _error(self.client, "invalid_format",
                         "too many session.update messages waiting for an answer")  # fmt: skip
            return
        await self._pump()

    async def client_other(self, text: str) -> None:
        """Any other client text that may draw a ``session.error`` (not audio)."""
        self.model.client_other()
        await self.upstream.send_str(text)

    async def _pump(self) -> None:
        while (update := self.model.next_to_send()) is not None:
            ls = self.ls
            if update.owner == "ours" and (ls is None or ls.push.in_flight is not update.token):
                self.model.withdraw(update)  # its outcome was recorded meanwhile (timeout)
                continue
            self._arm(update)
            if update.owner == "ours" and ls is not None:
                self.service.engine.upstream_written(ls, update.token)
            await self.upstream.send_str(update.text)
            return

    # -- answers ---------------------------------------------------------------------------
    async def ready(self, parsed: dict[str, Any]) -> None:
        config = parsed.get("config")
        self.model.on_ready(config if isinstance(config, dict) else {})
        self._disarm()
        await self._pump()

    async def answer(self, parsed: dict[str, Any], data: str) -> None:
        """A ``session.updated`` or non-fatal ``session.error`` from the upstream."""
        if parsed.get("type") == "session.updated":
            config = parsed.get("config")
            verdict = self.model.on_updated(config if isinstance(config, dict) else {})
        else:
            param = parsed.get("param")
            code = str(parsed.get("code") or "unknown").lower()
            verdict = self.model.on_error(
                code, param if isinstance(param, str) else None, str(parsed.get("message") or "")
            )
        if self.model.outstanding is None:
            self._disarm()
        if verdict.forward:
            with contextlib.suppress(Exception):
                await self.client.send_str(data)
        await self._settle(verdict, parsed)
        await self._pump()

    async def _settle(self, verdict: Verdict, parsed: dict[str, Any]) -> None:
        update, ls = verdict.update, self.ls
        if update is None or verdict.status is None or ls is None:
            return
        engine = self.service.engine
        if update.owner == "ours":
            if verdict.late or ls.push.in_flight is not update.token:
                log.info("session %s: late answer to push v%s ignored", ls.session.id,
                         update.version)  # fmt: skip
                return
            if verdict.status == "acked":
                await engine.upstream_acked(ls)
            elif verdict.status in ("rejected", "partial"):
                fields: set[str] = set()
                for param in verdict.params:
                    fields |= param_fields(param) or set()
                first = update.errors[0] if update.errors else None
                code = first[0] if first else str(parsed.get("code") or "unknown").lower()
                reason = (verdict.reason or "").removeprefix(f"{code}: ")  # the engine adds it
                if verdict.status == "rejected":
                    await engine.upstream_rejected(ls, code, reason, fields=fields or None)
                    return
                # the rest applied: what ran is what the echo shows (a field of the push
                # whose value the echo does not carry was refused)
                pushed = ls.push.in_flight  # (is update.token: checked above)
                assert pushed is not None
                echo = canonical_view(self.model.config or {})
                fields |= {f for f, v in pushed.delta.items() if echo.get(f) != v}
                await engine.upstream_partly_applied(ls, code, reason, fields=fields)
            else:
                await engine.upstream_unverified(ls, verdict.reason or "unattributed answer")
        elif update.owner == "client":
            await self._record_client(ls, update, verdict)

    async def _record_client(self, ls: LiveSession, update: Update, verdict: Verdict) -> None:
        engine = self.service.engine
        try:
            asked: Delta = VOICE_AGENT_V1.parse_client_update(update.message) or {}
        except DialectError:
            asked = {}
        if verdict.status not in ("acked", "partial"):
            engine.record(ls, cause="client", status=verdict.status or "unverified",
                          delta=asked, wire=update.message, error=verdict.reason)  # fmt: skip
            return
        note = None  # refused in part: the rest applied, the delta is what the echo shows
        if verdict.status == "partial":
            note = f"refused in part ({verdict.reason}); the rest applied"
        before = canonical_view(update.before or {})
        after = canonical_view(self.model.config or {})
        names = set(asked) | {n for n in set(before) | set(after) if before.get(n) != after.get(n)}
        delta: Delta = {n: after.get(n) for n in ordered_fields(names)}
        if delta:
            await engine.client_update(ls, delta, self.service.policies_for(ls))
        engine.record(ls, cause="client", status="acked", delta=delta, wire=update.message,
                      error=note)  # fmt: skip

    # -- timeouts --------------------------------------------------------------------------
    def _arm(self, update: Update) -> None:
        self._disarm()
        timeout = self.service.settings.ack_timeout_s
        self._timer = asyncio.get_running_loop().call_later(timeout, self._expired, update)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, update: Update) -> None:
        self._timer = None
        if not self.model.expire(update):
            return
        task = asyncio.get_running_loop().create_task(
            self._after_expiry(update), name="gateway-agent-expiry"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after_expiry(self, update: Update) -> None:
        ls = self.ls
        if update.owner == "client" and ls is not None:
            timeout = self.service.settings.ack_timeout_s
            reason = "; ".join([f"no answer within {timeout:g}s", *update.doubts])
            verdict = Verdict(False, update, "unverified", reason)
            await self._record_client(ls, update, verdict)
        await self._pump()

    async def close(self) -> None:
        """The session ended: a client update still waiting for its answer is logged
        ``unverified`` (the upstream may or may not have applied it)."""
        self._disarm()
        update, ls = self.model.outstanding, self.ls
        if update is not None and update.owner == "client" and ls is not None:
            self.model.expire(update)
            reason = "the session ended before the upstream answered"
            with contextlib.suppress(Exception):  # record() logs and counts a failure
                await self._record_client(ls, update, Verdict(False, update, "unverified", reason))
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _error(ws: web.WebSocketResponse, code: str, message: str) -> None:
    with contextlib.suppress(Exception):
        await ws.send_str(json.dumps({"type": "session.error", "code": code, "message": message}))
