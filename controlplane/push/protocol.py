"""Per-session push state, sans-I/O: drive it step by step in a unit test.

Model (after envoy's go-control-plane): ``base`` is the configuration the upstream runs as far
as we know (last acknowledged, or last sent on a dialect without acknowledgements), ``desired``
is the session's effective configuration. A push carries ``diff(base, desired)``.

- Latest wins: ``want()`` only replaces ``desired``; versions superseded before they were
  sent are reported in ``Push.superseded`` and never sent.
- At most one unacknowledged push in flight on acknowledging dialects.
- A rejection quarantines *content*: the (field, value) pairs the upstream refused (the fields
  its answer names, else every pair of the refused delta) are never sent to that session
  again, whatever policy wants them later; every later push still carries every other field
  (``Push.held`` names the fields held back). A rejection that names fields queues the rest of
  the refused delta again as a new version. The rejected version itself is never re-pushed.
- ``next_turn`` holds a push until a turn boundary or its deadline.

Configs are values: once given to ``want()`` (or carried by a ``Push``) a config is never
changed in place, only replaced, so sessions of one fan-out share their config objects (and
the engine encodes each shared config once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from policies.delta import apply as _apply
from policies.delta import diff
from policies.fields import Config, Delta
from policies.provenance import PolicyRef
from policies.values import value

__all__ = ["Outcome", "Push", "PushState", "Status"]

Status = Literal["sent", "acked", "rejected", "skipped", "unverified"]


class _LastDiff:
    """The last ``diff`` taken: a fan-out's sessions share their desired config (a value),
    and their bases are the very same object (a push's config) or equal (the configs
    sessions connected with), so consecutive takes share the delta (a value too; the frame
    encoder then recognises it by identity)."""

    __slots__ = ("base", "delta", "desired")

    def __init__(self) -> None:
        self.base: Config | None = None
        self.desired: Config | None = None
        self.delta: Delta = {}

    def __call__(self, base: Config, desired: Config) -> Delta:
        if desired is not self.desired or (base is not self.base and base != self.base):
            self.delta = diff(base, desired)  # (diff compares values with ==, as here)
            self.desired = desired
        self.base = base
        return self.delta


_diff = _LastDiff()


Quarantined = tuple[str, Any]  # (canonical field, value) the upstream refused


@value
class Push:
    version: int
    delta: Delta
    config: Config
    refs: tuple[PolicyRef, ...]
    cause: str
    superseded: tuple[int, ...]
    event_at: float | None  # monotonic time the triggering event was received
    # field -> the policy version that owned it when the push was taken (provenance)
    owners: Mapping[str, PolicyRef]
    held: tuple[str, ...] = ()  # fields whose desired value is quarantined: not sent


@value
class Outcome:
    push: Push
    status: Status
    error: str | None = None
    latency: float | None = None  # frame written -> acknowledgement
    fields: tuple[str, ...] = ()  # rejected: the fields it quarantined (their values refused)
    applied: Delta | None = None  # refused in part: the part the upstream applied


@dataclass(slots=True)
class PushState:
    acknowledging: bool
    base: Config
    desired: Config = field(default_factory=dict)
    desired_refs: tuple[PolicyRef, ...] = ()
    desired_cause: str = "connect"
    desired_version: int = 0
    sent_version: int = 0
    acked_version: int = 0
    ready: bool = False
    in_flight: Push | None = None
    in_flight_at: float = 0.0  # when its frame went upstream (its acknowledgement timer)
    # the in-flight push waits in the transport behind another update (Voice Agent: one
    # session.update outstanding): not written yet, so no acknowledgement timer runs
    waiting: bool = False
    hold_deadline: float | None = None
    last_status: Status | None = None
    quarantined: set[int] = field(default_factory=set)  # rejected versions (never re-pushed)
    # (field, value) pairs the upstream refused: never sent to this session again
    quarantine: set[Quarantined] = field(default_factory=set)
    held: tuple[str, ...] = ()  # the last push's held-back fields (quarantined values)
    # field -> owning policy version of ``desired`` (set by the engine with each resolution)
    desired_owners: Mapping[str, PolicyRef] = field(default_factory=dict)
    _unsent: list[int] = field(default_factory=list)
    _event_at: float | None = None
    # the last push that ended without an answer in time (``timed_out``, ``unattributed``):
    # a report about it that comes late is still recorded (``late_answer``)
    unanswered: Push | None = None
    # no acknowledgements: the base before the last push was taken as running (``take``)
    _before: Config | None = None
    refused_connect: bool = False  # the upstream refused the connect: no upstream session runs

    @classmethod
    def start(
        cls,
        *,
        acknowledging: bool,
        config: Config,
        refs: tuple[PolicyRef, ...],
        version: int,
        answers_connect: bool = False,
    ) -> PushState:
        """A session that connected running ``config`` (its version ``version``);
        ``answers_connect``: the upstream answers the connect itself (Voice Agent
        ``session.ready``), so it is not acknowledged until :meth:`connect_answered` says so."""
        return cls(
            acknowledging=acknowledging,
            base=dict(config),
            desired=dict(config),
            desired_refs=refs,
            desired_version=version,
            sent_version=version,
            acked_version=0 if answers_connect else version,
        )

    def connect_answered(self, version: int, status: Status) -> None:
        """The upstream answered the connect of ``version`` itself (nothing else went
        upstream before it): ``acked``, ``rejected`` or ``unverified``."""
        if status == "acked":
            self.acked_version = max(self.acked_version, version)
        self.refused_connect = status == "rejected"
        self.last_status = status

    def restart(self, config: Config, refs: tuple[PolicyRef, ...]) -> int:
        """A new connect on ``config`` (Voice Agent: the client's next first message after the
        upstream refused the last one; no push went meanwhile, none is in flight): its
        version. Versions wanted but never sent since are dropped (superseded, never sent)."""
        version = self.desired_version + 1
        self.base, self.desired = dict(config), dict(config)
        self.desired_refs, self.desired_cause = refs, "connect"
        self.desired_version = self.sent_version = version
        self._unsent.clear()
        self._event_at = self.hold_deadline = self.last_status = None
        self.held = ()
        self.refused_connect = False
        return version

    # -- inputs --------------------------------------------------------------------------
    def want(
        self,
        config: Config,
        refs: tuple[PolicyRef, ...],
        cause: str,
        hold_until: float | None = None,
        event_at: float | None = None,
    ) -> int | None:
        """A new effective configuration; returns its version, or None when unchanged.

        ``hold_until`` (monotonic) asks for next-turn application with that deadline; an
        immediate want releases any hold, since its push carries the held change too.
        """
        if config == self.desired:
            self.desired_refs = refs
            return None
        self.desired = config
        self.desired_refs = refs
        self.desired_cause = cause
        self.desired_version += 1
        self._unsent.append(self.desired_version)
        if event_at is not None and self._event_at is None:
            self._event_at = event_at
        if hold_until is None:
            self.hold_deadline = None
        elif self.hold_deadline is None:
            self.hold_deadline = hold_until
        return self.desired_version

    def client_changed(self, forwarded: Delta, effective: Config) -> None:
        """The client's own update was forwarded upstream: the upstream now runs it."""
        self.base = _apply(self.base, forwarded)
        if self.desired_version == self.sent_version and self.in_flight is None:
            self.desired = dict(effective)
        else:
            self.desired = _apply(self.desired, forwarded) | {
                k: v for k, v in effective.items() if k not in forwarded
            }

    def turn_boundary(self) -> None:
        self.hold_deadline = None

    # -- decisions -----------------------------------------------------------------------
    def can_send(self, now: float) -> bool:
        return (
            self.ready
            and self.in_flight is None
            and self.desired_version > self.sent_version
            and (self.hold_deadline is None or now >= self.hold_deadline)
        )

    def take(self, now: float) -> Push | None:
        """The push to write now, or None. Marks it sent (and in flight when acknowledging)."""
        version = self.desired_version
        if not (  # (can_send, inlined: a fan-out takes every session's push)
            self.ready
            and self.in_flight is None
            and version > self.sent_version
            and (self.hold_deadline is None or now >= self.hold_deadline)
        ):
            return None
        unsent = self._unsent
        if len(unsent) == 1 and unsent[0] == version:
            superseded: tuple[int, ...] = ()  # the common case, without a generator
        else:
            superseded = tuple(v for v in unsent if v != version)
        unsent.clear()
        config, base, last = self.desired, self.base, _diff
        if config is last.desired and (base is last.base or base == last.base):
            delta, last.base = last.delta, base  # (_diff's memo, inlined)
        else:
            delta = _diff(base, config)
        held: tuple[str, ...] = ()
        if self.quarantine and delta:
            delta, config, held = self._without_quarantined(delta)
        push = Push(  # (in field order: positional, one per session of a fan-out)
            version,
            delta,
            config,
            self.desired_refs,
            self.desired_cause,
            superseded,
            self._event_at,
            self.desired_owners,
            held,
        )
        self._event_at = None
        self.hold_deadline = None
        self.sent_version = version
        self.held = held
        if not push.delta:
            self.acked_version = version
            self.last_status = "rejected" if held else "skipped"
            return push
        if self.acknowledging:
            self.in_flight = push
            self.in_flight_at = now
            self.waiting = False
        else:
            self._before = self.base  # (``wire_failed``: what runs if the frame never goes)
            self.base = push.config
            self.last_status = "unverified"
        return push

    def _without_quarantined(self, delta: Delta) -> tuple[Delta, Config, tuple[str, ...]]:
        """``delta`` without its quarantined pairs, the config the upstream runs after the
        rest, and the fields held back."""
        quarantine = self.quarantine
        kept = {f: v for f, v in delta.items() if (f, v) not in quarantine}
        if len(kept) == len(delta):
            return delta, self.desired, ()
        held = tuple(sorted(f for f in delta if f not in kept))
        return kept, _apply(self.base, kept), held

    def _sendable(self) -> bool:
        """Whether ``diff(base, desired)`` has a pair that is not quarantined."""
        quarantine = self.quarantine
        return any((f, v) not in quarantine for f, v in diff(self.base, self.desired).items())

    def queued(self, push: Push) -> None:
        """The transport holds the in-flight ``push`` behind another update: its
        acknowledgement timer starts only when it is written (``written``)."""
        if self.in_flight is push:
            self.waiting = True

    def written(self, push: Push, now: float) -> None:
        """The in-flight ``push``'s frame went upstream now: its timer starts."""
        if self.in_flight is push:
            self.waiting = False
            self.in_flight_at = now

    def wire_failed(self, push: Push, error: str) -> Outcome:
        """Writing the frame failed (socket gone, or not attempted): nothing reached the
        upstream. A dialect without acknowledgements took the push as running when it was
        taken: its base goes back to what ran before (when nothing was taken since)."""
        if self.in_flight is push:
            self.in_flight = None
        elif not self.acknowledging and self.base is push.config and self._before is not None:
            self.base = self._before
        self.quarantined.add(push.version)
        self.last_status = "rejected"
        return Outcome(push, "rejected", error)

    def nothing_to_send(self, push: Push) -> Outcome:
        """Every field of the push was skipped by the dialect (model cannot take them)."""
        if self.in_flight is push:
            self.in_flight = None
        self.base = push.config
        self.last_status = "skipped"
        return Outcome(push, "skipped")

    def acked(self, now: float, status: Status = "acked") -> Outcome | None:
        """The in-flight push was applied. ``status="unverified"`` when it was confirmed only
        as forwarded (a control-channel app on Streaming v3, which cannot acknowledge)."""
        push = self.in_flight
        if push is None:
            return None
        self.in_flight = None
        # the push's delta on what the upstream runs *now*: a client update answered while
        # the push waited its turn (one session.update outstanding) is part of it
        base = _apply(self.base, push.delta)
        if base == push.config:
            self.base = push.config  # (shared config objects)
        else:
            self.base = base
            self._resync()
        if status == "acked":
            self.acked_version = push.version
        self.last_status = status
        return Outcome(push, status, None, now - self.in_flight_at)

    def resend(self) -> bool:
        """The last push never reached the upstream (``wire_failed``; ``controlplane.push.owed``)
        and nothing newer is pending: a new version carries what the upstream still misses.
        True when one was queued (False: something is in flight or pending already, or
        nothing is missing)."""
        before = self.desired_version
        self._resync()
        return self.desired_version > before

    def _resync(self) -> None:
        """The base moved off the desired config with nothing more to send (an earlier push
        answered late, after a newer one was taken without it): a new version brings the
        upstream back to the desired config."""
        if (
            self.in_flight is None
            and self.desired_version == self.sent_version
            and (self._sendable())
        ):
            self.desired_version += 1
            self._unsent.append(self.desired_version)

    def rejected(
        self, code: str, message: str, now: float, fields: frozenset[str] | None = None
    ) -> Outcome | None:
        """The in-flight push was refused. ``fields``: the canonical fields the answer names
        (Voice Agent ``param``); their values are quarantined, else (none named, or none of
        them in the push) every (field, value) of the push's delta is. When fields were named
        and the rest of the delta is still wanted, it is queued again as a new version."""
        push = self.in_flight
        if push is None:
            return None
        self.in_flight = None
        named = sorted(f for f in fields or () if f in push.delta)
        refused = tuple(named) if named else tuple(sorted(push.delta))
        for name in refused:
            self.quarantine.add((name, push.delta[name]))
        self.quarantined.add(push.version)
        self.last_status = "rejected"
        if named and self.desired_version == self.sent_version and self._sendable():
            self.desired_version += 1  # the rest of the refused delta, without the refused
            self._unsent.append(self.desired_version)
        return Outcome(
            push, "rejected", f"{code}: {message}", now - self.in_flight_at, fields=refused
        )

    def partly_applied(
        self, code: str, message: str, now: float, refused: frozenset[str]
    ) -> Outcome | None:
        """The in-flight push was refused in part (``refused``: canonical fields whose values
        are quarantined) and the upstream applied the rest: the base takes the rest, the
        outcome is ``acked`` with ``applied`` = the rest and the refusal as its error. The
        version is not running (``held``: the refused fields), so it is not acknowledged."""
        push = self.in_flight
        if push is None:
            return None
        names = tuple(sorted(f for f in refused if f in push.delta))
        applied = {f: v for f, v in push.delta.items() if f not in names}
        if not names or not applied:  # (the caller sends those as acked / rejected)
            return self.acked(now) if not names else self.rejected(code, message, now, refused)
        self.in_flight = None
        for name in names:
            self.quarantine.add((name, push.delta[name]))
        self.quarantined.add(push.version)
        self.base = _apply(self.base, applied)
        self.held = names
        self.last_status = "rejected"
        error = f"refused in part ({code}: {message}); the rest applied"
        return Outcome(push, "acked", error, now - self.in_flight_at, names, applied)

    def abandoned(self, error: str) -> Outcome | None:
        """The session ended with a push in flight: it ends ``unverified`` (it may or may not
        have been applied; no answer can come any more), or ``rejected`` as not sent when it
        was still waiting in the transport (``queued``)."""
        push = self.in_flight
        if push is None:
            return None
        if self.waiting:  # never written: nothing reached the upstream (as ``wire_failed``)
            return self.wire_failed(push, "not sent: the session ended while it waited its turn")
        self.in_flight = None
        self.last_status = "unverified"
        return Outcome(push, "unverified", error)

    def late_answer(
        self, push: Push, applied: Delta, refused: tuple[str, ...] = (), status: Status = "acked"
    ) -> None:
        """``push`` ended without an answer in time (``timed_out``, ``unattributed``) and the
        upstream answered it after all: it applied ``applied`` (the push's delta, or the part
        it applied; ``refused``: the fields it refused; ``status`` ``unverified``: applied as
        a control-channel app reported on a dialect that cannot acknowledge). The base takes
        it now; the version is acknowledged when wholly applied and acknowledgeable; the state
        follows when no later push went."""
        if self.in_flight is push:
            return  # (not late: the caller acknowledges it)
        if self.unanswered is push:
            self.unanswered = None  # answered once
        for name in refused:  # refused values are never sent again (as ``rejected``)
            self.quarantine.add((name, push.delta[name]))
        if refused:
            self.quarantined.add(push.version)
        base = _apply(self.base, applied)
        self.base = push.config if base == push.config else base  # (shared config objects)
        self._resync()
        if not refused and status == "acked":
            self.acked_version = max(self.acked_version, push.version)
        if push.version == self.sent_version and self.in_flight is None:
            self.last_status = "rejected" if refused else status

    def unattributed(self, reason: str) -> Outcome | None:
        """An answer came that cannot be attributed to the in-flight push with certainty: it
        ends ``unverified`` with ``reason``; the base is left unchanged (as after a timeout)."""
        push = self.in_flight
        if push is None:
            return None
        self.in_flight = None
        self.last_status = "unverified"
        self.unanswered = push
        return Outcome(push, "unverified", reason)

    def timed_out(self, now: float, timeout: float) -> Outcome | None:
        """No acknowledgement within ``timeout``: the push ends ``unverified``.

        The base is left unchanged, so the next version re-sends those fields (idempotent)
        rather than assuming an unconfirmed change took effect.
        """
        push = self.in_flight
        if push is None or self.waiting or now - self.in_flight_at < timeout:
            return None
        self.in_flight = None
        self.last_status = "unverified"
        self.unanswered = push
        return Outcome(push, "unverified", f"no acknowledgement within {timeout:g}s")

    @property
    def state(self) -> str:
        if self.in_flight is not None or self.desired_version > self.sent_version:
            return "pending"
        if self.last_status == "rejected" or self.held:
            return "rejected"  # (or a quarantined value is held back: desired is not running)
        if self.last_status == "unverified":
            return "unverified"
        return "synced"

    def next_deadline(self, ack_timeout: float) -> float | None:
        """The monotonic time this state next needs a timer (hold deadline or ack timeout)."""
        if self.in_flight is not None:
            return None if self.waiting else self.in_flight_at + ack_timeout
        if self.hold_deadline is not None and self.desired_version > self.sent_version:
            return self.hold_deadline
        return None
