"""Push frames, encoded once: a fan-out's sessions with the same dialect, model and delta
share one ``Frame`` (the message, its JSON text, the skipped-fields note, and the version
log's encoding of delta and message)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from policies.fields import Delta
from sessions.dialects.base import Dialect, Encoded
from sessions.versionlog.core import Canonical, canonical

__all__ = ["NO_DELTA", "Frame", "FrameCache", "FrameEncoder", "skipped_note"]

NO_DELTA = canonical({})  # shared by every unchanged entry (one EntryTemplate per fan-out)

FrameCache = dict[tuple[Any, ...], "Frame"]  # one per fan-out: (dialect, model, delta) -> frame


def skipped_note(skipped: Any) -> str | None:
    if not skipped:
        return None
    return "skipped " + "; ".join(f"{k}: {v}" for k, v in sorted(dict(skipped).items()))


@dataclass(frozen=True, slots=True)
class Frame:
    """One encoded push, shared by every session of a fan-out with the same dialect, model
    and delta: the message, its JSON text, the skipped-fields note and the delta itself."""

    encoded: Encoded
    message: dict[str, Any] | None
    text: str | None
    note: str | None
    delta: Canonical  # what the version log records, encoded once for every session
    wire: Canonical | None

    @classmethod
    def encode(cls, dialect: Dialect, delta: Delta, model: str) -> Frame:
        encoded = dialect.encode(delta, model)
        message = encoded.message
        text = None if message is None else json.dumps(message)
        wire = None if message is None else canonical(message)
        note = skipped_note(encoded.skipped)
        return cls(encoded, message, text, note, canonical(delta), wire)


class FrameEncoder:
    """``Frame.encode`` with a memo of the last frame (consecutive pushes of a fan-out often
    share the very same delta object: deltas are values, ``PushState`` shares them) and a
    per-fan-out cache by content."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[Delta, Dialect, str, Frame] | None = None

    def frame(self, dialect: Dialect, model: str, delta: Delta, cache: FrameCache) -> Frame:
        last = self._last
        if last is not None and last[0] is delta and last[1] is dialect and last[2] == model:
            return last[3]
        key = (dialect.name, model, _delta_key(delta))
        found = cache.get(key)
        if found is None:
            found = cache[key] = Frame.encode(dialect, delta, model)
        self._last = (delta, dialect, model, found)
        return found


def _delta_key(delta: Delta) -> tuple[Any, ...]:
    return tuple(sorted(delta.items(), key=lambda kv: kv[0]))
