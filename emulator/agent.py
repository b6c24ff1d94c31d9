"""Voice Agent socket state machine (sans-I/O): one ``AgentConnection`` per socket, driving an
``AgentSession`` (``emulator.agent_session``), which outlives a dropped socket for
``resume_window_s`` so ``session.resume`` works.

Connection states: *awaiting first message* (``session.update`` creates a session and answers
``session.ready``; ``session.resume`` re-attaches one; anything else -> ``session.error
invalid_format``, socket stays open) -> *attached* -> closed. Every received control message is
logged in the session timeline (messages before the session exists are logged once it does).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Mapping
from typing import Any, Protocol

from emulator.actions import Action, Close, Drop, Send
from emulator.agent_config import (
    ConfigProblem,
    default_config,
    immutable_changes,
    merge,
    resolve_formats,
    touched_paths,
    validate,
    without_paths,
)
from emulator.agent_conversation import session_error
from emulator.agent_session import AgentSession
from emulator.auth import Credential
from emulator.faults import FaultSpec, FaultState
from emulator.inspection import Stats
from emulator.settings import EmulatorSettings
from sessions.clock import Clock
from sessions.dialects import voice_agent_v1_table as table

__all__ = ["AgentConnection", "AgentDirectory"]

Payload = dict[str, Any]
_PRE_SESSION_LOG = 50


class AgentDirectory(Protocol):
    """Where sessions live between sockets (implemented by the server state)."""

    def create(self, session: AgentSession) -> None: ...

    def find(self, session_id: str) -> AgentSession | None: ...

    def expire(self, session: AgentSession) -> None: ...

    def attach(self, session_id: str, connection: AgentConnection) -> None: ...


class AgentConnection:
    """One ``/v1/ws`` socket."""

    def __init__(
        self,
        *,
        settings: EmulatorSettings,
        clock: Clock,
        stats: Stats,
        credential: Credential,
        directory: AgentDirectory,
        connect: dict[str, Any],
        default_faults: FaultSpec,
    ) -> None:
        self._s = settings
        self._clock = clock
        self._stats = stats
        self._credential = credential
        self._directory = directory
        self._connect = connect
        self._pre_faults = FaultState(default_faults)
        self._default_faults = default_faults
        self._pre_log: list[dict[str, Any]] = []
        self.session: AgentSession | None = None
        self.closed = False
        self.closed_by = "client"
        self.close_code: int | None = None
        self.close_reason = ""
        self.ended = False  # session.end / fatal: the session is over, not resumable

    @property
    def faults(self) -> FaultState:
        return self.session.record.faults if self.session else self._pre_faults

    # --- adapter API --------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if self.closed or self.session is None:
            return None
        deadline = self.session.expires
        pending = self.session.conversation.next_deadline()
        return deadline if pending is None else min(deadline, pending)

    def on_timer(self, now: float) -> list[Action]:
        session = self.session
        if self.closed or session is None:
            return []
        if now >= session.expires:
            return self._end(
                [session_error("session_expired", "Session expired", session_id=session.id)],
                table.CLOSE["policy"],
                "session expired",
            )
        return [Send(p) for p in session.conversation.on_timer(now)]

    def peer_closed(self, code: int | None) -> None:
        self.closed = True

    def server_close(self, code: int, reason: str) -> list[Action]:
        """Operator-injected failure: ``session.error`` then close; the session ends."""
        if self.closed:
            return []
        error_code = "internal_error" if code == table.CLOSE["internal"] else "server_error"
        payload = session_error(_case(error_code, self._s), reason, timestamp=self._clock.now())
        self._stats.inc(table.DIALECT, "errors")
        self._mark_closed(ended=True)
        return [Send(payload), self._close(code, reason)]

    def receive_text(self, text: str, now: float) -> list[Action]:
        if self.closed:
            return []
        at = self._clock.now()
        message: Any = text
        try:
            message = json.loads(text)
        except ValueError:
            payloads = [session_error("invalid_format", "Invalid JSON")]
        else:
            if not isinstance(message, dict):
                payloads = [session_error("invalid_format", "Messages must be JSON objects")]
            else:
                payloads = self._dispatch(message, now)
        actions = self._actions(payloads)
        audio = isinstance(message, dict) and message.get("type") == "input.audio"
        if not audio:
            self._stats.inc(table.DIALECT, "control_messages")
            if self.session is not None:
                self.session.record.counters["control_messages"] += 1
        if not self.closed and not audio and self.faults.count_message():
            self._stats.inc(table.DIALECT, "faults_dropped")
            actions.append(Drop())
            self.closed = True
        if not audio or any(p["type"] == "session.error" for p in payloads):
            self._log(at, now, message, payloads, actions)
        return actions

    # --- dispatch -----------------------------------------------------------------------------

    def _dispatch(self, message: dict[str, Any], now: float) -> list[Payload]:
        kind = message.get("type")
        session = self.session
        if session is None:
            if kind == "session.update":
                return self._first_update(message, now)
            if kind == "session.resume":
                return self._resume(message, now)
            if kind == "input.audio":
                return [session_error("invalid_format", "input.audio before session.ready")]
            return [
                session_error(
                    "invalid_format", "The first message must be session.update or session.resume"
                )
            ]
        if kind == "input.audio":
            return self._audio(session, message, now)
        if kind == "session.update":
            return self._update(session, message)
        if kind == "session.end":
            return self._session_end(session, now)
        if kind == "tool.result":
            return session.conversation.tool_result(message, now)
        if kind == "reply.create":
            instructions = message.get("instructions")
            text = instructions if isinstance(instructions, str) and instructions else None
            return session.conversation.say(text or "How can I help you?", "reply.create", now)
        if kind == "reply.cancel":
            reply_id = message.get("reply_id")
            return session.conversation.cancel(reply_id if isinstance(reply_id, str) else None, now)
        if kind == "conversation.message":
            role, content = message.get("role"), message.get("content")
            if role not in ("user", "system", "assistant") or not isinstance(content, str):
                return [
                    session_error("invalid_value", "role must be user|system, content a string")
                ]
            session.conversation.history.append({"role": str(role), "content": content})
            return []
        if kind == "session.resume":
            return [
                session_error("invalid_format", "session.resume is only valid as the first message")
            ]
        return [session_error("invalid_format", f"Unknown message type: {kind}")]

    def _first_update(self, message: dict[str, Any], now: float) -> list[Payload]:
        body = message.get("session", {})
        problem = validate(body, self._s)
        if problem is not None:
            return [_problem(problem)]
        if "agent_id" in body:
            if len(body) > 1:
                return [
                    session_error("invalid_config", "agent_id must be the only field", "agent_id")
                ]
            stored = self._s.agents.get(body["agent_id"])
            if stored is None:
                return [
                    session_error(
                        "agent_not_found", f"agent {body['agent_id']!r} not found", "agent_id"
                    )
                ]
            body = dict(stored)
        config = resolve_formats(merge(default_config(self._s), body))
        session = AgentSession(
            settings=self._s,
            clock=self._clock,
            stats=self._stats,
            owner=self._credential.owner,
            config=config,
            connect=self._connect,
            faults=self._default_faults,
            session_cap_s=self._credential.session_cap_s,
        )
        self.session = session
        self._directory.create(session)
        self._directory.attach(session.id, self)
        out = [session.ready()]
        greeting = config.get("greeting")
        if isinstance(greeting, str) and greeting:
            out.extend(session.conversation.say(greeting, "greeting", now))
        return out

    def _resume(self, message: dict[str, Any], now: float) -> list[Payload]:
        session_id = message.get("session_id")
        found = self._directory.find(session_id) if isinstance(session_id, str) else None
        not_found = session_error(
            "session_not_found", "Session not found or grace window has expired"
        )
        if self._s.resume_mode == "always_not_found" or found is None:
            return [not_found]
        if found.state == "suspended" and not found.resumable(now):
            self._directory.expire(found)
            return [not_found]
        if found.state != "suspended":
            return [not_found]
        credential = self._credential
        if credential.method == "resume_token":
            allowed = credential.resume_token == found.resume_token
        else:
            allowed = credential.owner == found.owner
        if not allowed:
            return [session_error("session_forbidden", "Session belongs to another account")]
        found.state = "active"
        found.suspended_at = None
        found.record.state = "open"
        found.record.counters["connections"] += 1
        found.resume_token = "rt-" + secrets.token_urlsafe(24)
        self.session = found
        self._directory.attach(found.id, self)
        return [found.ready()]

    def _audio(self, session: AgentSession, message: dict[str, Any], now: float) -> list[Payload]:
        raw = message.get("audio")
        try:
            if not isinstance(raw, str):
                raise ValueError("audio must be a base64 string")
            data = base64.b64decode(raw, validate=True)
        except (ValueError, binascii.Error):
            return [session_error("invalid_audio", "audio is not valid base64", "audio")]
        session.record.counters["audio_messages"] += 1
        session.record.counters["audio_bytes"] += len(data)
        self._stats.inc(table.DIALECT, "audio_messages")
        self._stats.inc(table.DIALECT, "audio_bytes", len(data))
        return session.conversation.audio(data, now)

    def _update(self, session: AgentSession, message: dict[str, Any]) -> list[Payload]:
        session.record.counters["updates"] += 1
        self._stats.inc(table.DIALECT, "updates")
        body = message.get("session")
        reject = session.record.faults.take_reject()
        if reject is not None:
            code = reject.code if isinstance(reject.code, str) else "invalid_config"
            return [session_error(code, reject.message or "session.update rejected (fault)")]
        problem = validate(body, self._s)
        if problem is not None:
            return [_problem(problem)]
        assert isinstance(body, Mapping)
        if "agent_id" in body:
            return [
                session_error("agent_id_not_first", "agent_id is only allowed first", "agent_id")
            ]
        refused: dict[str, str] = dict.fromkeys(
            immutable_changes(session.config, body), "immutable_field"
        )
        for path, fault_code in session.record.faults.failing(touched_paths(body)).items():
            refused.setdefault(path, str(fault_code))
        out: list[Payload] = []
        for path, code in refused.items():
            text = (
                f"{path} cannot be changed after session.ready"
                if code == "immutable_field"
                else f"{path} was rejected"
            )
            out.append(session_error(code, text, path))
        if refused:
            if self._s.immutable_policy == "reject_message":
                return out
            body = without_paths(body, list(refused))
        config = resolve_formats(merge(session.config, body))
        session.set_config(config)
        out.append({"type": "session.updated", "config": config, "timestamp": self._clock.now()})
        return out

    def _session_end(self, session: AgentSession, now: float) -> list[Payload]:
        return [
            {
                "type": "session.ended",
                "session_duration_seconds": round(now - session.started, 3),
                "audio_duration_seconds": round(session.conversation.audio_ms / 1000.0, 3),
                "timestamp": self._clock.now(),
            }
        ]

    # --- helpers ------------------------------------------------------------------------------

    def _actions(self, payloads: list[Payload]) -> list[Action]:
        actions: list[Action] = []
        for payload in payloads:
            kind = payload["type"]
            if kind == "session.error":
                payload.setdefault("timestamp", self._clock.now())
                self._stats.inc(table.DIALECT, "errors")
                if self.session is not None:
                    self.session.record.counters["errors"] += 1
                code = str(payload["code"])
                if code in ("unauthorized", "forbidden", "internal_error"):
                    payload["code"] = _case(code, self._s)
                actions.append(Send(payload))
                if code not in table.NON_FATAL_ERROR_CODES:
                    actions.append(self._close(table.CLOSE["policy"], payload["message"]))
                    self._mark_closed(ended=code not in ("session_not_found", "session_forbidden"))
                    break
            elif kind == "session.ended":
                actions.append(Send(payload))
                actions.append(self._close(table.CLOSE["normal"], ""))
                self._mark_closed(ended=True)
                break
            else:
                actions.append(Send(payload))
        return actions

    def _end(self, payloads: list[Payload], code: int, reason: str) -> list[Action]:
        session = self.session
        assert session is not None
        ended = self._session_end(session, self._clock.monotonic())
        actions: list[Action] = [Send(p) for p in payloads]
        actions += [Send(ended[0]), self._close(code, reason)]
        self._mark_closed(ended=True)
        return actions

    def _close(self, code: int, reason: str) -> Close:
        self.close_code, self.close_reason = code, reason[:120]
        return Close(code, self.close_reason)

    def _mark_closed(self, ended: bool) -> None:
        self.closed = True
        self.closed_by = "server"
        if ended and self.session is not None:
            self.ended = True
            self.session.state = "ended"

    def _log(
        self, at: float, now: float, message: Any, payloads: list[Payload], actions: list[Action]
    ) -> None:
        if isinstance(message, dict) and message.get("type") == "input.audio":
            audio = message.get("audio")
            size = len(audio) if isinstance(audio, str) else None
            message = {**message, "audio": f"<{size} base64 chars>"}
        sent: list[dict[str, Any]] = []
        for payload in payloads:
            if payload["type"] == "session.error":
                sent.append(payload)
            elif payload["type"] in ("session.ready", "session.updated", "session.ended"):
                sent.append({"type": payload["type"]})
        for action in actions:
            if isinstance(action, Close):
                sent.append({"close": {"code": action.code, "reason": action.reason}})
            elif isinstance(action, Drop):
                sent.append({"drop": True})
        session = self.session
        entry = {"at": at, "monotonic": now, "message": message, "sent": sent}
        if session is None:
            if len(self._pre_log) < _PRE_SESSION_LOG:
                self._pre_log.append(entry)
            return
        for early in self._pre_log:
            session.record.log(config=None, audio_ms=0.0, **early)
        self._pre_log.clear()
        extra: dict[str, Any] = {}
        if isinstance(message, dict) and message.get("type") == "session.update":
            extra["applies_from"] = session.conversation.position()
        session.record.log(
            at=at,
            monotonic=now,
            message=message,
            config=session.config,
            audio_ms=session.conversation.audio_ms,
            sent=sent,
            **extra,
        )


def _problem(problem: ConfigProblem) -> Payload:
    return session_error(problem.code, problem.message, problem.param)


def _case(code: str, settings: EmulatorSettings) -> str:
    return code.upper() if settings.agent_error_code_case == "upper" else code
