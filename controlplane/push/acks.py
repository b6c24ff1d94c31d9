"""What a session's socket adapter reports to the service, as values (sans-I/O).

Two kinds of news reach the service from a live session, whatever its socket:

- **an acknowledgement** of our in-flight push, a :data:`PushAck`: applied
  (:class:`PushApplied`), refused (:class:`PushRejected`, the refused canonical fields
  quarantined), refused in part with the rest applied (:class:`PushPartlyApplied`), or an
  answer that cannot be attributed with certainty (:class:`PushUnverified`). The gateway's
  Voice Agent leg derives them from the upstream's answers (``controlplane.push.agent_acks``);
  a control-channel app reports them (``applied`` / ``failed``).
- **a client's own update**, a :class:`ClientUpdate`: how far it got (``sent`` when nothing
  answers it, else ``acked`` / ``rejected`` / ``unverified``), what the upstream runs from it,
  and the part the control plane refused before it went (:class:`ClientRefusal`: locked or
  invalid fields).

``controlplane.service.sessions`` turns each into the push engine's calls and version-log
entries in one trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from policies.fields import Delta

__all__ = [
    "ClientRefusal",
    "ClientStatus",
    "ClientUpdate",
    "PushAck",
    "PushApplied",
    "PushPartlyApplied",
    "PushRejected",
    "PushUnverified",
]

ClientStatus = Literal["sent", "acked", "rejected", "unverified"]


@dataclass(frozen=True, slots=True)
class PushApplied:
    """The in-flight push was applied: ``acked`` by the upstream, or ``unverified`` when a
    control-channel app confirms a Streaming v3 push (written, never acknowledgeable)."""

    status: Literal["acked", "unverified"] = "acked"
    # an acknowledgement the answer cannot prove is this push's own (Voice Agent: an echo an
    # earlier timed-out update expects too): said in the entry; what it asked runs either way
    note: str | None = None


@dataclass(frozen=True, slots=True)
class PushRejected:
    """The in-flight push was refused; ``fields``: the canonical fields the refusal names
    (None: every field of the push), whose values are quarantined for the session."""

    code: str
    reason: str
    fields: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class PushPartlyApplied:
    """Refused in part (``fields``, quarantined), the rest applied by the upstream."""

    code: str
    reason: str
    fields: frozenset[str]


@dataclass(frozen=True, slots=True)
class PushUnverified:
    """An answer that cannot be pinned on the in-flight push with certainty: it ends
    ``unverified`` with ``reason`` (never a guessed ``acked`` or ``rejected``)."""

    reason: str


PushAck = PushApplied | PushRejected | PushPartlyApplied | PushUnverified


@dataclass(frozen=True, slots=True)
class ClientRefusal:
    """The part of a client's update the control plane refused before forwarding it (locked
    by a policy, or an invalid value): logged ``rejected``; ``counted``: the reject reason
    counted in the metrics (None: not counted)."""

    delta: Delta
    wire: dict[str, Any] | None
    error: str
    counted: str | None = "locked_field"


@dataclass(frozen=True, slots=True)
class ClientUpdate:
    """A client's own update, as far as it got.

    ``status``: ``sent`` (forwarded; nothing will answer it), ``acked`` (the upstream echoed
    it), ``rejected`` or ``unverified``. ``delta``: with ``sent`` / ``acked``, what the upstream
    runs from it (adopted into the session's client and upstream config); otherwise what the
    client asked. A ``sent`` update with an empty delta is not logged (nothing went, or only
    the ``refusal``). ``refusal``: the part refused before it went, logged first."""

    status: ClientStatus
    delta: Delta
    wire: dict[str, Any] | None
    error: str | None = None
    refusal: ClientRefusal | None = None
    # ``upstream``: not the client's update but the upstream's news about an earlier update
    # it did not apply as recorded (a Streaming v3 ``Warning`` the model did not predict):
    # logged ``unverified`` with the warning, nothing adopted
    cause: Literal["client", "upstream"] = "client"
    # Streaming v3 through the gateway: the canonical fields in doubt once this is recorded
    # (the session's ``in_doubt``; None: unchanged). An ``upstream`` doubt sets them; a later
    # update setting a field (ours or the client's) ends its doubt
    in_doubt: frozenset[str] | None = None

    @property
    def adopted(self) -> bool:
        """Whether the upstream now runs ``delta`` (the session's config follows it)."""
        return self.status in ("sent", "acked") and bool(self.delta)

    @property
    def logged(self) -> bool:
        return self.status != "sent" or bool(self.delta)
