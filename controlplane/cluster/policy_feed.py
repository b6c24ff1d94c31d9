"""What the ``CP_POLICY`` consumer and publisher decide without NATS (``nats_bus``): subject
tokens and consumer names, which signing keys may sign an event (``scope_allows``), refused
events logged in bursts (``RefusalLog``), the 409 of a version that is not above the
current one (``version_conflict``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from controlplane.errors import Conflict
from controlplane.intake.bus import PolicyEvent
from controlplane.roles import event_role, parse_grant
from controlplane.signing import Refusal
from sessions.clock import Clock

__all__ = [
    "REFUSAL_LOG_BURST",
    "REFUSAL_LOG_WINDOW_S",
    "REFUSED",
    "RefusalLog",
    "name_safe",
    "scope_allows",
    "subject_token",
    "version_conflict",
]

log = logging.getLogger("controlplane.cluster.nats_bus")  # (the bus's log, as before)

REFUSAL_LOG_BURST: Final = 20  # refused events logged one by one per window ...
REFUSAL_LOG_WINDOW_S: Final = 10.0  # ... the rest summed up (RefusalLog)
REFUSED: Final[dict[Refusal, str]] = {
    "unsigned": "no Cp-Signature header (policy signing is on)",
    "bad_signature": "Cp-Signature does not match its body and Nats-Msg-Id under any key",
    "role_above_key": "signed only by keys scoped to a role below the role the event claims "
    "(or it claims none), or to teams it does not act for",
}
_SAFE: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_:")


def scope_allows(event: PolicyEvent) -> Callable[[str], bool]:
    """A key scoped to a role signs events claiming that role or a lower one (never an event
    without a role: an operator's tool needs an unscoped key; controlplane.signing); scoped
    to teams too (``role@team``), only events acting for one of them (docs/security.md#teams)."""
    claimed = event_role(event.role, event.actor)

    def allows(scope: str) -> bool:
        try:
            role, teams = parse_grant(scope)
        except ValueError:  # not a role (the settings refuse it at start)
            return False
        return claimed is not None and claimed <= role and (not teams or event.team in teams)

    return allows


def subject_token(value: str) -> str:
    """A subject-safe token: bytes outside ``[A-Za-z0-9_:-]`` become ``%XX`` (so ``.``, ``*``,
    ``>`` and spaces can never split or widen a subject; ids like ``cps_…`` stay as they are)."""
    if all(c in _SAFE for c in value) and value:
        return value
    return "".join(chr(b) if chr(b) in _SAFE else f"%{b:02X}" for b in value.encode()) or "%"


def name_safe(value: str) -> str:
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in value)[:40]


class RefusalLog:
    """Refused events are logged one by one up to ``REFUSAL_LOG_BURST`` per
    ``REFUSAL_LOG_WINDOW_S``; beyond that they are only counted (the metric counts them all)
    and summed up in one line: a hostile stream of a million events must not write a million
    log lines on every start-up replay."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._since: float | None = None
        self._logged = 0
        self._quiet = 0

    def allow(self) -> bool:
        now = self._clock.monotonic()
        if self._since is None or now - self._since >= REFUSAL_LOG_WINDOW_S:
            self.flush()
            self._since = now
        if self._logged < REFUSAL_LOG_BURST:
            self._logged += 1
            return True
        self._quiet += 1
        return False

    def flush(self) -> None:
        if self._quiet:
            log.warning("%d more policy events refused (reasons not logged one by one; "
                        "counted in controlplane_policy_events_total)", self._quiet)  # fmt: skip
        self._since, self._logged, self._quiet = None, 0, 0


def version_conflict(event: PolicyEvent, current: int) -> Conflict:
    return Conflict(
        f"policy {event.policy_id!r} version {event.version} is not above the current "
        f"version {current}; publish version {current + 1} or omit version",
        details={"id": event.policy_id, "version": event.version, "current": current},
    )
