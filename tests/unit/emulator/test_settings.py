"""The emulator's settings are declared once, as ``EmulatorSettings`` fields: the conversion of
a string, the allowed words, the ``EMULATOR_*`` variable and the ``--flag`` come from each
field's type; docs/emulator.md describes exactly those fields."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from emulator.cli import register, settings_from_args
from emulator.errors import InvalidSetting
from emulator.settings import FROM_STRINGS, EmulatorSettings, choices, convert_setting

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


def test_the_docs_table_names_exactly_the_settings() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text[
        text.index("\n## Settings\n") : text.index("\n## ", text.index("## Settings") + 3)
    ]
    documented: set[str] = set()
    for row in re.findall(r"^\| (`[^|]*) \|", section, flags=re.MULTILINE):
        documented |= set(re.findall(r"`([a-z0-9_]+)`", row))
    assert documented == {f.name for f in dataclasses.fields(EmulatorSettings)}
