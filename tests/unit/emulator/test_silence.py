"""The emulator's Silence rule, sans-I/O: one message per second of audio with no open turn."""

from __future__ import annotations

from emulator.silence import SilenceReporter


def _run(frames: list[tuple[float, bool]]) -> list[dict[str, object]]:
    reporter, out, at = SilenceReporter(), [], 0.0
    for ms, turn_open in frames:
        at += ms
        due = reporter.after_frame(at, turn_open)
        if due is not None:
            out.append(due)
    return out


def test_consecutive_second_ranges_while_silent_none_during_a_turn() -> None:
    silent = [(20.0, False)] * 125  # 2.5 s
    speech = [(20.0, True)] * 50  # a turn open for 1 s
    after = [(20.0, False)] * 60  # 1.2 s after the turn ended
    assert _run(silent + speech + after) == [
        {"type": "Silence", "start_ms": 0, "end_ms": 1000},
        {"type": "Silence", "start_ms": 1000, "end_ms": 2000},
        # 2000-2500 unreported when speech began; counting resumes at the turn's end (3500)
        {"type": "Silence", "start_ms": 3520, "end_ms": 4520},
    ]


def test_no_message_before_a_full_interval() -> None:
    assert _run([(20.0, False)] * 49) == []
