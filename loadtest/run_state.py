"""What the users of one locust process share: the publisher's publishes and the live control
sessions (so the publisher can time convergence), and how a sample is reported to locust."""

from __future__ import annotations

from dataclasses import dataclass, field

from locust.env import Environment

__all__ = [
    "LIVE_CONTROL",
    "PUBLISHED",
    "SEQ",
    "Publish",
    "SessionError",
    "fire",
]


# -- shared in-process state (publisher <-> control users) -------------------------------------
@dataclass
class Publish:
    at: float  # wall clock, just before the POST
    targets: set[str]  # control sessions live in this process at publish time
    receipts: dict[str, float] = field(default_factory=dict)


PUBLISHED: dict[int, Publish] = {}  # seq -> publish (this process's publisher)
LIVE_CONTROL: dict[str, float] = {}  # session id -> registered at (wall clock)
SEQ = iter(range(1, 10**9))


def fire(
    env: Environment,
    kind: str,
    name: str,
    ms: float,
    exc: BaseException | None = None,
    length: int = 0,
) -> None:
    env.events.request.fire(
        request_type=kind,
        name=name,
        response_time=ms,
        response_length=length,
        exception=exc,
        context={},
    )


class SessionError(Exception):
    """A failure of a session (refused, dropped, upstream error)."""
