"""What a sans-I/O session machine asks its adapter (the pump) to do, in order.

Socket writes (:class:`ToUpstream`, :class:`ToClient`, :class:`CloseClient`) and the service
calls of ``controlplane.service.sessions.SessionPort`` (:class:`Acknowledge`,
:class:`ClientChange`, :class:`Ready`, :class:`TurnBoundary`, :class:`Kick`,
:class:`Written`, :class:`Queued`, :class:`Count`). The machines
(``controlplane.push.agent_acks``, ``controlplane.edges.proxy``) return lists of them; the
pump executes each list in order (the model: ``emulator/actions.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.push.acks import ClientUpdate, PushAck
from controlplane.push.protocol import Push

__all__ = [
    "Acknowledge",
    "Action",
    "ClientChange",
    "CloseClient",
    "Count",
    "Kick",
    "Queued",
    "Ready",
    "ToClient",
    "ToUpstream",
    "TurnBoundary",
    "Written",
]


@dataclass(frozen=True, slots=True)
class ToUpstream:
    """Send one text frame to the upstream."""

    text: str


@dataclass(frozen=True, slots=True)
class ToClient:
    """Send one text frame to the client; ``quiet``: a failed send is ignored (an error or
    warning frame), else it ends the session's relay as a lost connection."""

    text: str
    quiet: bool = False


@dataclass(frozen=True, slots=True)
class CloseClient:
    """Close the client's socket with ``code`` and ``reason``."""

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Acknowledge:
    """Our in-flight push was answered (``SessionPort.acknowledge``)."""

    ack: PushAck


@dataclass(frozen=True, slots=True)
class ClientChange:
    """The client's own update went, was refused, or was answered
    (``SessionPort.client_update``)."""

    update: ClientUpdate


@dataclass(frozen=True, slots=True)
class Ready:
    """The upstream session is ready (``SessionPort.ready``): pushes may go."""

    upstream_id: str | None


@dataclass(frozen=True, slots=True)
class TurnBoundary:
    """A turn ended: ``next_turn`` pushes may go (``SessionPort.turn_boundary``)."""


@dataclass(frozen=True, slots=True)
class Kick:
    """Send whatever push is pending (``SessionPort.kick``)."""


@dataclass(frozen=True, slots=True)
class Written:
    """``push``'s frame goes upstream now: its acknowledgement timer starts."""

    push: Push


@dataclass(frozen=True, slots=True)
class Queued:
    """``push`` waits behind another update: no acknowledgement timer runs yet."""

    push: Push


@dataclass(frozen=True, slots=True)
class Count:
    """A refused client frame, counted under ``reason`` (``rejects`` metric)."""

    reason: str


Action = (
    ToUpstream
    | ToClient
    | CloseClient
    | Acknowledge
    | ClientChange
    | Ready
    | TurnBoundary
    | Kick
    | Written
    | Queued
    | Count
)
