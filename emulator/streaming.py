"""Streaming v3 session state machine (sans-I/O: frames and clock readings in, actions out).

The socket adapter (``emulator.server``) feeds ``receive_text`` / ``receive_audio`` /
``on_timer`` and executes the returned ``Send`` / ``Close`` / ``Drop`` actions in order. Every
received control message is logged in the session's timeline with the effective config after
it and whatever Warning / Error it caused.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from typing import Any

from emulator import streaming_messages as msg
from emulator.actions import Action, Close, Drop, Send
from emulator.audio import Pacer, SpeechMeter, chunk_duration_ms, format_ms
from emulator.faults import FaultSpec, RejectSpec
from emulator.inspection import SessionRecord, Stats
from emulator.settings import EmulatorSettings
from emulator.silence import SilenceReporter
from emulator.streaming_config import Rejection, apply_update
from emulator.turns import (
    PartialDue,
    Paused,
    Turn,
    TurnDetector,
    TurnEnded,
    TurnEvent,
    TurnParams,
    WordsGrew,
    completion_score,
)
from sessions.clock import Clock
from sessions.dialects import streaming_v3_table as table

__all__ = ["StreamingSession", "close_reason"]

EARLY_PARTIAL_FIXED_MS = 256  # SKILL-S: the server adds a fixed 256 ms to interruption_delay
CONTINUOUS_PARTIAL_MS = 1000  # SKILL-S: ~1 s with continuous_partials, ~3 s without
SPARSE_PARTIAL_MS = 3000
MAX_TURN_MS = 60_000  # SKILL-S: max turn duration
_CLOSE_REASON_BYTES = 123  # RFC 6455: control frame payload 125 bytes minus the code


def close_reason(text: str) -> str:
    """Trim a close reason to what fits in a close frame (UTF-8 safe)."""
    raw = text.encode()
    if len(raw) <= _CLOSE_REASON_BYTES:
        return text
    return raw[:_CLOSE_REASON_BYTES].decode(errors="ignore")


class StreamingSession:
    """One ``/v3/ws`` session from ``Begin`` to close."""

    def __init__(
        self,
        *,
        settings: EmulatorSettings,
        clock: Clock,
        stats: Stats,
        config: dict[str, Any],
        ignored: list[str],
        connect: dict[str, Any],
        api_version: str,
        faults: FaultSpec,
        session_cap_s: float | None = None,
    ) -> None:
        self.id = str(uuid.uuid4())
        self._settings = settings
        self._clock = clock
        self._stats = stats
        self._api_version = api_version
        self.config = config
        self.model = str(config["speech_model"])
        self.u3 = table.is_u3_pro(self.model)
        self.record = SessionRecord(
            session_id=self.id,
            kind=table.DIALECT,
            model=self.model,
            clock=clock,
            connect={**connect, "ignored_params": ignored, "api_version": api_version},
            config=config,
            faults=faults,
            timeline_max=settings.timeline_max_entries,
            turns_max=settings.turns_max_entries,
        )
        self.record.extra = self._extra
        self.started = clock.monotonic()
        self._started_wall = clock.now()
        duration = settings.max_session_seconds
        if session_cap_s is not None:
            duration = min(duration, session_cap_s)
        self.expires_at = self.started + duration
        self._expires_wall = int(self._started_wall + duration)
        self.closed = False
        self.closed_by = "client"
        self.audio_ms = 0.0
        self._encoding = str(config["encoding"])
        self._sample_rate = int(config.get("sample_rate", 0))
        self._meter = SpeechMeter(
            self._encoding, self._sample_rate, settings.vad_floor_dbfs, settings.vad_ceiling_dbfs
        )
        self._pacer = Pacer(settings.pacing_window_s, settings.pacing_tolerance_ms)
        self._params = self._turn_params()
        self.detector = TurnDetector(
            lambda: self._params, self._keyterms, settings.transcript_seed, settings.word_ms
        )
        depth = int(config.get("previous_context_n_turns", settings.carryover_depth))
        self.carryover: deque[dict[str, str]] = deque(maxlen=depth or None)
        self._carry_enabled = depth > 0
        if isinstance(config.get("agent_context"), str) and config["agent_context"]:
            self._carry("agent_context", config["agent_context"])
        self._last_activity = self.started
        # Silence messages: U3-Pro only, opt-in (emulator.silence)
        wants_silence = self.u3 and config.get("acknowledge_silence") is True
        self._silence = SilenceReporter() if wants_silence else None
        self._next_heartbeat: float | None = None
        self._schedule_heartbeat(self.started)

    # --- public API -------------------------------------------------------------------------

    def begin(self) -> list[Action]:
        return [Send(msg.begin(self.id, self._expires_wall, self.config, self._api_version))]

    def next_deadline(self) -> float | None:
        if self.closed:
            return None
        deadline = self.expires_at
        if self._next_heartbeat is not None:
            deadline = min(deadline, self._next_heartbeat)
        timeout = self.config.get("inactivity_timeout")
        if timeout:
            deadline = min(deadline, self._last_activity + timeout)
        return deadline

    def on_timer(self, now: float) -> list[Action]:
        if self.closed:
            return []
        if now >= self.expires_at:
            return self._fail(
                table.CLOSE["expired"], "Session Expired: Maximum session duration exceeded"
            )
        timeout = self.config.get("inactivity_timeout")
        if timeout and now >= self._last_activity + timeout:
            return self._fail(table.CLOSE["invalid_message"], "Session idle for too long")
        out: list[Action] = []
        if self._next_heartbeat is not None and now >= self._next_heartbeat:
            duration_ms = (now - self.started) * 1000.0
            out.append(
                Send(msg.heartbeat(self.audio_ms, duration_ms, self.detector.max_probability))
            )
            self.detector.max_probability = 0.0
            self._next_heartbeat = now + self._settings.heartbeat_interval_s
        return out

    def receive_audio(self, data: bytes, now: float) -> list[Action]:
        if self.closed:
            return []
        self.record.counters["audio_messages"] += 1
        self.record.counters["audio_bytes"] += len(data)
        self._stats.inc(table.DIALECT, "audio_messages")
        self._stats.inc(table.DIALECT, "audio_bytes", len(data))
        self._last_activity = now
        ms = chunk_duration_ms(len(data), self._encoding, self._sample_rate)
        if ms is not None:
            low, high = table.LIMITS["chunk_min_ms"], table.LIMITS["chunk_max_ms"]
            if self._settings.enforce_chunk_duration and not low - 1e-9 <= ms <= high + 1e-9:
                return self._fail(
                    table.CLOSE["audio_violation"],
                    f"Input duration violation: {format_ms(ms)} ms. "
                    f"Expected between {low} and {high} ms",
                )
            too_fast = self._pacer.add(now, ms)
            if too_fast is not None:
                audio_s, wall_s = too_fast
                return self._fail(
                    table.CLOSE["audio_violation"],
                    f"Audio Transmission Rate Exceeded: Received {audio_s:.1f} sec. "
                    f"audio in {wall_s:.1f} sec",
                )
            self.audio_ms += ms
        out: list[Action] = []
        for probability, frame_ms in self._meter.frames(data):
            events = self.detector.feed(probability, frame_ms)
            if events:
                out.extend(self._turn_messages(events))
            if self._silence is not None:
                due = self._silence.after_frame(self.detector.audio_ms,
                                                self.detector.current is not None)  # fmt: skip
                if due is not None:
                    out.append(Send(due))
        return out

    def receive_text(self, text: str, now: float) -> list[Action]:
        if self.closed:
            return []
        at = self._clock.now()
        self.record.counters["control_messages"] += 1
        self._stats.inc(table.DIALECT, "control_messages")
        sent: list[dict[str, Any]] = []
        extra: dict[str, Any] = {}
        message: Any = text
        try:
            message = json.loads(text)
        except ValueError:
            out = self._fail(table.CLOSE["invalid_message"], f"Invalid JSON: {text}")
        else:
            if not isinstance(message, dict) or "type" not in message:
                out = self._fail(table.CLOSE["invalid_message"], f"Invalid Message: {text}")
            else:
                out = self._dispatch(message, now, extra)
        for action in out:
            if isinstance(action, Send) and action.payload["type"] in ("Warning", "Error"):
                sent.append(action.payload)
            elif isinstance(action, Close):
                sent.append({"close": {"code": action.code, "reason": action.reason}})
        if not self.closed and self.record.faults.count_message():
            self._stats.inc(table.DIALECT, "faults_dropped")
            out.append(Drop())
            sent.append({"drop": True})
            self._closed_locally(None, "fault: drop_after_messages")
        self.record.log(
            at=at,
            monotonic=now,
            message=message,
            config=self.config,
            audio_ms=self.audio_ms,
            sent=sent,
            **extra,
        )
        return out

    def server_close(self, code: int, reason: str) -> list[Action]:
        """Operator-injected failure (``POST /_emulator/sessions/{id}/close``)."""
        if self.closed:
            return []
        return self._fail(code, reason)

    def peer_closed(self, code: int | None) -> None:
        """The client closed (or the connection dropped) first."""
        if not self.closed:
            self.closed = True
            self.record.close_code = code
            self.closed_by = "client"

    # --- message handling -------------------------------------------------------------------

    def _dispatch(self, message: dict[str, Any], now: float, extra: dict[str, Any]) -> list[Action]:
        kind = message.get("type")
        if kind == "UpdateConfiguration":
            return self._update(message, extra)
        if kind == "ForceEndpoint":
            ended = self.detector.force_end("force_endpoint")
            return self._turn_messages([ended]) if ended else []
        if kind == "KeepAlive":
            self._last_activity = now
            return []
        if kind == "Terminate":
            out: list[Action] = []
            ended = self.detector.force_end("terminate")
            if ended is not None:
                out.extend(self._turn_messages([ended]))
            session_s = now - self.started
            out.append(Send(msg.termination(self.audio_ms, session_s)))
            out.append(Close(table.CLOSE["normal"], ""))
            self._closed_locally(table.CLOSE["normal"], "terminated")
            return out
        return self._fail(table.CLOSE["invalid_message"], f"Invalid Message Type: {kind}")

    def _update(self, message: dict[str, Any], extra: dict[str, Any]) -> list[Action]:
        self.record.counters["updates"] += 1
        self._stats.inc(table.DIALECT, "updates")
        extra["applies_from"] = {
            "audio_ms": round(self.audio_ms, 1),
            "turn_order": self.detector.next_order,
            "open_turn": self.detector.current.order if self.detector.current else None,
        }
        reject = self.record.faults.take_reject()
        if reject is not None:
            extra["fault"] = "reject_next_update"
            return self._fault_reject(reject)
        out: list[Action] = []
        failing = self.record.faults.failing([k for k in message if k != "type"])
        if failing:
            extra["fault"] = "fail_fields"
            message = {k: v for k, v in message.items() if k not in failing}
            for name, code in failing.items():
                number = code if isinstance(code, int) else self._settings.warning_code
                out.append(self._warn(number, f"{name} was rejected and ignored ({code})"))
        result = apply_update(self.config, message, self._settings)
        if result.rejection is not None:
            return out + self._reject(result.rejection)
        for name in result.stripped:
            out.append(
                self._warn(
                    self._settings.warning_code,
                    f"{name} is not supported by model {self.model} and was ignored",
                )
            )
        extra["applied"] = result.applied
        if result.stripped:
            extra["stripped"] = result.stripped
        if result.ignored:
            extra["ignored"] = result.ignored
        if result.applied:
            self._set_config(result.config)
            if "agent_context" in result.applied:
                self._carry("agent_context", result.applied["agent_context"])
            if "session_heartbeat" in result.applied:
                self._schedule_heartbeat(self._clock.monotonic())
        return out

    def _fault_reject(self, reject: RejectSpec) -> list[Action]:
        if reject.style == "warning":
            code = reject.code if isinstance(reject.code, int) else self._settings.warning_code
            return [self._warn(code, reject.message or "UpdateConfiguration rejected")]
        code = reject.code if isinstance(reject.code, int) else table.CLOSE["invalid_message"]
        return self._fail(code, reject.message or "Invalid Message: UpdateConfiguration rejected")

    def _reject(self, rejection: Rejection) -> list[Action]:
        return self._fail(rejection.code, rejection.message)

    # --- helpers ----------------------------------------------------------------------------

    def _warn(self, code: int, text: str) -> Send:
        self.record.counters["warnings"] += 1
        self._stats.inc(table.DIALECT, "warnings")
        return Send(msg.warning(code, text))

    def _fail(self, code: int, text: str) -> list[Action]:
        self.record.counters["errors"] += 1
        self._stats.inc(table.DIALECT, "errors")
        out: list[Action] = []
        if self._settings.error_frame_before_close:
            out.append(Send(msg.error(code, text)))
        reason = close_reason(text)
        out.append(Close(code, reason))
        self._closed_locally(code, reason)
        return out

    def _closed_locally(self, code: int | None, reason: str) -> None:
        self.closed = True
        self.record.close_code = code
        self.record.close_reason = reason
        self.closed_by = "server"

    def _set_config(self, config: dict[str, Any]) -> None:
        self.config = config
        self.record.config = config
        self._params = self._turn_params()

    def _keyterms(self) -> tuple[str, ...]:
        return tuple(self.config.get("keyterms_prompt") or ())

    def _carry(self, source: str, text: str) -> None:
        if self._carry_enabled:
            self.carryover.append({"source": source, "text": text})

    def _schedule_heartbeat(self, now: float) -> None:
        enabled = bool(self.config.get("session_heartbeat"))
        if not enabled:
            self._next_heartbeat = None
        elif self._next_heartbeat is None:
            self._next_heartbeat = now + self._settings.heartbeat_interval_s

    def _turn_params(self) -> TurnParams:
        c = self.config
        if self.u3:
            continuous = bool(c.get("continuous_partials", True))
            return TurnParams(
                min_silence_ms=float(c["min_turn_silence"]),
                max_silence_ms=float(c["max_turn_silence"]),
                vad_threshold=float(c["vad_threshold"]),
                min_silence_end_threshold=1.0 - self._settings.turn_complete_ratio,
                early_partial_ms=float(c.get("interruption_delay", 0)) + EARLY_PARTIAL_FIXED_MS,
                partial_interval_ms=CONTINUOUS_PARTIAL_MS if continuous else SPARSE_PARTIAL_MS,
                max_turn_ms=MAX_TURN_MS,
            )
        return TurnParams(
            min_silence_ms=float(c["min_turn_silence"]),
            max_silence_ms=float(c["max_turn_silence"]),
            vad_threshold=float(c["vad_threshold"]),
            min_silence_end_threshold=float(c["end_of_turn_confidence_threshold"]),
            max_turn_ms=MAX_TURN_MS,
        )

    def _turn_messages(self, events: list[TurnEvent]) -> list[Action]:
        out: list[Action] = []
        word_ms = self.detector.word_ms
        seed = self._settings.transcript_seed
        for event in events:
            turn = event.turn
            if isinstance(event, TurnEnded):
                words = turn.words(True, word_ms)
                score = completion_score(seed, turn.order)
                speaker = "A" if self.config.get("speaker_labels") else None
                language = bool(self.config.get("language_detection"))
                if self.u3:
                    out.extend(self._speech_started(turn))
                    final = msg.turn_final(
                        turn, words, formatted=True, confidence=1.0, language=language,
                        speaker=speaker,
                    )  # fmt: skip
                    out.append(Send(final))
                else:
                    confidence = 1.0 if event.reason in ("force_endpoint", "terminate") else score
                    final = msg.turn_final(
                        turn, words, formatted=False, confidence=round(confidence, 6),
                        language=language, speaker=speaker,
                    )  # fmt: skip
                    out.append(Send(final))
                    if self.config.get("format_turns"):
                        final = msg.turn_final(
                            turn, words, formatted=True, confidence=round(confidence, 6),
                            language=language, speaker=speaker,
                        )  # fmt: skip
                        out.append(Send(final))
                self._turn_done(turn.order, final, event.reason, turn)
                if self.config.get("llm_gateway"):
                    out.append(Send(self._llm_response(turn.order, final["transcript"])))
            elif self.u3 and isinstance(event, PartialDue | Paused):
                words = turn.words(False, word_ms)
                if words:
                    out.extend(self._speech_started(turn))
                    turn.partials += 1
                    out.append(Send(msg.turn_partial_u3(turn, words, 0.0)))
            elif not self.u3 and isinstance(event, WordsGrew):
                words = turn.words(False, word_ms)
                turn.partials += 1
                confidence = round(completion_score(seed, turn.order) * 0.5, 6)
                out.append(Send(msg.turn_partial_words(turn, words, confidence)))
        return out

    def _speech_started(self, turn: Turn) -> list[Action]:
        if turn.announced:
            return []
        turn.announced = True
        payload = {
            "type": "SpeechStarted",
            "timestamp": round(turn.start_ms),
            "confidence": turn.speech_confidence,
        }
        return [Send(payload)]

    def _turn_done(self, order: int, final: dict[str, Any], reason: str, turn: Turn) -> None:
        self._stats.inc(table.DIALECT, "turns")
        self._carry("user_turn", final["transcript"])
        self.record.add_turn(
            {
                "turn_order": order,
                "start_ms": round(turn.start_ms),
                "last_speech_ms": round(turn.last_speech_ms),
                "end_ms": round(turn.end_ms or 0.0),
                "reason": reason,
                "transcript": final["transcript"],
                "keyterms": list(turn.keyterms),
                "params": {
                    "min_turn_silence": self._params.min_silence_ms,
                    "max_turn_silence": self._params.max_silence_ms,
                    "vad_threshold": self._params.vad_threshold,
                },
            }
        )

    def _llm_response(self, order: int, transcript: str) -> dict[str, Any]:
        gateway = self.config.get("llm_gateway") or {}
        return {
            "type": "LLMGatewayResponse",
            "turn_order": order,
            "transcript": transcript,
            "data": {
                "model": gateway.get("model"),
                "choices": [{"message": {"role": "assistant", "content": transcript}}],
            },
        }

    def _extra(self) -> dict[str, Any]:
        return {
            "audio_ms": round(self.audio_ms, 1),
            "carryover": list(self.carryover),
            "expires_at": self._expires_wall,
        }
