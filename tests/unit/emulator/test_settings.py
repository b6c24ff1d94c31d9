"""The emulator's settings are declared once, as ``EmulatorSettings`` fields: the conversion of
a string, the allowed words, the ``EMULATOR_*`` variable and the ``--flag`` come from each
field's type; ``--help`` and docs/emulator.md's table from its help (``knob``)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from emulator.cli import register, settings_from_args
from emulator.errors import InvalidSetting
from emulator.settings import FROM_STRINGS, EmulatorSettings, choices, convert_setting, rewrite

DOC = Path(__file__).resolve().parents[3] / "docs" / "emulator.md"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["emulator", *argv])


def test_every_field_but_agents_and_faults_is_read_from_strings() -> None:
    names = [f.name for f in dataclasses.fields(EmulatorSettings)]
    assert list(FROM_STRINGS) == [n for n in names if n not in ("agents", "faults")]
    assert choices("resume_mode") == ("works", "always_not_found")
    assert choices("word_ms") == ()
    assert convert_setting("max_concurrent_sessions", "unlimited") is None
    assert convert_setting("api_keys", "a, b") == frozenset({"a", "b"})
    assert convert_setting("api_keys", "*") is None
    assert convert_setting("tool_arguments_as_string", "on") is True
    with pytest.raises(InvalidSetting, match="EMULATOR_WORD_MS='many'"):
        convert_setting("word_ms", "many")
    with pytest.raises(InvalidSetting, match="not a setting read from a string"):
        convert_setting("faults", "{}")


def test_each_setting_has_its_flag_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_WORD_MS", "250")
    monkeypatch.setenv("EMULATOR_ENFORCE_CHUNK_DURATION", "false")
    assert settings_from_args(_parse()).word_ms == 250
    settings = settings_from_args(_parse("--word-ms", "300", "--enforce-chunk-duration"))
    assert (settings.word_ms, settings.enforce_chunk_duration) == (300, True)
    assert settings_from_args(_parse("--voices", "ivy,anna")).voices == {"ivy", "anna"}
    with pytest.raises(SystemExit):
        _parse("--immutable-policy", "sometimes")  # the Literal's words are the choices
    with pytest.raises(SystemExit):
        _parse("--word-ms", "many")


def test_the_docs_table_is_generated_from_the_fields() -> None:
    for f in dataclasses.fields(EmulatorSettings):
        assert f.metadata["help"], f"{f.name} has no help"
    text = DOC.read_text(encoding="utf-8")
    assert rewrite(text) == text, "run: python -m emulator.settings docs/emulator.md"
    assert "| `turns_max_entries` | `200` | per-session turn log kept |" in text


def test_flag_help_is_the_fields_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("--help")
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "--word-ms WORD_MS user speech per transcribed word (default `400`; env EMULATOR_WORD_MS)"
        in text
    )
