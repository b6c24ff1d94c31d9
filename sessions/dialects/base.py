"""What every wire dialect shares: encode results, connect info, upstream events, the protocol.

A dialect is a stateless, sans-I/O codec between canonical config (``policies.fields``) and one
upstream wire protocol. It never touches a socket: messages in and out are plain JSON-able
``dict``\\ s, so a unit test drives it with literals.

- ``Encoded``: what ``encode`` produced for a delta (the message, what was skipped and why).
- ``ConnectInfo``: model and client config learned from how a session opened.
- ``UpstreamEvent``: the few upstream events the control plane reacts to (``Ready``, ``Acked``,
  ``Rejected``, ``Warned``, ``Fatal``, ``TurnBoundary``, ``Ended``; everything else ``Other``).
- ``Dialect``: the protocol both codecs implement; ``dialect_for(kind)`` returns one.

The value helpers at the bottom (``ordered_fields``, ``to_wire``, ``to_canonical``,
``clear_value``) are the canonical ↔ JSON rules both codecs follow.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, TypeAlias

from policies.errors import Violation
from policies.fields import FIELDS, Config, Delta, Value, check_value
from sessions.errors import DialectError

__all__ = [
    "Acked",
    "ConnectInfo",
    "Dialect",
    "Encoded",
    "Ended",
    "Fatal",
    "Other",
    "Ready",
    "Rejected",
    "TurnBoundary",
    "UpstreamEvent",
    "Warned",
    "clear_value",
    "ordered_fields",
    "to_canonical",
    "to_wire",
]

_EMPTY: Mapping[str, str] = MappingProxyType({})
_MALFORMED = frozenset({"type", "encoding"})  # value rules that make a wire value unreadable


def _empty() -> Mapping[str, str]:
    return _EMPTY


@dataclass(frozen=True)
class Encoded:
    """Result of encoding a canonical delta for one session.

    ``message`` is the exact frame to send, or ``None`` when nothing is left to send.
    ``skipped`` maps each canonical field that was not encoded to a human reason that starts
    with the field name (``"prompt: model … does not accept prompt (U3-Pro family only)"``).
    ``sent_fields`` lists the canonical fields actually encoded, in canonical order.
    """

    message: dict[str, Any] | None
    skipped: Mapping[str, str] = field(default_factory=_empty)
    sent_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConnectInfo:
    """What a session's opening told us: its model, the client's own config, its labels."""

    model: str
    client_config: Config
    labels: Mapping[str, str] = field(default_factory=_empty)


@dataclass(frozen=True)
class Ready:
    """The upstream session exists (streaming ``Begin``, voice agent ``session.ready``)."""

    upstream_id: str


@dataclass(frozen=True)
class Acked:
    """The upstream applied an update (voice agent ``session.updated``); ``config`` as echoed."""

    config: Mapping[str, Any]


@dataclass(frozen=True)
class Rejected:
    """A non-fatal ``session.error``: the session stays open, the update was not applied.

    Note that the voice agent also reports non-config problems (``invalid_audio``,
    ``audio_rate_violation``) this way; correlate with an update in flight before blaming one.
    """

    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class Warned:
    """A streaming ``Warning`` (non-fatal; e.g. a U3-only field stripped mid-stream)."""

    code: str
    message: str


@dataclass(frozen=True)
class Fatal:
    """An error after which the upstream session is gone (streaming ``Error``, fatal
    voice agent ``session.error``)."""

    code: str
    message: str


@dataclass(frozen=True)
class TurnBoundary:
    """A turn finished (streaming final ``Turn``, voice agent ``reply.done``)."""


@dataclass(frozen=True)
class Ended:
    """The upstream ended the session cleanly (``Termination`` / ``session.ended``)."""


@dataclass(frozen=True)
class Other:
    """Any other upstream message; ``type`` is its ``type`` (``""`` when it has none)."""

    type: str


UpstreamEvent: TypeAlias = Ready | Acked | Rejected | Warned | Fatal | TurnBoundary | Ended | Other


class Dialect(Protocol):
    """A sans-I/O codec for one upstream wire protocol (one session kind)."""

    @property
    def name(self) -> str:
        """The session kind: ``"streaming-v3"`` or ``"voice-agent-v1"``."""
        ...

    @property
    def acknowledges(self) -> bool:
        """Whether the upstream acknowledges an update (then ``Acked``/``Rejected`` follow)."""
        ...

    def encode(self, delta: Delta, model: str) -> Encoded:
        """The update frame for ``delta`` on ``model``; ``None`` values unset (clear/default)."""
        ...

    def parse_client_update(self, msg: Mapping[str, Any]) -> Delta | None:
        """The canonical fields a client config update sets (clearing values become ``None``);
        ``None`` when ``msg`` is not a config update. Raises ``DialectError`` on a
        wrongly-typed value of a canonical field."""
        ...

    def strip_locked(
        self, msg: Mapping[str, Any], locked: Collection[str]
    ) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
        """A copy of client update ``msg`` without the wire fields of ``locked`` canonical
        fields, and which canonical fields were stripped. The copy is ``None`` when stripping
        left only the ``type`` envelope; a message that is not an update comes back unchanged."""
        ...

    def parse_upstream(self, msg: Mapping[str, Any]) -> UpstreamEvent:
        """Classify one upstream JSON message. Never raises."""
        ...

    def check_limits(self, config: Config, model: str) -> list[Violation]:
        """Wire limits of this dialect for ``model`` that ``config`` breaks (empty when fine).

        Fields the dialect or model cannot take are skipped on encode, not violations here."""
        ...


# --- canonical <-> JSON value rules shared by the codecs ------------------------------------


def ordered_fields(keys: Iterable[str]) -> list[str]:
    """``keys`` in canonical field order (``policies.fields.FIELDS``); unknown keys last, in
    their given order."""
    present = list(keys)
    known = [name for name in FIELDS if name in present]
    return known + [name for name in present if name not in FIELDS]


def to_wire(value: Value) -> str | int | float | list[str]:
    """A canonical value as JSON: tuples become lists, scalars stay as they are."""
    if isinstance(value, tuple):
        return list(value)
    return value


def clear_value(name: str) -> str | list[str]:
    """The wire value that clears a string or list field: ``""`` or ``[]``."""
    kind = FIELDS[name].kind
    if kind == "str":
        return ""
    if kind == "str_list":
        return []
    raise ValueError(f"{name} ({kind}) has no clearing value")


def to_canonical(dialect: str, name: str, wire: str, raw: Any) -> Value | None:
    """A client's wire value for canonical field ``name`` (sent as ``wire``), normalised.

    A clearing value (``""`` for a string field, ``[]`` for a list field) becomes ``None``.
    Only type errors and text that is not valid Unicode (a lone surrogate, which no log can
    record) raise (``DialectError`` naming ``wire``); limits are not checked here, a client's
    over-limit value is the upstream's business.
    """
    kind = FIELDS[name].kind
    if (kind == "str" and raw == "") or (kind == "str_list" and isinstance(raw, list) and not raw):
        return None
    value, problems = check_value(name, raw, wire)
    for problem in problems:
        if problem.rule in _MALFORMED:
            raise DialectError(f"{problem.field}: {problem.message}", dialect=dialect, field=wire)
    return value
