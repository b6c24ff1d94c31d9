"""Round-trip laws: what a dialect encodes, its client-side parser reads back."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.fields import Delta, check_value
from sessions.dialects.base import Dialect
from sessions.dialects.streaming_v3 import STREAMING_V3
from sessions.dialects.streaming_v3_table import U3_PRO_MODELS
from sessions.dialects.voice_agent_v1 import VOICE_AGENT_V1
from sessions.dialects.voice_agent_v1_table import MODEL

# Non-empty values: "" and () are the wire's clearing values, so they read back as unset.
_text = st.text(min_size=1, max_size=120)
_keyterm = st.text(min_size=1, max_size=50).filter(str.strip)
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "prompt": _text,
    "system_prompt": _text,
    "agent_context": _text,
    "keyterms": st.lists(_keyterm, min_size=1, max_size=8).map(tuple),
    "min_turn_silence_ms": st.integers(50, 10_000),
    "max_turn_silence_ms": st.integers(50, 10_000),
    "vad_threshold": st.floats(0.0, 1.0, allow_nan=False),
}
deltas = st.fixed_dictionaries(
    {}, optional={name: st.none() | strategy for name, strategy in _VALUES.items()}
)
u3_models = st.sampled_from(sorted(U3_PRO_MODELS))

# The first text draw on a fresh checkout builds Hypothesis' unicode tables (~1 s, cached in
# .hypothesis/ afterwards); that one-time cost must not fail the too_slow health check.
cold_start_ok = settings(suppress_health_check=[HealthCheck.too_slow])


def _wire_round_trip(dialect: Dialect, delta: Delta, model: str) -> tuple[Delta, tuple[str, ...]]:
    for name, value in delta.items():
        if value is not None:
            assert check_value(name, value)[1] == []  # the generated delta is canonically valid
    encoded = dialect.encode(delta, model)
    if encoded.message is None:
        return {}, encoded.sent_fields
    over_the_wire = json.loads(json.dumps(encoded.message))
    parsed = dialect.parse_client_update(over_the_wire)
    assert parsed is not None
    return parsed, encoded.sent_fields


def _check_law(parsed: Delta, sent: tuple[str, ...], delta: Delta, skipped: set[str]) -> None:
    assert set(sent) == set(delta) - skipped
    assert list(parsed) == list(sent)  # parser reads back exactly the encoded fields, in order
    for name in sent:
        if delta[name] is not None:
            assert parsed[name] == delta[name]
        elif name in ("prompt", "system_prompt", "agent_context", "keyterms"):
            assert parsed[name] is None  # cleared, reads back as unset
        else:
            assert parsed[name] is not None  # numbers: unset is sent as the model default


@cold_start_ok
@given(delta=deltas, model=u3_models)
def test_streaming_v3_round_trip_on_u3_pro(delta: Delta, model: str) -> None:
    parsed, sent = _wire_round_trip(STREAMING_V3, delta, model)
    _check_law(parsed, sent, delta, skipped={"system_prompt"})


@cold_start_ok
@given(delta=deltas)
def test_voice_agent_v1_round_trip(delta: Delta) -> None:
    parsed, sent = _wire_round_trip(VOICE_AGENT_V1, delta, MODEL)
    _check_law(parsed, sent, delta, skipped={"agent_context"})


@cold_start_ok
@given(delta=deltas, model=u3_models, locked=st.sets(st.sampled_from(sorted(_VALUES))))
def test_strip_locked_removes_exactly_the_locked_fields(
    delta: Delta, model: str, locked: set[str]
) -> None:
    for dialect, kind_model in ((STREAMING_V3, model), (VOICE_AGENT_V1, MODEL)):
        encoded = dialect.encode(delta, kind_model)
        if encoded.message is None:
            continue
        out, stripped = dialect.strip_locked(encoded.message, locked)
        assert stripped == tuple(n for n in encoded.sent_fields if n in locked)
        remaining = [n for n in encoded.sent_fields if n not in locked]
        if not remaining:
            assert out is None
        else:
            assert out is not None
            parsed = dialect.parse_client_update(out)
            assert parsed is not None
            assert list(parsed) == remaining


@cold_start_ok
@given(
    config=st.fixed_dictionaries({}, optional=_VALUES),
    model=u3_models,
)
def test_streaming_v3_connect_query_round_trip(config: dict[str, Any], model: str) -> None:
    query = {"speech_model": model, "sample_rate": "16000"}
    merged, skipped = STREAMING_V3.merge_connect_query(query, config, model)
    info = STREAMING_V3.parse_connect_query(merged)
    assert set(skipped) == ({"system_prompt"} & set(config))
    assert info.client_config == {k: v for k, v in config.items() if k != "system_prompt"}
    assert info.model == model
