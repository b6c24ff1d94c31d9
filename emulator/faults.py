"""Fault knobs: global defaults (settings / ``POST /_emulator/faults``) and per session.

A fault document (JSON) has these optional keys; ``null`` clears one:

- ``latency_ms``: wait this long before handling each received control message.
- ``handshake_delay_ms``: wait this long before answering the WebSocket upgrade of a new
  session (a slow upstream handshake; only meaningful as a global default, ``POST
  /_emulator/faults``). A client that gives up meanwhile opens no session.
- ``stop_reading``: ``true``: the session stops reading its socket (its handler takes no
  frame and runs no timer until the knob is cleared; aiohttp stops reading the socket once
  its own queue is full, then the kernel buffers fill and the peer's writes wait): an
  upstream that stops reading (frozen, overloaded); set on a live session, its socket stops
  reading at once. ``false``/``null``: it reads on.
- ``drop_after_messages``: after handling N more control (non-audio) messages, drop the TCP
  connection without a close frame (the client sees 1006; a voice-agent session becomes
  resumable).
- ``reject_next_update``: ``{"code": ..., "message": ..., "style": "error"|"warning"}``; the
  next update is refused. Voice agent: ``session.error`` with ``code`` (default
  ``invalid_config``), nothing applied, session stays open. Streaming v3: ``style`` ``error``
  (default) sends ``Error`` with ``code`` (default 3006) and closes with that code; ``warning``
  sends a ``Warning`` with ``code`` and drops the whole update, session stays open.
- ``fail_fields``: ``{"<field>": "<code>"}``; whenever an update touches that field (voice agent:
  dotted path such as ``input.turn_detection.min_silence``) it is refused. Voice agent:
  ``session.error{code, param}`` (default ``invalid_value``), handled like an immutable field.
  Streaming v3: the field is stripped and a ``Warning`` (``code`` if numeric, else the
  configured warning code) is sent; the rest of the update applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from emulator.errors import InvalidFaults

__all__ = ["FaultSpec", "FaultState", "RejectSpec", "parse_faults"]


@dataclass(frozen=True)
class RejectSpec:
    code: str | int | None = None
    message: str | None = None
    style: Literal["error", "warning"] = "error"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "style": self.style}


@dataclass(frozen=True)
class FaultSpec:
    latency_ms: float = 0.0
    handshake_delay_ms: float = 0.0
    drop_after_messages: int | None = None
    stop_reading: bool = False
    reject_next_update: RejectSpec | None = None
    fail_fields: Mapping[str, str | int] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "handshake_delay_ms": self.handshake_delay_ms,
            "drop_after_messages": self.drop_after_messages,
            "stop_reading": self.stop_reading,
            "reject_next_update": (
                self.reject_next_update.to_dict() if self.reject_next_update else None
            ),
            "fail_fields": dict(self.fail_fields),
        }


def _number(doc: Mapping[str, Any], key: str) -> float | None:
    value = doc[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidFaults(key, "must be a non-negative number or null")
    return float(value)


def parse_faults(doc: object, base: FaultSpec | None = None) -> FaultSpec:
    """Merge a fault document onto ``base``: keys present replace, ``null`` clears."""
    if not isinstance(doc, Mapping):
        raise InvalidFaults("", "the body must be a JSON object")
    spec = base or FaultSpec()
    known = {
        "latency_ms", "handshake_delay_ms", "drop_after_messages", "reject_next_update",
        "fail_fields", "stop_reading",
    }  # fmt: skip
    unknown = sorted(set(doc) - known)
    if unknown:
        raise InvalidFaults(unknown[0], f"unknown fault knob (known: {', '.join(sorted(known))})")
    if "latency_ms" in doc:
        spec = replace(spec, latency_ms=_number(doc, "latency_ms") or 0.0)
    if "handshake_delay_ms" in doc:
        spec = replace(spec, handshake_delay_ms=_number(doc, "handshake_delay_ms") or 0.0)
    if "drop_after_messages" in doc:
        value = doc["drop_after_messages"]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidFaults("drop_after_messages", "must be an integer or null")
        if value is not None and value < 0:
            raise InvalidFaults("drop_after_messages", "must be >= 0")
        spec = replace(spec, drop_after_messages=value)
    if "stop_reading" in doc:
        value = doc["stop_reading"]
        if value is not None and not isinstance(value, bool):
            raise InvalidFaults("stop_reading", "must be true, false or null")
        spec = replace(spec, stop_reading=bool(value))
    if "reject_next_update" in doc:
        spec = replace(spec, reject_next_update=_parse_reject(doc["reject_next_update"]))
    if "fail_fields" in doc:
        raw = doc["fail_fields"]
        if raw is None:
            raw = {}
        if isinstance(raw, list):
            raw = {str(name): None for name in raw}
        if not isinstance(raw, Mapping):
            raise InvalidFaults("fail_fields", "must be an object {field: code} or a list")
        fields: dict[str, str | int] = {}
        for name, given in raw.items():
            if not isinstance(name, str) or not name:
                raise InvalidFaults("fail_fields", "field names must be non-empty strings")
            code = "invalid_value" if given is None else given
            if isinstance(code, bool) or not isinstance(code, str | int):
                raise InvalidFaults(f"fail_fields.{name}", "code must be a string or integer")
            fields[name] = code
        spec = replace(spec, fail_fields=MappingProxyType(fields))
    return spec


def _parse_reject(raw: object) -> RejectSpec | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        return RejectSpec()
    if not isinstance(raw, Mapping):
        raise InvalidFaults("reject_next_update", "must be an object, true or null")
    code = raw.get("code")
    if code is not None and (isinstance(code, bool) or not isinstance(code, str | int)):
        raise InvalidFaults("reject_next_update.code", "must be a string or integer")
    message = raw.get("message")
    if message is not None and not isinstance(message, str):
        raise InvalidFaults("reject_next_update.message", "must be a string")
    style = raw.get("style", "error")
    if style not in ("error", "warning"):
        raise InvalidFaults("reject_next_update.style", "must be 'error' or 'warning'")
    return RejectSpec(code=code, message=message, style=style)


class FaultState:
    """The live fault knobs of one session (mutated by the inspection API)."""

    __slots__ = ("_messages_left", "spec")

    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self._messages_left = spec.drop_after_messages

    def set(self, spec: FaultSpec) -> None:
        self.spec = spec
        self._messages_left = spec.drop_after_messages

    @property
    def latency_s(self) -> float:
        return self.spec.latency_ms / 1000.0

    def count_message(self) -> bool:
        """Count one handled control message; True when the connection must now drop."""
        if self._messages_left is None:
            return False
        self._messages_left -= 1
        if self._messages_left <= 0:
            self._messages_left = None
            self.spec = replace(self.spec, drop_after_messages=None)
            return True
        return False

    def take_reject(self) -> RejectSpec | None:
        """The pending reject-next-update fault, consumed by this call."""
        reject = self.spec.reject_next_update
        if reject is not None:
            self.spec = replace(self.spec, reject_next_update=None)
        return reject

    def failing(self, paths: list[str]) -> dict[str, str | int]:
        """Touched paths that a ``fail_fields`` entry covers -> their error code."""
        hits: dict[str, str | int] = {}
        for path in paths:
            for name, code in self.spec.fail_fields.items():
                if path == name or path.startswith(name + ".") or name.startswith(path + "."):
                    hits[path] = code
        return hits

    def to_dict(self) -> dict[str, Any]:
        doc = self.spec.to_dict()
        doc["drop_after_messages"] = self._messages_left
        return doc
