"""Turn detection and deterministic transcripts (sans-I/O, driven by audio time only).

``TurnDetector.feed(probability, frame_ms)`` advances the audio clock by one VAD frame and
returns the turn events it caused. It reads the session's *current* ``TurnParams`` on every
frame, so an update takes effect on the next frame of audio:

- speech frame outside a turn -> ``TurnStarted`` (the turn's keyterms are snapshotted here, so
  a keyterm change shows in the next turn);
- completed words grow -> ``WordsGrew`` (one word per ``word_ms`` of speech);
- U3 cadence while speaking -> ``PartialDue`` at ``early_partial_ms`` and then every
  ``partial_interval_ms`` of turn time;
- silence reaching ``min_silence_ms`` -> the turn ends (``TurnEnded(reason="min_silence")``) when
  its completion score is at least ``min_silence_end_threshold``, else ``Paused`` (U3 pause
  partial) once per silence;
- silence reaching ``max_silence_ms`` -> ``TurnEnded(reason="max_silence")``;
- turn longer than ``max_turn_ms`` -> ``TurnEnded(reason="max_duration")``;
- ``force_end(reason)`` (ForceEndpoint, Terminate) ends the open turn now.

Transcripts: word *i* of turn *n* is drawn from a fixed vocabulary by a PRNG seeded with
``(seed, n)``; even positions (0, 2, 4, ...) carry the turn's keyterms in rotation. Same audio,
seed and keyterms -> same words and timestamps.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "PartialDue",
    "Paused",
    "Turn",
    "TurnDetector",
    "TurnEnded",
    "TurnEvent",
    "TurnParams",
    "TurnStarted",
    "Word",
    "WordsGrew",
    "completion_score",
]

VOCABULARY = (
    "hello", "I", "would", "like", "to", "check", "my", "account", "balance", "please",
    "can", "you", "help", "me", "with", "an", "order", "from", "last", "week", "the",
    "delivery", "was", "late", "and", "need", "a", "refund", "for", "this", "item", "thanks",
    "what", "time", "is", "it", "now", "in", "London", "book", "table", "two", "people",
    "tomorrow", "evening", "send", "confirmation", "email", "number", "is", "seven", "four",
    "one", "nine", "great", "that", "works", "yes", "no", "maybe", "later", "today", "call",
)  # fmt: skip


@dataclass(frozen=True)
class TurnParams:
    min_silence_ms: float
    max_silence_ms: float
    vad_threshold: float
    min_silence_end_threshold: float  # end at min silence when completion score >= this
    early_partial_ms: float | None = None
    partial_interval_ms: float | None = None
    max_turn_ms: float = 60_000.0


@dataclass(frozen=True)
class Word:
    text: str
    start: int
    end: int
    confidence: float


def completion_score(seed: int, turn_order: int) -> float:
    """Deterministic score in [0, 1) of how "complete" a turn sounds (its EOT confidence)."""
    digest = hashlib.sha256(f"{seed}:{turn_order}".encode()).digest()
    return int.from_bytes(digest[:6], "big") / float(1 << 48)


@dataclass
class Turn:
    order: int
    start_ms: float
    keyterms: tuple[str, ...]
    seed: int
    segments: list[list[float]] = field(default_factory=list)
    speech_ms: float = 0.0
    words_seen: int = 0
    partials: int = 0
    early_done: bool = False
    announced: bool = False  # SpeechStarted sent
    next_partial_ms: float = 0.0
    speech_confidence: float = 0.0
    end_ms: float | None = None
    end_reason: str | None = None

    def _texts(self, count: int) -> list[tuple[str, float]]:
        rng = random.Random(f"{self.seed}:{self.order}")
        out: list[tuple[str, float]] = []
        k = len(self.keyterms)
        for i in range(count):
            word = rng.choice(VOCABULARY)
            confidence = round(0.7 + 0.299 * rng.random(), 6)
            if k and i % 2 == 0:
                word = self.keyterms[(self.order + i // 2) % k]
            out.append((word, confidence))
        return out

    def _at(self, speech_offset: float) -> float:
        """Map an offset into the turn's speech (ms) to stream audio time (ms)."""
        for start, end in self.segments:
            length = end - start
            if speech_offset <= length:
                return start + speech_offset
            speech_offset -= length
        return self.segments[-1][1] if self.segments else self.start_ms

    def words(self, final: bool, word_ms: float) -> list[Word]:
        """Words so far (partial: completed words only) or the final word list."""
        if final:
            count = max(1, round(self.speech_ms / word_ms))
            width = self.speech_ms / count if count else 0.0
        else:
            count = int(self.speech_ms // word_ms)
            width = word_ms
        out: list[Word] = []
        for i, (text, confidence) in enumerate(self._texts(count)):
            start = self._at(i * width)
            end = self._at((i + 1) * width)
            out.append(Word(text, round(start), round(end), confidence))
        return out

    def completed_words(self, word_ms: float) -> int:
        return int(self.speech_ms // word_ms)

    @property
    def last_speech_ms(self) -> float:
        return self.segments[-1][1] if self.segments else self.start_ms


@dataclass(frozen=True)
class TurnStarted:
    turn: Turn


@dataclass(frozen=True)
class WordsGrew:
    turn: Turn


@dataclass(frozen=True)
class PartialDue:
    turn: Turn
    reason: str  # "early" | "continuous"


@dataclass(frozen=True)
class Paused:
    turn: Turn


@dataclass(frozen=True)
class TurnEnded:
    turn: Turn
    reason: str  # min_silence | max_silence | max_duration | force_endpoint | terminate


TurnEvent = TurnStarted | WordsGrew | PartialDue | Paused | TurnEnded


class TurnDetector:
    """Audio-time turn state machine; parameters and keyterms are read through callables."""

    def __init__(
        self,
        params: Callable[[], TurnParams],
        keyterms: Callable[[], tuple[str, ...]],
        seed: int,
        word_ms: float,
    ) -> None:
        self._params = params
        self._keyterms = keyterms
        self._seed = seed
        self._word_ms = float(word_ms)
        self.audio_ms = 0.0
        self.next_order = 0
        self.current: Turn | None = None
        self._silence_ms = 0.0
        self._paused = False
        self.max_probability = 0.0  # since the last reset (Heartbeat)

    @property
    def word_ms(self) -> float:
        return self._word_ms

    def feed(self, probability: float, frame_ms: float) -> list[TurnEvent]:
        params = self._params()
        start = self.audio_ms
        self.audio_ms = start + frame_ms
        self.max_probability = max(self.max_probability, probability)
        events: list[TurnEvent] = []
        turn = self.current
        if probability > 0.0 and probability >= params.vad_threshold:
            if turn is None:
                turn = Turn(self.next_order, start, self._keyterms(), self._seed)
                turn.speech_confidence = round(probability, 6)
                self.next_order += 1
                self.current = turn
                events.append(TurnStarted(turn))
                turn.next_partial_ms = params.partial_interval_ms or 0.0
            if turn.segments and turn.segments[-1][1] >= start - 1e-6:
                turn.segments[-1][1] = self.audio_ms
            else:
                turn.segments.append([start, self.audio_ms])
            turn.speech_ms += frame_ms
            self._silence_ms = 0.0
            self._paused = False
            words = turn.completed_words(self._word_ms)
            if words > turn.words_seen:
                turn.words_seen = words
                events.append(WordsGrew(turn))
            elapsed = self.audio_ms - turn.start_ms
            if (
                params.early_partial_ms is not None
                and not turn.early_done
                and elapsed >= params.early_partial_ms
            ):
                turn.early_done = True
                turn.next_partial_ms = elapsed + (params.partial_interval_ms or 0.0)
                events.append(PartialDue(turn, "early"))
            elif (
                params.partial_interval_ms
                and (turn.early_done or params.early_partial_ms is None)
                and elapsed >= turn.next_partial_ms
            ):
                turn.next_partial_ms = elapsed + params.partial_interval_ms
                events.append(PartialDue(turn, "continuous"))
            if elapsed >= params.max_turn_ms:
                events.append(self._end("max_duration"))
        elif turn is not None:
            self._silence_ms += frame_ms
            if self._silence_ms >= params.max_silence_ms:
                events.append(self._end("max_silence"))
            elif self._silence_ms >= params.min_silence_ms and not self._paused:
                self._paused = True
                score = completion_score(self._seed, turn.order)
                if score >= params.min_silence_end_threshold:
                    events.append(self._end("min_silence"))
                else:
                    events.append(Paused(turn))
        return events

    def force_end(self, reason: str) -> TurnEnded | None:
        """End the open turn now (ForceEndpoint / Terminate); None when no turn is open."""
        if self.current is None:
            return None
        return self._end(reason)

    def _end(self, reason: str) -> TurnEnded:
        turn = self.current
        assert turn is not None
        turn.end_ms = self.audio_ms
        turn.end_reason = reason
        self.current = None
        self._silence_ms = 0.0
        self._paused = False
        return TurnEnded(turn, reason)
