"""Policy events and the bus that carries them (DESIGN.md §4 NATS contract).

The in-process bus is the embedded default; the NATS JetStream bus (distributed mode) keeps
the same interface. ``publish`` returns once the event is stored (in-process: once handled,
by the bus's own delivery task: ``InProcessBus``).

Decoding (issue #19): ``decode_event`` turns the bytes of one message into an event or raises
``UndecodableEvent`` (a ``ValueError`` carrying the event type when it could be read, and the
reason) for ANY input: not JSON, bad UTF-8, nested deeper than ``MAX_EVENT_DEPTH`` (a
5,000-deep array made ``json`` raise ``RecursionError``), larger than ``MAX_EVENT_BYTES``, or a
wrong shape. Consumers count such an event ``invalid``, acknowledge it and go on.

Contract addition (issue #8): ``policy.halted`` events (cause ``guard``, ``Nats-Msg-Id:
<id>:<version>:halted``) say the rollout guard stopped that version; they carry the halted
version's document and a ``halt`` object with the reason (docs/policies.md#guard).

Contract addition (issue #18): ``role``, the publisher's role name (``viewer`` … ``admin``,
controlplane.roles); the rollout guard's events carry the policy's owner role. Every replica's
store derives a policy's owner role from it (docs/policies.md#ownership). Optional on the
wire: events without it are attributed to the role prefix of ``actor``, else (an operator's
tool) keep the policy's owner (controlplane.roles.event_role).

Contract addition (session 10, docs/security.md#teams): ``team``, the team the publisher acts
for (a configured team name; ``default`` for a token without one, and for an event without
``team``). Every replica's store derives a policy's owner team from it; at the owner role
below admin an event for another team is refused, and so is one crossing a lock bound to
another team of its role or running another team's experiment key (session 11,
controlplane.intake.team_locks). Optional on the wire: guard and operator events carry none.
Contract addition (session 12, docs/security.md#transfers): cause ``transfer``, an admin
handing a policy id to another team: the current document again (same content, next version,
``policy.retired`` when the policy is retired), ``role`` admin, ``team`` the new owner team;
the owner role stays. Every replica's store checks it (``intake.team_locks.transfer_refusal``).
Session 12: ``team`` follows the one team-name rule (``roles.canonical_team``: ASCII name,
read in lower case); an event with any other ``team`` (a space, a look-alike letter) is
undecodable, so never applied.

Contract addition (issue #21, progressive waves, docs/policies.md#waves): ``policy.wave``
events (cause ``wave``, ``Nats-Msg-Id: <id>:<version>:wave:<seq>``) move the current version
through its ``rollout.waves``; they carry the version's document and a ``wave`` object
``{"seq", "action": advance|promote|pause|resume, "index", "percent", "paused"}``: ``seq``
counts the version's wave events from 1, so two replicas deciding the same advance publish
the same message id (JetStream keeps one) and every store applies only ``seq = last + 1``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from controlplane.errors import Unavailable
from controlplane.roles import canonical_team
from controlplane.tasks import raise_if_cancelled, stop_task
from policies.documents import text_violations
from policies.limits import MAX_VERSION

__all__ = [
    "CAUSES",
    "EVENT_TYPES",
    "MAX_EVENT_BYTES",
    "MAX_EVENT_DEPTH",
    "WAVE_ACTIONS",
    "EventHandler",
    "InProcessBus",
    "PolicyBus",
    "PolicyEvent",
    "UndecodableEvent",
    "decode_event",
    "rfc3339",
]

log = logging.getLogger(__name__)

# the InProcessBus delivery a task runs in: its handler's call stack, and the tasks started
# from it (a task copies its creator's context)
_DELIVERY: ContextVar[object | None] = ContextVar("policy_bus_delivery", default=None)

EventType = Literal["policy.published", "policy.retired", "policy.halted", "policy.wave"]
EVENT_TYPES: tuple[str, ...] = (
    "policy.published", "policy.retired", "policy.halted", "policy.wave",
)  # fmt: skip
CAUSES: tuple[str, ...] = ("policy", "rollback", "retire", "guard", "wave", "transfer")
WAVE_ACTIONS: tuple[str, ...] = ("advance", "promote", "pause", "resume")
EventHandler = Callable[["PolicyEvent"], Awaitable[None]]
MAX_EVENT_BYTES = 1024 * 1024  # the policy stream's max_msg_size
# a policy event is an object holding the policy document (a few levels deep at most: match
# labels, experiment variants); anything deeper is not ours
MAX_EVENT_DEPTH = 32


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class PolicyEvent:
    """One message on ``cp.policy.<policy_id>``; ``msg_id`` is the ``Nats-Msg-Id`` header."""

    type: EventType
    policy: Mapping[str, Any]
    actor: str
    published_at: str
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    cause: str = "policy"  # policy | rollback | retire | guard | wave | transfer (optional)
    # policy.halted only: why the rollout guard stopped this version (docs/policies.md#guard)
    halt: Mapping[str, Any] | None = None
    # the publisher's role name (issue #18); None on events published before the field
    role: str | None = None
    # policy.wave only: the wave step (docs/policies.md#waves)
    wave: Mapping[str, Any] | None = None
    # the team the publisher acts for (docs/security.md#teams); None: no team claimed.
    # Always in its canonical spelling (``roles.canonical_team``: lower case), however built
    team: str | None = None

    def __post_init__(self) -> None:
        if self.team is not None:  # one team however an event spells it (ValueError if none)
            object.__setattr__(self, "team", canonical_team(self.team))

    @property
    def policy_id(self) -> str:
        return str(self.policy["id"])

    @property
    def version(self) -> int:
        return int(self.policy["version"])

    @property
    def msg_id(self) -> str:
        """``<id>:<version>``; a halt of that version is ``<id>:<version>:halted``, its wave
        steps ``<id>:<version>:wave:<seq>``."""
        suffix = ":halted" if self.type == "policy.halted" else ""
        if self.type == "policy.wave":
            suffix = f":wave:{self.wave_seq}"
        return f"{self.policy_id}:{self.version}{suffix}"

    @property
    def wave_seq(self) -> int:
        return int((self.wave or {}).get("seq", 0))

    def to_json(self) -> dict[str, Any]:
        out = {
            "type": self.type,
            "policy": dict(self.policy),
            "actor": self.actor,
            "published_at": self.published_at,
            "event_id": self.event_id,
            "cause": self.cause,
        }
        if self.halt is not None:
            out["halt"] = dict(self.halt)
        if self.role is not None:
            out["role"] = self.role
        if self.wave is not None:
            out["wave"] = dict(self.wave)
        if self.team is not None:
            out["team"] = self.team
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PolicyEvent:
        """Decode a wire event; raises ValueError naming the offending field.

        Text that cannot be written back as UTF-8 (a lone surrogate spelled ``"\\ud800"``) is
        refused here: an event must re-encode exactly as it was published.
        """
        if not isinstance(raw, Mapping):
            raise ValueError("event must be a JSON object")
        unencodable = text_violations(raw)
        if unencodable:
            raise ValueError(f"{unencodable[0].field}: {unencodable[0].message}")
        kind = raw.get("type")
        if kind not in EVENT_TYPES:
            raise ValueError(f"type must be one of {', '.join(EVENT_TYPES)}, got {kind!r}")
        policy = raw.get("policy")
        if not isinstance(policy, Mapping):
            raise ValueError("policy must be an object")
        if not isinstance(policy.get("id"), str):
            raise ValueError("policy.id must be a string")
        version = policy.get("version")
        if (isinstance(version, bool) or not isinstance(version, int)
                or not 1 <= version <= MAX_VERSION):  # fmt: skip
            raise ValueError(f"policy.version must be an integer from 1 to {MAX_VERSION}")
        actor = raw.get("actor", "unknown")
        published_at = raw.get("published_at", "")
        event_id = raw.get("event_id") or uuid.uuid4().hex
        default = {"policy.retired": "retire", "policy.halted": "guard",
                   "policy.wave": "wave"}.get(kind, "policy")  # fmt: skip
        cause = raw.get("cause", default)
        if cause not in CAUSES:
            raise ValueError(f"cause must be one of {', '.join(CAUSES)}, got {cause!r}")
        halt = raw.get("halt")
        if halt is not None and not isinstance(halt, Mapping):
            raise ValueError("halt must be an object")
        role = raw.get("role")
        if role is not None and not (isinstance(role, str) and role.isascii() and role.isalpha()
                                     and len(role) <= 32):  # fmt: skip
            raise ValueError("role must be a role name")
        wave = _wave(raw.get("wave"), kind)
        team = raw.get("team")
        if team is not None:
            try:
                team = canonical_team(team)
            except ValueError as exc:
                raise ValueError(f"team: {exc}") from None
        return cls(kind, dict(policy), str(actor), str(published_at), str(event_id), str(cause),
                   None if halt is None else dict(halt), role, wave, team)  # fmt: skip


def _wave(wave: object, kind: str) -> dict[str, Any] | None:
    """The ``wave`` object: required on ``policy.wave`` (seq, action, index), else absent."""
    if kind != "policy.wave":
        if wave is not None:
            raise ValueError("wave is only for policy.wave events")
        return None
    if not isinstance(wave, Mapping):
        raise ValueError("wave must be an object")
    for name, top in (("seq", MAX_VERSION), ("index", 1000)):
        value = wave.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise ValueError(f"wave.{name} must be an integer from 0 to {top}")
    if wave.get("action") not in WAVE_ACTIONS:
        raise ValueError(f"wave.action must be one of {', '.join(WAVE_ACTIONS)}")
    return dict(wave)


class UndecodableEvent(ValueError):
    """An event that cannot be decoded; ``type`` is its ``type`` field when that could be read
    (one of ``EVENT_TYPES``), else ``"unknown"``."""

    def __init__(self, reason: str, type: str = "unknown") -> None:
        super().__init__(reason)
        self.type = type


def decode_event(data: bytes, max_bytes: int = MAX_EVENT_BYTES) -> PolicyEvent:
    """Decode one message body; raises ``UndecodableEvent`` for any input it cannot decode
    (module docstring), never another exception. ``max_bytes``: the size bound (the stream's
    by default; the embedded policy files have their own, controlplane.intake.files)."""
    if len(data) > max_bytes:
        raise UndecodableEvent(f"event of {len(data)} bytes is over {max_bytes} bytes")
    try:
        raw = json.loads(data)
    except RecursionError:  # the C decoder recurses once per level
        raise UndecodableEvent(f"nested deeper than {MAX_EVENT_DEPTH} levels") from None
    except ValueError as exc:  # includes bad UTF-8
        raise UndecodableEvent(f"not JSON: {exc}"[:300]) from None
    kind = raw.get("type") if isinstance(raw, dict) else None
    kind = kind if isinstance(kind, str) and kind in EVENT_TYPES else "unknown"
    if _deeper_than(raw, MAX_EVENT_DEPTH):
        raise UndecodableEvent(f"nested deeper than {MAX_EVENT_DEPTH} levels", kind)
    try:
        return PolicyEvent.from_json(raw)
    except ValueError as exc:
        raise UndecodableEvent(str(exc)[:300], kind) from None
    except Exception as exc:  # never a crash of the consumer: name it and refuse the event
        raise UndecodableEvent(f"undecodable event ({type(exc).__name__})", kind) from None


def _deeper_than(value: object, limit: int) -> bool:
    """Whether JSON containers nest more than ``limit`` levels (iterative: no recursion)."""
    stack: list[tuple[dict[str, object] | list[object], int]] = []
    if isinstance(value, dict | list):
        stack.append((value, 1))
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


class PolicyBus(Protocol):
    def subscribe(self, handler: EventHandler) -> None: ...

    async def publish(self, event: PolicyEvent) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class InProcessBus:
    """Embedded mode's bus, shaped like the NATS one: one delivery task hands each event, in
    publish order, to the subscribed handlers (the handler the NATS consumer calls), never on
    the publisher's call stack.

    ``publish`` queues the event and waits for its delivery's receipt: embedded mode has no
    stream that stores an event apart from handling it, so what the handling raised (a policy
    file the disk refuses: 503) is the publisher's answer. A publish that is part of the
    delivery in progress — from a handler, or from a task a handler started while that
    delivery lasts (the handler may await it) — gets no receipt: it would wait for the
    delivery it runs in, which waits for it. Its event is delivered after the current one;
    without a publisher waiting, a handler's error is logged, as the NATS consumer does."""

    def __init__(self) -> None:
        self._handlers: list[EventHandler] = []
        self._queue: asyncio.Queue[tuple[PolicyEvent, asyncio.Future[None] | None]] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None
        self._receipt: asyncio.Future[None] | None = None  # of the event being delivered
        self._delivery: object | None = None  # marks the delivery in progress (_DELIVERY)

    def subscribe(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    async def publish(self, event: PolicyEvent) -> None:
        if self._task is None:
            raise Unavailable("the policy bus is not running", code="bus_stopped")
        delivery = _DELIVERY.get()
        if delivery is not None and delivery is self._delivery:  # within that delivery
            self._queue.put_nowait((event, None))
            return
        receipt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, receipt))
        await receipt

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._deliver(), name="policy-bus-delivery"
            )

    async def close(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        stopped = Unavailable("the policy bus closed during delivery", code="bus_stopped")
        if self._receipt is not None and not self._receipt.done():
            self._receipt.set_exception(stopped)
        while not self._queue.empty():
            _event, receipt = self._queue.get_nowait()
            if receipt is not None and not receipt.done():
                receipt.set_exception(stopped)
        self._handlers.clear()

    async def _deliver(self) -> None:
        while True:
            event, receipt = await self._queue.get()
            self._receipt = receipt
            self._delivery = delivery = object()
            token = _DELIVERY.set(delivery)
            try:
                for handler in self._handlers:
                    await handler(event)
            except Exception as exc:  # counted by the handler; the publisher's answer
                raise_if_cancelled()
                if receipt is None or receipt.done():
                    log.exception("policy event %s failed in its handler", event.msg_id)
                else:
                    receipt.set_exception(exc)
            else:
                if receipt is not None and not receipt.done():
                    receipt.set_result(None)
            finally:
                self._delivery = None
                _DELIVERY.reset(token)
