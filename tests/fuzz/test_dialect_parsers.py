"""Fuzz the sans-I/O dialect parsers with arbitrary mappings.

Laws, for both dialects:
- ``parse_client_update`` / ``parse_upstream`` / ``strip_locked`` (and the connect parsers)
  raise nothing but ``sessions.errors.DialectError``; ``parse_upstream`` never raises.
- A delta ``parse_client_update`` returns holds canonical, UTF-8-encodable values (the version
  log records it).
- Locks hold: after ``strip_locked(msg, locked)`` the message updates none of ``locked``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from policies.fields import FIELDS, check_value
from sessions.dialects.base import Dialect, UpstreamEvent
from sessions.dialects.streaming_v3 import STREAMING_V3
from sessions.dialects.streaming_v3_table import CANONICAL_TO_WIRE as SV3_WIRE
from sessions.dialects.streaming_v3_table import PARAM_ALIASES
from sessions.dialects.voice_agent_v1 import VOICE_AGENT_V1
from sessions.errors import DialectError
from tests.fuzz.strategies import HOSTILE_TEXT, HUGE_INTS, json_values, text

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DIALECTS: dict[str, Dialect] = {"streaming-v3": STREAMING_V3, "voice-agent-v1": VOICE_AGENT_V1}

_SV3_KEYS = [wire for wire, _ in SV3_WIRE.values()] + list(PARAM_ALIASES)
_VALUES = json_values() | HUGE_INTS | HOSTILE_TEXT | st.lists(text | HUGE_INTS, max_size=3)


@st.composite
def _streaming_messages(draw: st.DrawFn) -> dict[str, Any]:
    msg: dict[str, Any] = draw(
        st.dictionaries(st.sampled_from(_SV3_KEYS) | text, _VALUES, max_size=5)
    )
    msg["type"] = draw(st.sampled_from(["UpdateConfiguration", "ForceEndpoint"]) | _VALUES)
    return msg


_VA_LEAVES = {
    "input": st.dictionaries(
        st.sampled_from(["transcription_prompt", "keyterms", "turn_detection", "format"]) | text,
        _VALUES
        | st.dictionaries(
            st.sampled_from(["min_silence", "max_silence", "vad_threshold"]) | text,
            _VALUES,
            max_size=3,
        ),
        max_size=3,
    ),
    "system_prompt": _VALUES,
}


@st.composite
def _agent_messages(draw: st.DrawFn) -> dict[str, Any]:
    session: Any = {
        key: draw(strategy) for key, strategy in _VA_LEAVES.items() if draw(st.booleans())
    }
    if draw(st.integers(0, 9)) == 0:
        session = draw(_VALUES)
    msg: dict[str, Any] = {
        "type": draw(st.sampled_from(["session.update", "input.audio"]) | _VALUES)
    }
    if draw(st.booleans()):
        msg["session"] = session
    return msg


def _only_dialect_errors(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except DialectError as exc:
        assert str(exc)
        return None


def _check_delta(delta: Any) -> None:
    if delta is None:
        return
    assert isinstance(delta, dict)
    for name, value in delta.items():
        assert name in FIELDS
        if value is None:
            continue
        _, problems = check_value(name, value)
        assert not [p for p in problems if p.rule in ("type", "encoding")], problems
        plain = list(value) if isinstance(value, tuple) else value
        json.dumps(plain, ensure_ascii=False, allow_nan=False).encode("utf-8")


def _check_locks(dialect: Dialect, msg: dict[str, Any], locked: list[str]) -> None:
    stripped, names = _only_dialect_errors(lambda: dialect.strip_locked(msg, locked)) or (
        msg,
        (),
    )
    assert set(names) <= set(locked)
    if stripped is None:
        return
    # the stripped message, re-serialised as the gateway forwards it, updates no locked field
    forwarded = json.loads(json.dumps(stripped))
    try:
        delta = dialect.parse_client_update(forwarded)
    except DialectError:
        delta = None
    assert not set(delta or {}) & set(locked), (msg, locked, stripped)


_LOCKS = st.lists(st.sampled_from(sorted(FIELDS)), unique=True)


@FUZZ
@example(msg={"type": "UpdateConfiguration", "prompt": "\ud800"}, locked=[])
@example(msg={"type": "UpdateConfiguration", "vad_threshold": 10**400}, locked=[])
@given(msg=_streaming_messages() | st.dictionaries(text, _VALUES, max_size=4), locked=_LOCKS)
def test_streaming_client_messages(msg: dict[str, Any], locked: list[str]) -> None:
    _check_delta(_only_dialect_errors(lambda: STREAMING_V3.parse_client_update(msg)))
    _check_locks(STREAMING_V3, msg, locked)


@FUZZ
@example(msg={"type": "session.update", "session": {"system_prompt": "\udfff"}}, locked=[])
@given(msg=_agent_messages() | st.dictionaries(text, _VALUES, max_size=4), locked=_LOCKS)
def test_agent_client_messages(msg: dict[str, Any], locked: list[str]) -> None:
    _check_delta(_only_dialect_errors(lambda: VOICE_AGENT_V1.parse_client_update(msg)))
    _check_locks(VOICE_AGENT_V1, msg, locked)
    info = _only_dialect_errors(lambda: VOICE_AGENT_V1.parse_first_update(msg))
    if info is not None:
        _check_delta(dict(info.client_config))
        _only_dialect_errors(lambda: VOICE_AGENT_V1.merge_first_update(msg, info.client_config))


@FUZZ
@given(
    kind=st.sampled_from(sorted(DIALECTS)),
    msg=st.dictionaries(
        st.sampled_from(
            [
                "type",
                "id",
                "session_id",
                "code",
                "message",
                "error",
                "error_code",
                "end_of_turn",
                "config",
                "param",
                "warning",
                "warning_code",
            ]
        )
        | text,
        _VALUES,
        max_size=5,
    ).flatmap(
        lambda m: (
            st.sampled_from(
                [
                    "Begin",
                    "Turn",
                    "Warning",
                    "Error",
                    "Termination",
                    "session.ready",
                    "session.updated",
                    "session.error",
                    "error",
                    "reply.done",
                    "session.ended",
                ]
            ).map(lambda t: {**m, "type": t})
            | st.just(m)
        )
    ),
)
def test_upstream_messages_never_raise(kind: str, msg: dict[str, Any]) -> None:
    event = DIALECTS[kind].parse_upstream(msg)
    assert isinstance(event, UpstreamEvent)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from([*_SV3_KEYS, "speech_model", "sample_rate"]) | text,
        text | _VALUES.map(json.dumps),
        max_size=5,
    )
)
def test_streaming_connect_query(query: dict[str, str]) -> None:
    info = _only_dialect_errors(lambda: STREAMING_V3.parse_connect_query(query))
    if info is not None:
        _check_delta(dict(info.client_config))
        STREAMING_V3.merge_connect_query(query, info.client_config, info.model)
