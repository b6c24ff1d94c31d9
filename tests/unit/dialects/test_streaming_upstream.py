"""StreamingUpstream: the upstream's configuration message by message, locks on effect."""

from __future__ import annotations

from sessions.dialects.streaming_v3_upstream import StreamingUpstream, canonical_view

U3 = {"speech_model": "universal-3-5-pro", "sample_rate": "16000"}
LOCKED = {"min_turn_silence": "400", "max_turn_silence": "2500", "vad_threshold": "0.6"}
WHO = {
    "min_turn_silence_ms": "policy p v1",
    "max_turn_silence_ms": "policy p v1",
    "vad_threshold": "policy p v1",
}


def test_a_preset_that_would_change_locked_fields_is_stripped_with_a_warning() -> None:
    up = StreamingUpstream({**U3, **LOCKED})
    effect = up.client_update({"type": "UpdateConfiguration", "mode": "min_latency"}, WHO)
    assert effect.forward is None
    assert effect.delta == {}
    assert set(effect.stripped) == {"mode"}
    assert effect.locked == ("min_turn_silence_ms", "max_turn_silence_ms", "vad_threshold")
    assert effect.refused == {
        "min_turn_silence_ms": 128, "max_turn_silence_ms": 640, "vad_threshold": 0.2,
    }  # fmt: skip
    assert effect.warning is not None and effect.warning["type"] == "Warning"
    assert "mode would change" in effect.warning["warning"]
    assert up.view() == {"min_turn_silence_ms": 400, "max_turn_silence_ms": 2500,
                         "vad_threshold": 0.6}  # fmt: skip


def test_a_preset_that_leaves_locked_fields_alone_goes_through() -> None:
    up = StreamingUpstream(U3)
    effect = up.client_update(
        {"type": "UpdateConfiguration", "mode": "max_accuracy"}, {"vad_threshold": "policy p v1"}
    )
    assert effect.forward == {"type": "UpdateConfiguration", "mode": "max_accuracy"}
    assert effect.stripped == {}
    assert effect.delta == {"min_turn_silence_ms": 512, "max_turn_silence_ms": 2560}
    assert up.config is not None and up.config["interruption_delay"] == 500


def test_named_locked_fields_are_stripped_and_the_rest_is_the_effective_delta() -> None:
    up = StreamingUpstream(U3)
    effect = up.client_update(
        {"type": "UpdateConfiguration", "prompt": "mine", "min_turn_silence": 20,
         "keyterms_prompt": ["ok", "x" * 51]},
        {"prompt": "policy p v1"},
    )  # fmt: skip
    assert effect.forward == {"type": "UpdateConfiguration", "min_turn_silence": 20,
                              "keyterms_prompt": ["ok", "x" * 51]}  # fmt: skip
    assert effect.refused == {"prompt": "mine"}
    # what the upstream runs: clamped to 50 ms, the over-long keyterm dropped
    assert effect.delta == {"keyterms": ("ok",), "min_turn_silence_ms": 50}


def test_u3_only_fields_on_another_model_change_nothing() -> None:
    up = StreamingUpstream({"speech_model": "universal-streaming-english", "sample_rate": "16000"})
    effect = up.client_update(
        {"type": "UpdateConfiguration", "prompt": "p", "mode": "min_latency"}, {}
    )
    assert effect.forward is not None
    assert effect.delta == {}


def test_our_pushes_move_the_model_and_a_rejected_update_changes_nothing() -> None:
    up = StreamingUpstream(U3)
    up.pushed({"type": "UpdateConfiguration", "max_turn_silence": 3000})
    assert up.view()["max_turn_silence_ms"] == 3000
    effect = up.client_update({"type": "UpdateConfiguration", "vad_threshold": 7}, {})
    assert effect.rejected and effect.delta == {}
    assert up.view()["vad_threshold"] == 0.2


def test_canonical_view_reads_clearing_values_as_unset() -> None:
    assert canonical_view({"prompt": "", "keyterms_prompt": [], "max_turn_silence": 9}) == {
        "max_turn_silence_ms": 9
    }


def test_a_connect_mode_is_part_of_the_clients_config() -> None:
    from sessions.dialects.streaming_v3 import STREAMING_V3

    info = STREAMING_V3.parse_connect_query(
        {**U3, "mode": "min_latency", "min_turn_silence": "20", "vad_threshold": "0.3"}
    )
    assert info.client_config == {
        "min_turn_silence_ms": 50, "max_turn_silence_ms": 640, "vad_threshold": 0.3,
    }  # fmt: skip
    assert STREAMING_V3.parse_connect_query(U3).client_config == {}


def test_a_number_beyond_any_float_is_refused_like_the_upstream_refuses_it() -> None:
    up = StreamingUpstream(U3)
    for value in (10**400, -(10**400), float("inf"), float("nan")):
        effect = up.client_update({"type": "UpdateConfiguration", "vad_threshold": value}, {})
        assert effect.rejected and effect.delta == {}
    assert up.view()["vad_threshold"] == 0.2


def test_an_empty_update_is_forwarded_untouched() -> None:
    effect = StreamingUpstream(U3).client_update({"type": "UpdateConfiguration"}, {})
    assert effect.forward == {"type": "UpdateConfiguration"} and effect.warning is None


def test_only_a_warning_naming_a_field_the_model_strips_is_predicted() -> None:
    """The upstream strips a U3-only field on another model with a Warning naming it: that
    one is predicted. Any other Warning (a dropped update, a field refused) is not, even
    while a strip warning is still due (distributed differential seed 4)."""
    up = StreamingUpstream({"speech_model": "universal-streaming-english", "sample_rate": "16000"})
    up.client_update({"type": "UpdateConfiguration", "prompt": "u3 only", "vad_threshold": 0.6}, {})
    assert up.warnings_due == ["prompt"]
    assert not up.upstream_warning("UpdateConfiguration rejected")
    assert not up.upstream_warning("keyterms_prompt was rejected and ignored (3010)")
    assert up.upstream_warning("prompt is not supported by model universal-streaming-english")
    assert up.warnings_due == [] and not up.upstream_warning("prompt ignored again")
