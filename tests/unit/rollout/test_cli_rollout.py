"""``controlplane policy rollout``: how the guard and a halt read in the human output."""

from __future__ import annotations

from controlplane.cli_rollout import guard_lines as _guard_lines

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
