"""What a sans-I/O session machine asks its socket adapter to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Action", "Close", "Drop", "Send"]


@dataclass(frozen=True, slots=True)
class Send:
    """Send one JSON text frame."""

    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Close:
    """Send a close frame with ``code`` and ``reason`` and stop reading."""

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Drop:
    """Abort the TCP connection without a close frame (the peer sees 1006)."""


Action = Send | Close | Drop
