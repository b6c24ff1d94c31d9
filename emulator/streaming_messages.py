"""Streaming v3 server messages built from turn state (pure functions, wire field names)."""

from __future__ import annotations

from typing import Any

from emulator.turns import Turn, Word

__all__ = [
    "begin",
    "error",
    "format_words",
    "heartbeat",
    "termination",
    "turn_final",
    "turn_partial_u3",
    "turn_partial_words",
    "warning",
]

EM_DASH = "—"


def begin(
    session_id: str, expires_at: int, config: dict[str, Any], api_version: str
) -> dict[str, Any]:
    return {
        "type": "Begin",
        "id": session_id,
        "expires_at": expires_at,
        "configuration": {
            "model": config["speech_model"],
            "mode": config.get("mode"),
            "api_version": api_version,
            "speaker_labels": config.get("speaker_labels"),
            "redact_pii": config.get("redact_pii"),
            "filter_profanity": config.get("filter_profanity"),
            "domain": config.get("domain"),
            "voice_focus": config.get("voice_focus"),
        },
    }


def error(code: int, text: str) -> dict[str, Any]:
    return {"type": "Error", "error_code": code, "error": text}


def warning(code: int, text: str) -> dict[str, Any]:
    return {"type": "Warning", "warning_code": code, "warning": text}


def termination(audio_ms: float, session_s: float) -> dict[str, Any]:
    return {
        "type": "Termination",
        "audio_duration_seconds": round(audio_ms / 1000.0),
        "session_duration_seconds": round(session_s),
    }


def heartbeat(audio_ms: float, duration_ms: float, max_probability: float) -> dict[str, Any]:
    factor = audio_ms / duration_ms if duration_ms > 0 else 0.0
    return {
        "type": "Heartbeat",
        "total_audio_received_ms": round(audio_ms),
        "total_duration_ms": round(duration_ms),
        "realtime_factor": round(factor, 4),
        "max_speech_probability": round(max_probability, 6),
    }


def format_words(texts: list[str]) -> list[str]:
    """Capitalise the first word and end the last with a full stop."""
    if not texts:
        return texts
    out = list(texts)
    out[0] = out[0][:1].upper() + out[0][1:]
    if not out[-1].endswith((".", "?", "!")):
        out[-1] += "."
    return out


def _word(word: Word, text: str, final: bool, speaker: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "start": word.start,
        "end": word.end,
        "text": text,
        "confidence": word.confidence,
        "word_is_final": final,
    }
    if speaker is not None and final:
        doc["speaker"] = speaker
    return doc


def turn_partial_u3(turn: Turn, words: list[Word], confidence: float) -> dict[str, Any]:
    """U3-Pro partial: unformatted, last word ends with an em dash, nothing final."""
    texts = [w.text for w in words]
    texts[-1] += EM_DASH
    return {
        "type": "Turn",
        "turn_order": turn.order,
        "turn_is_formatted": False,
        "end_of_turn": False,
        "transcript": " ".join(texts),
        "end_of_turn_confidence": confidence,
        "words": [_word(w, t, False, None) for w, t in zip(words, texts, strict=True)],
        "utterance": "",
    }


def turn_partial_words(turn: Turn, words: list[Word], confidence: float) -> dict[str, Any]:
    """Universal-Streaming word-level partial: earlier words final, the newest one not."""
    last = len(words) - 1
    return {
        "type": "Turn",
        "turn_order": turn.order,
        "turn_is_formatted": False,
        "end_of_turn": False,
        "transcript": " ".join(w.text for w in words[:last]),
        "end_of_turn_confidence": confidence,
        "words": [_word(w, w.text, i < last, None) for i, w in enumerate(words)],
        "utterance": "",
    }


def turn_final(
    turn: Turn,
    words: list[Word],
    *,
    formatted: bool,
    confidence: float,
    language: bool,
    speaker: str | None,
) -> dict[str, Any]:
    texts = [w.text for w in words]
    if formatted:
        texts = format_words(texts)
    transcript = " ".join(texts)
    doc: dict[str, Any] = {
        "type": "Turn",
        "turn_order": turn.order,
        "turn_is_formatted": formatted,
        "end_of_turn": True,
        "transcript": transcript,
        "end_of_turn_confidence": confidence,
        "words": [_word(w, t, True, speaker) for w, t in zip(words, texts, strict=True)],
        "utterance": transcript,
    }
    if language:
        doc["language_code"] = "en"
        doc["language_confidence"] = 0.99
    if speaker is not None:
        doc["speaker_label"] = speaker
    return doc
