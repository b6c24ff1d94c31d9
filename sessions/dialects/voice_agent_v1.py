"""AssemblyAI Voice Agent API codec (PROTOCOLS.md Part 2), sans-I/O.

Canonical fields live at nested paths of the ``session`` object of ``session.update``
(``voice_agent_v1_table.CANONICAL_TO_WIRE``). The first ``session.update`` opens the session
(``parse_first_update`` / ``merge_first_update``); later ones are acknowledged with
``session.updated`` or refused with a non-fatal ``session.error``.

**Unset on the wire.** A delta's ``None`` becomes the value at the same path in the table's
``DEFAULT_CONFIG`` (``system_prompt`` ``""``, ``input.keyterms`` ``[]``,
``input.turn_detection`` ``min_silence`` 1000 / ``max_silence`` 3000 / ``vad_threshold`` 0.5 in
the current table); a path without a default there (``input.transcription_prompt``) gets its
clearing value ``""``. An empty string or list set on purpose reads back as unset.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any, Final

from policies.errors import Violation
from policies.fields import FIELDS, Config, Delta
from sessions.dialects.base import (
    Acked,
    ConnectInfo,
    Encoded,
    Ended,
    Fatal,
    Other,
    Ready,
    Rejected,
    TurnBoundary,
    UpstreamEvent,
    clear_value,
    ordered_fields,
    to_canonical,
    to_wire,
)
from sessions.dialects.voice_agent_v1_config import MISSING, get_path
from sessions.dialects.voice_agent_v1_table import (
    CANONICAL_TO_WIRE,
    DEFAULT_CONFIG,
    DIALECT,
    LIMITS,
    MODEL,
    NON_FATAL_ERROR_CODES,
)
from sessions.errors import DialectError

__all__ = ["UPDATE_TYPE", "VOICE_AGENT_V1", "VoiceAgentV1Dialect"]

UPDATE_TYPE: Final = "session.update"
_UNKNOWN_CODE: Final = "unknown"


class VoiceAgentV1Dialect:
    """Codec for ``voice-agent-v1`` sessions; stateless, share the ``VOICE_AGENT_V1`` instance."""

    name: str = DIALECT
    acknowledges: bool = True

    # --- capabilities ---------------------------------------------------------------------

    def skip_reason(self, name: str) -> str | None:
        """Why canonical field ``name`` cannot be sent; ``None`` when it can."""
        if name not in FIELDS:
            return f"{name}: not a canonical field"
        if name not in CANONICAL_TO_WIRE:
            return f"{name}: {DIALECT} has no {name} (streaming U3-Pro only)"
        return None

    def wire_path(self, name: str) -> str:
        """Canonical field ``name``'s dotted path in the ``session`` object (as ``param`` of a
        ``session.error`` names it: ``input.turn_detection.max_silence``)."""
        return ".".join(CANONICAL_TO_WIRE[name])

    def default_for(self, name: str) -> Any:
        """The wire value that stands for "unset" of canonical field ``name``."""
        value = get_path(DEFAULT_CONFIG, CANONICAL_TO_WIRE[name])
        if value is MISSING or value is None:
            return clear_value(name)
        return copy.deepcopy(value)

    # --- control plane -> upstream --------------------------------------------------------

    def encode(self, delta: Delta, model: str = MODEL) -> Encoded:
        """``session.update`` for ``delta``; ``model`` is accepted for the protocol, unused."""
        session: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        sent: list[str] = []
        for name in ordered_fields(delta):
            reason = self.skip_reason(name)
            if reason is not None:
                skipped[name] = reason
                continue
            value = delta[name]
            wire_value = self.default_for(name) if value is None else to_wire(value)
            _set_path(session, CANONICAL_TO_WIRE[name], wire_value)
            sent.append(name)
        message = {"type": UPDATE_TYPE, "session": session} if session else None
        return Encoded(message, MappingProxyType(skipped), tuple(sent))

    def check_limits(self, config: Config, model: str = MODEL) -> list[Violation]:
        problems: list[Violation] = []
        prompt = config.get("prompt")
        cap = LIMITS["transcription_prompt_max_chars"]
        if isinstance(prompt, str) and len(prompt) > cap:
            problems.append(
                Violation(
                    "prompt",
                    "max_chars",
                    f"is {len(prompt)} characters; {DIALECT} input.transcription_prompt takes"
                    f" at most {cap:g}",
                    cap,
                )
            )
        keyterms = config.get("keyterms")
        cap = LIMITS["keyterms_max_items"]
        if isinstance(keyterms, tuple) and len(keyterms) > cap:
            problems.append(
                Violation(
                    "keyterms",
                    "max_items",
                    f"has {len(keyterms)} items; {DIALECT} input.keyterms takes at most {cap:g}",
                    cap,
                )
            )
        return problems

    # --- session opening --------------------------------------------------------------------

    def parse_first_update(self, msg: Mapping[str, Any]) -> ConnectInfo:
        """Model (always the table's ``MODEL``) and client config from the first message.

        Raises ``DialectError`` when ``msg`` is not a ``session.update`` (a ``session.resume``
        is not a new session) or carries a wrongly-typed canonical value.
        """
        delta = self.parse_client_update(msg)
        if delta is None:
            raise DialectError(
                f"first message must be {UPDATE_TYPE}, got {msg.get('type')!r}",
                dialect=DIALECT,
                field="type",
            )
        config: Config = {name: value for name, value in delta.items() if value is not None}
        return ConnectInfo(model=MODEL, client_config=config)

    def merge_first_update(
        self, msg: Mapping[str, Any], config: Config
    ) -> tuple[dict[str, Any], Mapping[str, str]]:
        """The client's first ``session.update`` with ``config``'s fields written in.

        A first update naming a stored agent (``agent_id``) must carry nothing else, so every
        field is skipped with a reason instead. Canonical paths the config does not set are left
        as the client sent them.
        """
        if msg.get("type") != UPDATE_TYPE:
            raise DialectError(
                f"first message must be {UPDATE_TYPE}, got {msg.get('type')!r}",
                dialect=DIALECT,
                field="type",
            )
        out = copy.deepcopy(dict(msg))
        had_session = "session" in out
        session = out.setdefault("session", {})
        if not isinstance(session, dict):
            raise DialectError("session: must be an object", dialect=DIALECT, field="session")
        agent_id = session.get("agent_id")
        skipped: dict[str, str] = {}
        for name in ordered_fields(config):
            reason = self.skip_reason(name)
            if reason is None and agent_id is not None:
                reason = (
                    f"{name}: first {UPDATE_TYPE} names stored agent {agent_id!r}; "
                    "agent_id must be its only field"
                )
            if reason is not None:
                skipped[name] = reason
                continue
            _set_path(session, CANONICAL_TO_WIRE[name], to_wire(config[name]))
        if not session and not had_session:
            del out["session"]
        return out, MappingProxyType(skipped)

    # --- client messages ----------------------------------------------------------------------

    def parse_client_update(self, msg: Mapping[str, Any]) -> Delta | None:
        """``session.update`` → the canonical fields it sets; anything else → ``None``."""
        if msg.get("type") != UPDATE_TYPE:
            return None
        session = msg.get("session", {})
        if not isinstance(session, Mapping):
            raise DialectError("session: must be an object", dialect=DIALECT, field="session")
        delta: Delta = {}
        for name in ordered_fields(CANONICAL_TO_WIRE):
            path = CANONICAL_TO_WIRE[name]
            raw = get_path(session, path)
            if raw is not MISSING:
                delta[name] = to_canonical(DIALECT, name, _dotted(path), raw)
        return delta

    def strip_locked(
        self, msg: Mapping[str, Any], locked: Collection[str]
    ) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
        out = copy.deepcopy(dict(msg))
        session = out.get("session")
        if out.get("type") != UPDATE_TYPE or not isinstance(session, dict):
            return out, ()
        stripped: list[str] = []
        for name in ordered_fields(locked):
            path = CANONICAL_TO_WIRE.get(name)
            if path is not None and _pop_path(session, path):
                stripped.append(name)
        if stripped and not session:
            del out["session"]
        if stripped and set(out) <= {"type"}:
            return None, tuple(stripped)
        return out, tuple(stripped)

    # --- upstream messages ----------------------------------------------------------------

    def parse_upstream(self, msg: Mapping[str, Any]) -> UpstreamEvent:
        """Error codes are compared and reported lower-case (sources disagree on casing)."""
        kind = msg.get("type")
        if kind == "session.ready":
            return Ready(_text(msg.get("session_id")))
        if kind == "session.updated":
            config = msg.get("config")
            return Acked(dict(config) if isinstance(config, Mapping) else {})
        if kind in ("session.error", "error"):  # bare "error": the predecessor API
            code = _text(msg.get("code")).lower() or _UNKNOWN_CODE
            message = _text(msg.get("message"))
            if code in NON_FATAL_ERROR_CODES:
                param = msg.get("param")
                return Rejected(code, message, param if isinstance(param, str) else None)
            return Fatal(code, message)
        if kind == "reply.done":
            return TurnBoundary()
        if kind == "session.ended":
            return Ended()
        return Other(kind if isinstance(kind, str) else "")


VOICE_AGENT_V1: Final = VoiceAgentV1Dialect()


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(("session", *path))


def _set_path(root: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = root
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            where = _dotted(path[: path.index(key) + 1])
            raise DialectError(f"{where}: must be an object", dialect=DIALECT, field=where)
        node = child
    node[path[-1]] = value


def _pop_path(root: dict[str, Any], path: tuple[str, ...]) -> bool:
    """Remove ``path`` from ``root``, pruning objects that this removal left empty."""
    head, *rest = path
    if head not in root:
        return False
    if not rest:
        del root[head]
        return True
    child = root[head]
    if not isinstance(child, dict) or not _pop_path(child, tuple(rest)):
        return False
    if not child:
        del root[head]
    return True


def _text(raw: Any) -> str:
    return "" if raw is None else str(raw)
