"""What a sans-I/O session machine asks its adapter (the pump) to do, in order.

Socket writes (:class:`ToUpstream`, :class:`ToClient`, :class:`CloseClient`) and the service
calls of ``controlplane.service.sessions.SessionPort`` (:class:`Acknowledge`,
:class:`ConnectAnswer`, :class:`LateAnswer`, :class:`Reconnect`, :class:`Resumed`,
:class:`ClientChange`,
:class:`Ready`, :class:`TurnBoundary`, :class:`Kick`, :class:`Written`, :class:`Queued`,
:class:`Count`).
The machines (``controlplane.push.agent_acks``, ``controlplane.edges.proxy``) return lists of
them; the pump executes each list in order (the model: ``emulator/actions.py``).

They are ``@value`` classes (``policies.values``): frozen for the type checker, plain slotted
dataclasses at run time — a fan-out builds a ``ToUpstream`` per gateway session, and a frozen
dataclass's ``__init__`` (``object.__setattr__`` per field) was a third of the pump's cost
per push.
"""

from __future__ import annotations

from typing import Any

from controlplane.push.acks import ClientUpdate, PushAck
from controlplane.push.protocol import Push
from policies.provenance import PolicyRef
from policies.values import value

__all__ = [
    "Acknowledge",
    "Action",
    "ClientChange",
    "CloseClient",
    "ConnectAnswer",
    "Count",
    "Kick",
    "LateAnswer",
    "Queued",
    "Ready",
    "Reconnect",
    "Resumed",
    "ToClient",
    "ToUpstream",
    "TurnBoundary",
    "Written",
]


@value
class ToUpstream:
    """Send one text frame to the upstream."""

    text: str


@value
class ToClient:
    """Send one text frame to the client; ``quiet``: a failed send is ignored (an error or
    warning frame), else it ends the session's relay as a lost connection."""

    text: str
    quiet: bool = False


@value
class CloseClient:
    """Close the client's socket with ``code`` and ``reason``."""

    code: int
    reason: str = ""


@value
class Acknowledge:
    """Our in-flight push was answered (``SessionPort.acknowledge``)."""

    ack: PushAck


@value
class ConnectAnswer:
    """The upstream answered the session's connect (Voice Agent: the first
    ``session.update``, answered by ``session.ready`` or refused by ``session.error``):
    ``SessionPort.connect_answered``. ``refs``: the policy versions the connect carried;
    ``version``: its config version (1, or a later connect after a refused one)."""

    ack: PushAck
    refs: tuple[PolicyRef, ...]
    version: int = 1
    late: bool = False  # after the connect was recorded ``unverified`` (no answer in time)


@value
class LateAnswer:
    """The upstream answered ``push`` after its outcome was recorded (no acknowledgement in
    time): ``SessionPort.late_answer`` records the answer as a later entry."""

    push: Push
    ack: PushAck


@value
class Reconnect:
    """The client's ``session.update`` after the upstream refused the connect (no upstream
    session exists: the upstream takes it as a first message): a new connect
    (``SessionPort.reconnect``), then ``AgentAcks.first``."""

    message: dict[str, Any]


@value
class Resumed:
    """The upstream's ``session.ready`` to the client's ``session.resume``: the resumed
    session runs ``config`` (the ``session`` object it echoes), ``SessionPort.resumed``."""

    config: dict[str, Any]


@value
class ClientChange:
    """The client's own update went, was refused, or was answered
    (``SessionPort.client_update``)."""

    update: ClientUpdate


@value
class Ready:
    """The upstream session is ready (``SessionPort.ready``): pushes may go."""

    upstream_id: str | None


@value
class TurnBoundary:
    """A turn ended: ``next_turn`` pushes may go (``SessionPort.turn_boundary``)."""


@value
class Kick:
    """Send whatever push is pending (``SessionPort.kick``)."""


@value
class Written:
    """``push``'s frame goes upstream now: its acknowledgement timer starts."""

    push: Push


@value
class Queued:
    """``push`` waits behind another update: no acknowledgement timer runs yet."""

    push: Push


@value
class Count:
    """A refused client frame, counted under ``reason`` (``rejects`` metric)."""

    reason: str


Action = (
    ToUpstream
    | ToClient
    | CloseClient
    | Acknowledge
    | ConnectAnswer
    | LateAnswer
    | Reconnect
    | Resumed
    | ClientChange
    | Ready
    | TurnBoundary
    | Kick
    | Written
    | Queued
    | Count
)
