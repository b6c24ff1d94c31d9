"""What the load sends (stdlib only, safe under gevent): the models and audio formats, PCM
frames, and policy versions whose prompt carries a per-version marker a receiver can find.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "AGENT_MODEL",
    "AGENT_RATE",
    "FRAME_MS",
    "MARKER_RE",
    "STREAMING_MODEL",
    "STREAMING_RATE",
    "find_marker",
    "marker",
    "pcm_silence",
    "pcm_tone",
    "policy_doc",
]

STREAMING_MODEL = "universal-3-5-pro"  # U3-Pro family: takes `prompt` mid-stream
AGENT_MODEL = "voice-agent"
STREAMING_RATE = 16_000
AGENT_RATE = 24_000
FRAME_MS = 50


# -- audio -----------------------------------------------------------------------------------
def pcm_tone(
    ms: int = FRAME_MS, rate: int = STREAMING_RATE, freq: float = 440.0, amplitude: int = 9000
) -> bytes:
    n = rate * ms // 1000
    return struct.pack(
        f"<{n}h", *(int(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(n))
    )


def pcm_silence(ms: int = FRAME_MS, rate: int = STREAMING_RATE) -> bytes:
    return b"\x00\x00" * (rate * ms // 1000)


# -- policies --------------------------------------------------------------------------------
MARKER_RE = re.compile(r"\[lt:([a-z0-9-]+):(\d+)(?::(\d+))?\]")


def marker(policy_id: str, seq: int, published_ms: int | None = None) -> str:
    """The text a published version carries so a receiver can tell which publish it saw
    (and, with ``published_ms``, when it was published: wall-clock milliseconds)."""
    if published_ms is None:
        return f"[lt:{policy_id}:{seq}]"
    return f"[lt:{policy_id}:{seq}:{published_ms}]"


def find_marker(text: str) -> tuple[str, int, float | None] | None:
    """(policy id, seq, publish wall time in seconds or None) of the first marker in text."""
    found = MARKER_RE.search(text)
    if not found:
        return None
    at = found.group(3)
    return found.group(1), int(found.group(2)), (int(at) / 1000 if at else None)


def policy_doc(
    policy_id: str,
    seq: int,
    *,
    published_ms: int | None = None,
    labels: Mapping[str, str] | None = None,
    prompt_chars: int = 120,
    keyterms: int = 0,
    kinds: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A policy version whose prompt starts with ``marker(policy_id, seq)``, padded."""
    head = marker(policy_id, seq, published_ms) + " "
    prompt = (head + "This call is recorded for quality. " * 60)[: max(len(head), prompt_chars)]
    body: dict[str, Any] = {"prompt": prompt}
    if keyterms:
        body["keyterms"] = [f"term{seq}x{i}" for i in range(keyterms)]
    match: dict[str, Any] = {}
    if labels:
        match["labels"] = dict(labels)
    if kinds:
        match["kind"] = list(kinds)
    return {"id": policy_id, "priority": 100, "match": match, "set": body}
