"""``controlplane policy rollout``: how the guard and a halt read in the human output."""

from __future__ import annotations

from controlplane.cli.output import table as _table
from controlplane.cli.rollout import guard_lines as _guard_lines
from controlplane.cli.rollout import wave_lines

GUARD = {"enabled": True, "max_failure_ratio": 0.01, "min_sessions": 50, "window_s": 300.0,
         "on_breach": "rollback"}  # fmt: skip
HALT = {"version": 2, "at": "2026-11-20T10:00:00Z", "failed": 2, "targeted": 65,
        "ratio": 0.030769, "on_breach": "rollback", "decided_by": "cp-1",
        "rollback_to": 1}  # fmt: skip


def test_guard_and_halt_lines() -> None:
    assert _guard_lines(GUARD, None) == [
        "guard: more than 1.00% failed of at least 50 sessions within 300s -> rollback"
    ]
    assert _guard_lines({**GUARD, "enabled": False}, None) == ["guard: off"]
    assert _guard_lines(GUARD, HALT)[1] == (
        "HALTED version 2 at 2026-11-20T10:00:00Z: 2 of 65 targeted sessions failed (3.08%), "
        "decided by cp-1; rolled back to the content of version 1"
    )
    retired = _guard_lines(None, {**HALT, "rollback_to": None})
    assert retired[0].endswith("; no earlier version: retired")
    assert _guard_lines(None, {**HALT, "on_breach": "halt", "rollback_to": None})[0].endswith(
        "decided by cp-1"
    )


def test_wave_lines() -> None:
    waves = {"waves": [1, 10, 50, 100], "wave_interval_s": 60.0, "index": 1, "percent": 10,
             "state": "advancing", "next_at": "2026-11-20T10:02:00Z",
             "previous_version": 4}  # fmt: skip
    line, table = wave_lines(waves, _table)
    assert line == (
        "waves: advancing at wave 2 of 4 (10%), every 60s, next at 2026-11-20T10:02:00Z; "
        "sessions outside the wave run version 4"
    )
    assert table.splitlines() == [
        "WAVE  PERCENT  STATE", "1     1        reached", "2     10       current", "3     50",
        "4     100",
    ]  # fmt: skip
    stalled = wave_lines(
        {**waves, "state": "stalled", "next_at": None, "previous_version": None}, _table
    )
    assert stalled[0] == "waves: stalled at wave 2 of 4 (10%), every 60s"
    assert wave_lines(None, _table) == []
