"""What the emulator remembers for inspection: per-session timeline, turn log and counters.

Memory is bounded: each session keeps its last ``timeline_max_entries`` timeline entries (plus a
``timeline_dropped`` count) and ``turns_max_entries`` turns; closed sessions are forgotten
oldest-first beyond ``max_closed_sessions``. Config dicts are treated as immutable values
(replaced, never mutated), so unchanged configs are shared between entries, not copied.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any

from emulator.faults import FaultSpec, FaultState
from sessions.clock import Clock
from sessions.dialects.streaming_v3_table import DIALECT as STREAMING
from sessions.dialects.voice_agent_v1_table import DIALECT as AGENT

__all__ = ["KINDS", "Registry", "SessionRecord", "Stats"]

KINDS = (STREAMING, AGENT)

_COUNTERS = (
    "sessions_opened",
    "sessions_closed",
    "connections_rejected",
    "control_messages",
    "updates",
    "warnings",
    "errors",
    "audio_messages",
    "audio_bytes",
    "turns",
    "faults_dropped",
)


class Stats:
    """Aggregate counters per kind (``GET /_emulator/stats``)."""

    def __init__(self) -> None:
        self._by_kind: dict[str, dict[str, int]] = {
            kind: dict.fromkeys(_COUNTERS, 0) for kind in KINDS
        }

    def inc(self, kind: str, name: str, amount: int = 1) -> None:
        self._by_kind[kind][name] += amount

    def snapshot(self, current: dict[str, int]) -> dict[str, Any]:
        kinds = {}
        for kind, counters in self._by_kind.items():
            kinds[kind] = {**counters, "sessions_current": current.get(kind, 0)}
        totals = {name: sum(k[name] for k in kinds.values()) for name in kinds[STREAMING]}
        return {"kinds": kinds, "total": totals}


class SessionRecord:
    """The inspectable side of one session (created by the session machine that owns it)."""

    def __init__(
        self,
        *,
        session_id: str,
        kind: str,
        model: str,
        clock: Clock,
        connect: dict[str, Any],
        config: dict[str, Any],
        faults: FaultSpec,
        timeline_max: int,
        turns_max: int,
    ) -> None:
        self.id = session_id
        self.kind = kind
        self.model = model
        self.state = "open"
        self.opened_at = clock.now()
        self.opened_monotonic = clock.monotonic()
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by: str | None = None
        self.connect = connect
        self.config = config
        self.faults = FaultState(faults)
        self.timeline: deque[dict[str, Any]] = deque(maxlen=timeline_max)
        self.timeline_dropped = 0
        self.turns: deque[dict[str, Any]] = deque(maxlen=turns_max)
        self.turns_dropped = 0
        self.counters: dict[str, int] = {
            "control_messages": 0,
            "updates": 0,
            "warnings": 0,
            "errors": 0,
            "audio_messages": 0,
            "audio_bytes": 0,
            "turns": 0,
            "connections": 1,
        }
        self.extra: Callable[[], dict[str, Any]] = dict
        self._seq = 0

    def log(
        self,
        *,
        at: float,
        monotonic: float,
        message: Any,
        config: dict[str, Any] | None,
        audio_ms: float,
        sent: list[dict[str, Any]],
        **extra: Any,
    ) -> None:
        """Append one timeline entry for a received control message."""
        if len(self.timeline) == self.timeline.maxlen:
            self.timeline_dropped += 1
        self._seq += 1
        entry = {
            "seq": self._seq,
            "at": at,
            "monotonic": monotonic,
            "audio_ms": round(audio_ms, 1),
            "message": message,
            "config": config,
            "sent": sent,
        }
        entry.update(extra)
        self.timeline.append(entry)

    def add_turn(self, turn: dict[str, Any]) -> None:
        if len(self.turns) == self.turns.maxlen:
            self.turns_dropped += 1
        self.counters["turns"] += 1
        self.turns.append(turn)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "model": self.model,
            "state": self.state,
            "open": self.state != "closed",
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
        }

    def detail(self) -> dict[str, Any]:
        doc = self.summary()
        doc.update(
            closed_by=self.closed_by,
            connect=self.connect,
            config=self.config,
            counters=dict(self.counters),
            faults=self.faults.to_dict(),
            timeline=list(self.timeline),
            timeline_dropped=self.timeline_dropped,
            turns=list(self.turns),
            turns_dropped=self.turns_dropped,
        )
        doc.update(self.extra())
        return doc


class Registry:
    """Open, suspended and recently closed sessions, plus the aggregate counters."""

    def __init__(self, clock: Clock, max_closed: int, default_faults: FaultSpec) -> None:
        self.clock = clock
        self.stats = Stats()
        self.default_faults = default_faults
        self._max_closed = max_closed
        self._live: dict[str, SessionRecord] = {}
        self._closed: OrderedDict[str, SessionRecord] = OrderedDict()
        self._current: dict[str, int] = dict.fromkeys(KINDS, 0)

    def add(self, record: SessionRecord) -> None:
        self._live[record.id] = record
        self._current[record.kind] += 1
        self.stats.inc(record.kind, "sessions_opened")

    def close(self, record: SessionRecord, code: int | None, reason: str, by: str) -> None:
        if record.state == "closed":
            return
        record.state = "closed"
        record.closed_at = self.clock.now()
        record.close_code = code
        record.close_reason = reason
        record.closed_by = by
        if self._live.pop(record.id, None) is not None:
            self._current[record.kind] -= 1
        self._closed[record.id] = record
        self.stats.inc(record.kind, "sessions_closed")
        while len(self._closed) > self._max_closed:
            self._closed.popitem(last=False)

    def get(self, session_id: str) -> SessionRecord | None:
        return self._live.get(session_id) or self._closed.get(session_id)

    def records(self) -> Iterator[SessionRecord]:
        yield from self._live.values()
        yield from reversed(self._closed.values())

    def current(self, kind: str) -> int:
        return self._current[kind]

    def current_by_kind(self) -> dict[str, int]:
        return dict(self._current)

    def forget_closed(self) -> int:
        count = len(self._closed)
        self._closed.clear()
        return count
