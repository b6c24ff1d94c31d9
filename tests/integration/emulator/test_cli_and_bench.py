"""The CLI entry point and the idle-sessions benchmark (small N) run for real."""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.cli import FULL_COLLECTION_EVERY, register, settings_from_args, tune_collector
from emulator.errors import InvalidSetting

ROOT = Path(__file__).resolve().parents[3]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["emulator", *argv])


def test_flags_env_and_set_build_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMULATOR_RESUME_WINDOW_S", "12")
    monkeypatch.setenv("EMULATOR_PROMPT_MAX_CHARS", "1500")
    args = _parse(
        [
            "--listen",
            "127.0.0.1:9999",
            "--api-key",
            "a",
            "--api-key",
            "b",
            "--prompt-max-chars",
            "1750",
            "--set",
            "word_ms=250",
            "--faults",
            '{"latency_ms": 20}',
        ]
    )
    settings = settings_from_args(args)
    assert settings.listen == "127.0.0.1:9999"
    assert settings.api_keys == frozenset({"a", "b"})
    assert settings.prompt_max_chars == 1750  # the flag wins over the environment
    assert settings.resume_window_s == 12.0  # the environment wins over the default
    assert settings.word_ms == 250
    assert settings.faults.latency_ms == 20
    with pytest.raises(InvalidSetting):
        settings_from_args(_parse(["--set", "resume_mode=sometimes"]))


def test_idle_bench_small() -> None:
    script = ROOT / "loadtest" / "bench_emulator_idle.py"
    done = subprocess.run(
        [sys.executable, str(script), "--sessions", "30", "--hold", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run = json.loads(done.stdout.splitlines()[0].split(": ", 1)[1])
    assert run["began"] == 30 and run["errors"] == 0 and run["emulator_sessions_current"] == 30


def test_cli_collector_policy_freezes_start_up_and_makes_full_passes_rare() -> None:
    """The served emulator's collector policy (full collections dominated a burst of updates
    at 5,000 sessions); restored afterwards, it is process-wide."""
    before = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_threshold() == (before[0], before[1], FULL_COLLECTION_EVERY)
        assert FULL_COLLECTION_EVERY > before[2]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
