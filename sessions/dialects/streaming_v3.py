"""AssemblyAI Universal Streaming v3 codec (PROTOCOLS.md Part 1), sans-I/O.

Canonical fields travel as connect query parameters (``parse_connect_query`` /
``merge_connect_query``) and as ``UpdateConfiguration`` frames (``encode`` /
``parse_client_update`` / ``strip_locked``). The upstream never acknowledges an update.
Wire names, model capabilities and limits come from ``streaming_v3_table`` only.

**Unset on the wire.** ``UpdateConfiguration`` has no "unset": a field can only be given a value.
A delta's ``None`` therefore becomes

- ``prompt`` → ``""`` and ``agent_context`` → ``""`` (the documented clearing value;
  ``prompt: ""`` restores the built-in prompt);
- ``keyterms`` → ``[]`` (``keyterms_prompt`` replaces the set; ``[]`` clears it);
- ``min_turn_silence_ms`` / ``max_turn_silence_ms`` / ``vad_threshold`` → the model's default:
  on a U3-Pro model the values of the ``DEFAULT_MODE`` preset (``balanced``: 128 ms / 1280 ms /
  0.2 in the current table), because that is the preset a session runs when the client names no
  ``mode`` and the control plane does not track a client's ``mode``; on every other model
  ``US_DEFAULTS`` (400 ms / 1280 ms / 0.4), the Universal-Streaming defaults. A client that
  chose another ``mode`` gets the ``balanced`` value back for an unset field.

An empty string or empty list set on purpose is indistinguishable from an unset on the wire.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any, Final

from policies.errors import Violation
from policies.fields import FIELDS, Config, Delta, Value
from sessions.dialects.base import (
    ConnectInfo,
    Encoded,
    Ended,
    Fatal,
    Other,
    Ready,
    TurnBoundary,
    UpstreamEvent,
    Warned,
    clear_value,
    ordered_fields,
    to_canonical,
    to_wire,
)
from sessions.dialects.streaming_v3_table import (
    CANONICAL_TO_WIRE,
    DEFAULT_MODE,
    DEFAULT_SPEECH_MODEL,
    DIALECT,
    LIMITS,
    MODE_PRESETS,
    PARAM_ALIASES,
    U3_PRO_MODELS,
    US_DEFAULTS,
)
from sessions.dialects.streaming_v3_upstream import StreamingUpstream
from sessions.errors import DialectError

__all__ = ["STREAMING_V3", "UPDATE_TYPE", "StreamingV3Dialect"]

UPDATE_TYPE: Final = "UpdateConfiguration"
_UNKNOWN_CODE: Final = "unknown"  # an Error / Warning without a code (e.g. the legacy shape)


class StreamingV3Dialect:
    """Codec for ``streaming-v3`` sessions; stateless, share the ``STREAMING_V3`` instance."""

    name: str = DIALECT
    acknowledges: bool = False

    # --- capabilities ---------------------------------------------------------------------

    def skip_reason(self, name: str, model: str) -> str | None:
        """Why canonical field ``name`` cannot be sent to ``model``; ``None`` when it can."""
        if name not in FIELDS:
            return f"{name}: not a canonical field"
        entry = CANONICAL_TO_WIRE.get(name)
        if entry is None:
            return f"{name}: {DIALECT} has no {name} (agent instructions are Voice Agent only)"
        wire, models = entry
        if models is not None and model not in models:
            family = (
                "U3-Pro family only"
                if models == U3_PRO_MODELS
                else "only " + ", ".join(sorted(models))
            )
            return f"{name}: model {model} does not accept {wire} ({family})"
        return None

    def default_for(self, name: str, model: str) -> str | int | float | list[str]:
        """The wire value that stands for "unset" of canonical field ``name`` on ``model``."""
        wire, _ = CANONICAL_TO_WIRE[name]
        defaults = MODE_PRESETS[DEFAULT_MODE] if model in U3_PRO_MODELS else US_DEFAULTS
        if wire in defaults:
            return defaults[wire]
        return clear_value(name)

    # --- control plane -> upstream --------------------------------------------------------

    def encode(self, delta: Delta, model: str) -> Encoded:
        body: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        sent: list[str] = []
        for name in ordered_fields(delta):
            reason = self.skip_reason(name, model)
            if reason is not None:
                skipped[name] = reason
                continue
            wire, _ = CANONICAL_TO_WIRE[name]
            value = delta[name]
            body[wire] = self.default_for(name, model) if value is None else to_wire(value)
            sent.append(name)
        message = {"type": UPDATE_TYPE, **body} if body else None
        return Encoded(message, MappingProxyType(skipped), tuple(sent))

    def check_limits(self, config: Config, model: str) -> list[Violation]:
        problems: list[Violation] = []
        for name in ordered_fields(config):
            if self.skip_reason(name, model) is not None:
                continue
            wire, _ = CANONICAL_TO_WIRE[name]
            problems.extend(_wire_limits(name, wire, config[name]))
        return problems

    # --- connect ----------------------------------------------------------------------------

    def parse_connect_query(self, query: Mapping[str, str]) -> ConnectInfo:
        """Model and client config from the client's connect query.

        ``speech_model`` defaults to the table's ``DEFAULT_SPEECH_MODEL``; the deprecated
        ``min_end_of_turn_silence_when_confident`` is read when ``min_turn_silence`` is absent;
        clearing values (``""``, ``[]``) mean unset. Values are what the upstream then runs
        (its own config model): a ``mode`` preset adds the turn parameters it changes.
        Fields the model cannot take are kept (the client asked for them); encoding skips
        them. Raises ``DialectError`` naming the
        parameter on invalid JSON or a value of the wrong type.
        """
        model = query.get("speech_model") or DEFAULT_SPEECH_MODEL
        config: Config = {}
        for name in ordered_fields(CANONICAL_TO_WIRE):
            wire, _ = CANONICAL_TO_WIRE[name]
            source = _present(query, wire)
            if source is None:
                continue
            raw = _from_query(name, source, query[source])
            value = to_canonical(DIALECT, name, source, raw)
            if value is not None:
                config[name] = value
        return ConnectInfo(model=model, client_config=_as_upstream_runs(query, config))

    def merge_connect_query(
        self, query: Mapping[str, str], config: Config, model: str
    ) -> tuple[dict[str, str], Mapping[str, str]]:
        """The upstream connect query: ``query`` with ``config``'s fields written in wire form.

        Other parameters are untouched, except that writing ``min_turn_silence`` drops its
        deprecated alias. Canonical parameters the config does not set are left as the client
        sent them. Returns the query and the skipped fields with reasons.
        """
        out = dict(query)
        skipped: dict[str, str] = {}
        for name in ordered_fields(config):
            reason = self.skip_reason(name, model)
            if reason is not None:
                skipped[name] = reason
                continue
            wire, _ = CANONICAL_TO_WIRE[name]
            for alias in _aliases(wire):
                out.pop(alias, None)
            out[wire] = _to_query(config[name])
        return out, MappingProxyType(skipped)

    # --- client messages ----------------------------------------------------------------------

    def parse_client_update(self, msg: Mapping[str, Any]) -> Delta | None:
        """``UpdateConfiguration`` → the canonical fields it sets; anything else → ``None``.

        Non-canonical keys (``mode``, ``interruption_delay``, …) are ignored here.
        """
        if msg.get("type") != UPDATE_TYPE:
            return None
        delta: Delta = {}
        for name in ordered_fields(CANONICAL_TO_WIRE):
            wire, _ = CANONICAL_TO_WIRE[name]
            source = _present(msg, wire)
            if source is not None:
                delta[name] = to_canonical(DIALECT, name, source, msg[source])
        return delta

    def strip_locked(
        self, msg: Mapping[str, Any], locked: Collection[str]
    ) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
        out = copy.deepcopy(dict(msg))
        if msg.get("type") != UPDATE_TYPE:
            return out, ()
        stripped: list[str] = []
        for name in ordered_fields(locked):
            entry = CANONICAL_TO_WIRE.get(name)
            if entry is None:
                continue
            found = False
            for wire in (entry[0], *_aliases(entry[0])):
                if wire in out:
                    del out[wire]
                    found = True
            if found:
                stripped.append(name)
        if stripped and set(out) <= {"type"}:
            return None, tuple(stripped)
        return out, tuple(stripped)

    # --- upstream messages ----------------------------------------------------------------

    def parse_upstream(self, msg: Mapping[str, Any]) -> UpstreamEvent:
        kind = msg.get("type")
        if kind is None and "error" in msg:  # legacy shape: {"error": "..."}
            return Fatal(_UNKNOWN_CODE, _text(msg.get("error")))
        if kind == "Begin":
            return Ready(_text(msg.get("id")))
        if kind == "Turn":
            return TurnBoundary() if msg.get("end_of_turn") is True else Other("Turn")
        if kind == "Warning":
            return Warned(_code(msg.get("warning_code")), _text(msg.get("warning")))
        if kind == "Error":
            return Fatal(_code(msg.get("error_code")), _text(msg.get("error")))
        if kind == "Termination":
            return Ended()
        return Other(kind if isinstance(kind, str) else "")


STREAMING_V3: Final = StreamingV3Dialect()


def _as_upstream_runs(query: Mapping[str, str], config: Config) -> Config:
    """The client's connect config as the upstream runs it (``streaming_v3_upstream``): a
    ``mode`` preset's turn parameters where they differ from the default preset's, the
    ``min_turn_silence`` clamp, over-long keyterms dropped. ``config`` itself when the
    upstream would refuse the query (the session never starts)."""
    runs = StreamingUpstream(query)
    if runs.config is None:
        return config
    default = _default_view(*(query.get(k) for k in ("speech_model", "sample_rate", "encoding")))
    view = runs.view()
    return {
        name: view[name]
        for name in ordered_fields(view)
        if name in config or view[name] != default.get(name)
    }


@functools.lru_cache(maxsize=64)
def _default_view(model: str | None, rate: str | None, encoding: str | None) -> Config:
    """What a session of that model runs when the client names no turn parameter (cached:
    a handful of distinct keys; callers never change the returned config)."""
    plain = {"speech_model": model, "sample_rate": rate, "encoding": encoding}
    return StreamingUpstream({k: v for k, v in plain.items() if v is not None}).view()


def _aliases(wire: str) -> tuple[str, ...]:
    return tuple(alias for alias, target in PARAM_ALIASES.items() if target == wire)


def _present(source: Mapping[str, Any], wire: str) -> str | None:
    """The key under which ``wire`` (or, failing that, a deprecated alias) is present."""
    for key in (wire, *_aliases(wire)):
        if key in source:
            return key
    return None


def _from_query(name: str, param: str, raw: str) -> Any:
    """A query-string value as the JSON-ish value the canonical rules check."""
    kind = FIELDS[name].kind
    if kind == "str":
        return raw
    if kind == "str_list":
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise DialectError(
                f"{param}: not a JSON list of strings ({exc})", dialect=DIALECT, field=param
            ) from exc
        if not isinstance(value, list):
            raise DialectError(
                f"{param}: not a JSON list of strings: {raw!r}", dialect=DIALECT, field=param
            )
        return value
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        raise DialectError(
            f"{param}: not a number: {raw!r}", dialect=DIALECT, field=param
        ) from None


def _to_query(value: Value) -> str:
    """A canonical value as a query-string value (lists JSON-encoded, like the SDKs)."""
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, str):
        return value
    return repr(value) if isinstance(value, float) else str(value)


def _wire_limits(name: str, wire: str, value: Value) -> list[Violation]:
    problems: list[Violation] = []
    if wire in ("prompt", "agent_context") and isinstance(value, str):
        cap = LIMITS[f"{wire}_max_chars"]
        if len(value) > cap:
            problems.append(
                Violation(
                    name,
                    "max_chars",
                    f"is {len(value)} characters; {DIALECT} {wire} takes at most {cap:g}",
                    cap,
                )
            )
    elif wire == "keyterms_prompt" and isinstance(value, tuple):
        cap = LIMITS["keyterms_max_items"]
        if len(value) > cap:
            problems.append(
                Violation(
                    name,
                    "max_items",
                    f"has {len(value)} items; {DIALECT} {wire} takes at most {cap:g}",
                    cap,
                )
            )
        item_cap = LIMITS["keyterm_max_chars"]
        for i, term in enumerate(value):
            if len(term) > item_cap:
                problems.append(
                    Violation(
                        f"{name}[{i}]",
                        "max_item_chars",
                        f"is {len(term)} characters; {DIALECT} silently drops keyterms longer"
                        f" than {item_cap:g}",
                        item_cap,
                    )
                )
    elif wire == "min_turn_silence" and isinstance(value, int | float):
        low, high = LIMITS["min_turn_silence_min_ms"], LIMITS["min_turn_silence_max_ms"]
        if not low <= value <= high:
            problems.append(
                Violation(
                    name,
                    "min" if value < low else "max",
                    f"is {value}; {DIALECT} clamps {wire} to {low:g}–{high:g} ms",
                    low if value < low else high,
                )
            )
    return problems


def _code(raw: Any) -> str:
    return _UNKNOWN_CODE if raw is None or raw == "" else str(raw)


def _text(raw: Any) -> str:
    return "" if raw is None else str(raw)
