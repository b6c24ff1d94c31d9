"""Voice Agent conversation engine (sans-I/O): user audio -> turns -> agent replies and tools.

Deterministic rules (documented in docs/emulator.md):

- User turns come from ``TurnDetector`` on the decoded input audio with the session's current
  ``input.turn_detection`` (``vad_threshold``, ``min_silence``, ``max_silence``); transcripts are
  seeded words with ``input.keyterms`` at even positions.
- A reply to a user turn says ``"You said: <transcript>"``; ``reply.create`` says its
  ``instructions`` (or ``"How can I help you?"``); a greeting says the greeting. Each word is
  ``agent_word_ms`` of tone audio in the output encoding, sent as one ``reply.audio`` and one
  ``transcript.agent.delta`` per word, streamed up to 1 s ahead of the emulated playback.
- A reply is "playing" until the input audio clock or the wall clock has advanced by its
  duration; then ``transcript.agent`` and ``reply.done{status:"completed"}`` follow. User speech
  starting while a reply plays interrupts it (unless ``interrupt_response`` is false):
  ``transcript.agent{interrupted:true}`` with the words already played, then
  ``reply.done{status:"interrupted"}``.
- Tools: a configured tool is called when the user transcript contains its name (case
  insensitive; ``_`` may also be a space) — put the name in ``input.keyterms`` to make a turn
  mention it. ``tool.call{call_id,name,arguments}`` is sent inside a reply with no audio
  (``hold`` tools: outside any reply); string arguments take the word after the mention (or
  ``"demo"``), numbers 1, booleans true. ``tool.result`` starts the next reply ("The <name>
  result is <result>."); no result within ``timeout_seconds`` -> an apology reply.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from emulator.audio import Pacer, SpeechMeter, chunk_duration_ms, tone
from emulator.inspection import SessionRecord, Stats
from emulator.settings import EmulatorSettings
from emulator.streaming_messages import format_words
from emulator.turns import TurnDetector, TurnEnded, TurnEvent, TurnParams, TurnStarted, WordsGrew
from sessions.dialects import voice_agent_v1_table as table

__all__ = ["Conversation", "session_error"]

Payload = dict[str, Any]
MAX_TURN_MS = 60_000.0
AUDIO_LEAD_MS = 1000.0  # reply audio is sent this far ahead of (emulated) playback


@lru_cache(maxsize=64)
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def session_error(code: str, message: str, param: str | None = None, **extra: Any) -> Payload:
    assert code.lower() in table.ERROR_CODES, code
    doc: Payload = {"type": "session.error", "code": code, "message": message}
    if param is not None:
        doc["param"] = param
    doc.update(extra)
    return doc


@dataclass
class Reply:
    reply_id: str
    item_id: str
    text: str
    words: list[tuple[str, int, int]]
    duration_ms: float
    started_audio_ms: float
    started_mono: float
    trigger: str
    tool_calls: list[str] = field(default_factory=list)
    sent: int = 0  # words whose audio and delta went out


@dataclass
class PendingTool:
    call_id: str
    name: str
    deadline: float
    reply_id: str | None


def _normalise(text: str) -> str:
    return " ".join("".join(c if c.isalnum() or c == "_" else " " for c in text.lower()).split())


class Conversation:
    """The audio/turn/reply/tool side of one voice-agent session."""

    def __init__(
        self,
        settings: EmulatorSettings,
        config: Callable[[], dict[str, Any]],
        record: SessionRecord,
        stats: Stats,
    ) -> None:
        self._settings = settings
        self._config = config
        self._record = record
        self._stats = stats
        self.audio_ms = 0.0
        self._encoding = ""
        self._rate = 0
        self._meter: SpeechMeter | None = None
        self._pacer = Pacer(settings.pacing_window_s, settings.pacing_tolerance_ms)
        self._params = self._turn_params()
        self._detector = TurnDetector(
            lambda: self._params, self._keyterms, settings.transcript_seed, settings.word_ms
        )
        self.reply: Reply | None = None
        self._queue: deque[tuple[str, str]] = deque(maxlen=8)
        self._pending: dict[str, PendingTool] = {}
        self._user_item: str | None = None
        self.history: deque[dict[str, str]] = deque(maxlen=50)
        self.replies: deque[dict[str, Any]] = deque(maxlen=settings.turns_max_entries)
        self.config_changed()

    # --- config -------------------------------------------------------------------------------

    def config_changed(self) -> None:
        fmt = self._config()["input"]["format"]
        encoding, rate = str(fmt["encoding"]), int(fmt["sample_rate"])
        if (encoding, rate) != (self._encoding, self._rate):
            self._encoding, self._rate = encoding, rate
            s = self._settings
            self._meter = SpeechMeter(encoding, rate, s.vad_floor_dbfs, s.vad_ceiling_dbfs)
        self._params = self._turn_params()

    def _turn_params(self) -> TurnParams:
        td = self._config()["input"]["turn_detection"]
        return TurnParams(
            min_silence_ms=float(td["min_silence"]),
            max_silence_ms=float(td["max_silence"]),
            vad_threshold=float(td["vad_threshold"]),
            min_silence_end_threshold=1.0 - self._settings.turn_complete_ratio,
            max_turn_ms=MAX_TURN_MS,
        )

    def _keyterms(self) -> tuple[str, ...]:
        return tuple(self._config()["input"].get("keyterms") or ())

    # --- input audio --------------------------------------------------------------------------

    def audio(self, data: bytes, now: float) -> list[Payload]:
        out: list[Payload] = []
        ms = chunk_duration_ms(len(data), self._encoding, self._rate) or 0.0
        too_fast = self._pacer.add(now, ms)
        if too_fast is not None:
            self._pacer.reset()
            audio_s, wall_s = too_fast
            out.append(
                session_error(
                    "audio_rate_violation",
                    f"Audio sent faster than real time: {audio_s:.1f} s of audio in {wall_s:.1f} s",
                )
            )
        assert self._meter is not None
        for probability, frame_ms in self._meter.frames(data):
            self.audio_ms += frame_ms
            events = self._detector.feed(probability, frame_ms)
            if events:
                out.extend(self._turn_events(events, now))
            if self.reply is not None:
                out.extend(self._progress(now))
        return out

    def _turn_events(self, events: list[TurnEvent], now: float) -> list[Payload]:
        out: list[Payload] = []
        word_ms = self._detector.word_ms
        for event in events:
            turn = event.turn
            if isinstance(event, TurnStarted):
                self._user_item = _id("item")
                out.append({"type": "input.speech.started", "timestamp": turn.start_ms / 1000})
                interrupt = self._config()["input"]["turn_detection"]["interrupt_response"]
                if self.reply is not None and interrupt:
                    out.extend(self._finish(now, "interrupted"))
            elif isinstance(event, WordsGrew):
                text = " ".join(w.text for w in turn.words(False, word_ms))
                out.append(
                    {"type": "transcript.user.delta", "item_id": self._user_item, "text": text}
                )
            elif isinstance(event, TurnEnded):
                words = format_words([w.text for w in turn.words(True, word_ms)])
                text = " ".join(words)
                item = self._user_item or _id("item")
                self._user_item = None
                stamp = turn.last_speech_ms / 1000
                out.append({"type": "input.speech.stopped", "timestamp": stamp})
                out.append({"type": "transcript.user", "item_id": item, "text": text})
                self._stats.inc(table.DIALECT, "turns")
                self._record.add_turn(
                    {
                        "turn_order": turn.order,
                        "start_ms": round(turn.start_ms),
                        "last_speech_ms": round(turn.last_speech_ms),
                        "end_ms": round(turn.end_ms or 0.0),
                        "reason": event.reason,
                        "transcript": text,
                        "keyterms": list(turn.keyterms),
                        "params": {
                            "min_silence": self._params.min_silence_ms,
                            "max_silence": self._params.max_silence_ms,
                            "vad_threshold": self._params.vad_threshold,
                        },
                    }
                )
                self.history.append({"role": "user", "content": text})
                out.extend(self._respond(text, now))
        return out

    # --- replies ------------------------------------------------------------------------------

    def _respond(self, text: str, now: float) -> list[Payload]:
        calls = self._mentioned_tools(text)
        if calls:
            return self._call_tools(calls, text, now)
        words = text.split()
        return self.say("You said: " + " ".join(words[:24]), "user_turn", now)

    def say(self, text: str, trigger: str, now: float) -> list[Payload]:
        """Start a spoken reply now, or queue it behind the one playing."""
        if self.reply is not None:
            self._queue.append((text, trigger))
            return []
        reply_id, item_id = _id("reply"), _id("item")
        step = self._settings.agent_word_ms
        words = [(w, i * step, (i + 1) * step) for i, w in enumerate(text.split())]
        self.reply = Reply(
            reply_id, item_id, text, words, float(len(words) * step), self.audio_ms, now, trigger
        )
        self.history.append({"role": "assistant", "content": text})
        out: list[Payload] = [{"type": "reply.started", "reply_id": reply_id, "item_id": item_id}]
        out.extend(self._progress(now))
        return out

    def _played(self, reply: Reply, now: float) -> float:
        return max(self.audio_ms - reply.started_audio_ms, (now - reply.started_mono) * 1000.0)

    def _progress(self, now: float) -> list[Payload]:
        """Send the words due (``AUDIO_LEAD_MS`` ahead of playback); finish when played."""
        reply = self.reply
        if reply is None:
            return []
        played = self._played(reply, now)
        out: list[Payload] = []
        while (
            reply.sent < len(reply.words) and reply.words[reply.sent][1] <= played + AUDIO_LEAD_MS
        ):
            out.extend(self._word(reply, reply.sent))
            reply.sent += 1
        if played >= reply.duration_ms:
            out.extend(self._finish(now, "completed"))
        return out

    def _word(self, reply: Reply, index: int) -> list[Payload]:
        output = self._config()["output"]
        fmt = output["format"]
        pcm = tone(
            str(fmt["encoding"]),
            int(fmt["sample_rate"]),
            self._settings.agent_word_ms,
            int(output.get("volume", 100)),
        )
        word, start, end = reply.words[index]
        return [
            {"type": "reply.audio", "reply_id": reply.reply_id, "data": _b64(pcm)},
            {
                "type": "transcript.agent.delta",
                "reply_id": reply.reply_id,
                "item_id": reply.item_id,
                "delta": word + " ",
                "start_ms": start,
                "end_ms": end,
            },
        ]

    def _finish(self, now: float, status: str) -> list[Payload]:
        reply = self.reply
        assert reply is not None
        self.reply = None
        played = self._played(reply, now)
        interrupted = status != "completed"
        text = reply.text
        if interrupted:
            text = " ".join(w for w, _, end in reply.words if end <= played)
            for call_id in reply.tool_calls:
                self._pending.pop(call_id, None)
        out: list[Payload] = []
        if reply.words or interrupted:
            out.append(
                {
                    "type": "transcript.agent",
                    "reply_id": reply.reply_id,
                    "item_id": reply.item_id,
                    "text": text,
                    "interrupted": interrupted,
                }
            )
        out.append({"type": "reply.done", "reply_id": reply.reply_id, "status": status})
        self.replies.append(
            {
                "reply_id": reply.reply_id,
                "trigger": reply.trigger,
                "text": reply.text,
                "spoken": text,
                "status": status,
                "system_prompt": self._config().get("system_prompt", ""),
            }
        )
        if interrupted:
            self._queue.clear()
        elif self._queue:
            next_text, trigger = self._queue.popleft()
            out.extend(self.say(next_text, trigger, now))
        return out

    def cancel(self, reply_id: str | None, now: float) -> list[Payload]:
        if self.reply is None or (reply_id and reply_id != self.reply.reply_id):
            return []
        return self._finish(now, "cancelled")

    # --- tools --------------------------------------------------------------------------------

    def _mentioned_tools(self, text: str) -> list[dict[str, Any]]:
        spoken = f" {_normalise(text)} "
        found = []
        for tool in self._config().get("tools") or []:
            name = str(tool.get("name", "")).lower()
            if name and (f" {name} " in spoken or f" {name.replace('_', ' ')} " in spoken):
                found.append(tool)
        return found

    def _arguments(self, tool: dict[str, Any], text: str) -> dict[str, Any]:
        words = _normalise(text).split()
        name = str(tool["name"]).lower()
        after = "demo"
        if name in words and words.index(name) + 1 < len(words):
            after = words[words.index(name) + 1]
        props = (tool.get("parameters") or {}).get("properties") or {}
        args: dict[str, Any] = {}
        for prop, schema in props.items():
            kind = schema.get("type") if isinstance(schema, dict) else None
            args[prop] = {"integer": 1, "number": 1, "boolean": True}.get(str(kind), after)
        return args

    def _call_tools(self, tools: list[dict[str, Any]], text: str, now: float) -> list[Payload]:
        out: list[Payload] = []
        interactive = [t for t in tools if t.get("execution_mode", "interactive") != "hold"]
        reply_id: str | None = None
        if interactive and self.reply is None:
            reply_id = _id("reply")
            out.append({"type": "reply.started", "reply_id": reply_id, "item_id": _id("item")})
        for tool in tools:
            call_id = _id("call")
            args: Any = self._arguments(tool, text)
            if self._settings.tool_arguments_as_string:
                args = json.dumps(args)
            out.append(
                {"type": "tool.call", "call_id": call_id, "name": tool["name"], "arguments": args}
            )
            timeout = float(tool.get("timeout_seconds", table.LIMITS["tool_timeout_default_s"]))
            self._pending[call_id] = PendingTool(
                call_id, str(tool["name"]), now + timeout, reply_id
            )
        if reply_id is not None:
            out.append({"type": "reply.done", "reply_id": reply_id, "status": "completed"})
        return out

    def tool_result(self, message: dict[str, Any], now: float) -> list[Payload]:
        call_id = message.get("call_id")
        pending = self._pending.pop(call_id, None) if isinstance(call_id, str) else None
        if pending is None:
            return [session_error("invalid_value", f"unknown call_id {call_id!r}", "call_id")]
        result = message.get("result")
        if not isinstance(result, str):
            result = json.dumps(result)
        if message.get("is_error"):
            return self.say(f"Sorry, {pending.name} failed.", "tool_error", now)
        return self.say(f"The {pending.name} result is {result}.", "tool_result", now)

    # --- timers -------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = [p.deadline for p in self._pending.values()]
        reply = self.reply
        if reply is not None:
            due_ms = reply.duration_ms
            if reply.sent < len(reply.words):
                due_ms = min(due_ms, max(0.0, reply.words[reply.sent][1] - AUDIO_LEAD_MS))
            deadlines.append(reply.started_mono + due_ms / 1000.0)
        return min(deadlines) if deadlines else None

    def on_timer(self, now: float) -> list[Payload]:
        out = self._progress(now)
        for call_id, pending in list(self._pending.items()):
            if pending.deadline <= now:
                del self._pending[call_id]
                out.extend(
                    self.say(f"Sorry, {pending.name} is taking too long.", "tool_timeout", now)
                )
        return out

    def position(self) -> dict[str, Any]:
        """Where in the input a change lands: audio offset and the next user turn."""
        current = self._detector.current
        return {
            "audio_ms": round(self.audio_ms, 1),
            "turn_order": self._detector.next_order,
            "open_turn": current.order if current else None,
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "audio_ms": round(self.audio_ms, 1),
            "reply": None if self.reply is None else self.reply.reply_id,
            "pending_tool_calls": sorted(self._pending),
            "replies": list(self.replies),
            "history": list(self.history),
        }
