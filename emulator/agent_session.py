"""Voice Agent session state that survives reconnects (config, conversation, timeline)."""

from __future__ import annotations

import secrets
from typing import Any

from emulator.agent_conversation import Conversation
from emulator.faults import FaultSpec
from emulator.inspection import SessionRecord, Stats
from emulator.settings import EmulatorSettings
from sessions.clock import Clock
from sessions.dialects import voice_agent_v1_table as table

__all__ = ["AgentSession"]

Payload = dict[str, Any]


class AgentSession:
    """State that survives reconnects: config, conversation, timeline."""

    def __init__(
        self,
        *,
        settings: EmulatorSettings,
        clock: Clock,
        stats: Stats,
        owner: str,
        config: dict[str, Any],
        connect: dict[str, Any],
        faults: FaultSpec,
        session_cap_s: float | None,
    ) -> None:
        self.id = "sess_" + secrets.token_hex(16)
        self.owner = owner
        self.settings = settings
        self.clock = clock
        self.stats = stats
        self.config = config
        self.resume_token = "rt-" + secrets.token_urlsafe(24)
        self.state = "active"  # active | suspended | ended
        self.suspended_at: float | None = None
        self.started = clock.monotonic()
        duration = settings.agent_session_seconds
        if session_cap_s is not None:
            duration = min(duration, session_cap_s)
        self.expires = self.started + duration
        self.expires_wall = int(clock.now() + duration)
        self.record = SessionRecord(
            session_id=self.id,
            kind=table.DIALECT,
            model=table.MODEL,
            clock=clock,
            connect=connect,
            config=config,
            faults=faults,
            timeline_max=settings.timeline_max_entries,
            turns_max=settings.turns_max_entries,
        )
        self.conversation = Conversation(settings, lambda: self.config, self.record, stats)
        self.record.extra = self._extra

    def _extra(self) -> dict[str, Any]:
        return {
            "session_state": self.state,
            "expires_at": self.expires_wall,
            "conversation": self.conversation.snapshot(),
        }

    def set_config(self, config: dict[str, Any]) -> None:
        self.config = config
        self.record.config = config
        self.conversation.config_changed()

    def ready(self) -> Payload:
        return {
            "type": "session.ready",
            "session_id": self.id,
            "expires_at": self.expires_wall,
            "resume_token": self.resume_token,
            "config": self.config,
            "timestamp": self.clock.now(),
        }

    def suspend(self, now: float) -> None:
        self.state = "suspended"
        self.suspended_at = now
        self.record.state = "suspended"

    def resumable(self, now: float) -> bool:
        return (
            self.state == "suspended"
            and self.suspended_at is not None
            and now - self.suspended_at <= self.settings.resume_window_s
        )
