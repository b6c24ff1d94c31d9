"""Long client work (``sessions status``, ``experiments verify``: one log read per session)
says how far it got on stderr every 2 s; it was silent for as long as it took."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

from controlplane.cli.output import Progress, Ticker
from controlplane.cli.status import status_rows


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_quiet_at_first_then_a_line_every_interval() -> None:
    clock, err = Clock(), io.StringIO()
    progress = Progress("sessions status: session logs read", clock=clock, stream=err)
    progress(0, 5000)
    clock.now += 1.9
    progress(900, 5000)
    assert err.getvalue() == ""  # a short run prints nothing
    clock.now += 0.2
    progress(1000, 5000)
    clock.now += 1.0
    progress(1500, 5000)  # within the next 2 s: quiet
    clock.now += 1.0
    progress(2000, 5000)
    assert err.getvalue().splitlines() == [
        "controlplane: sessions status: session logs read: 1000 of 5000 [2.1s]",
        "controlplane: sessions status: session logs read: 2000 of 5000 [4.1s]",
    ]


class Sessions:
    """Three sessions' list and logs, as the REST client returns them."""

    def __init__(self) -> None:
        self.reads: list[str] = []

    def list_sessions(self, **_: Any) -> list[dict[str, Any]]:
        ref = {"id": "p", "version": 1, "variant": None}
        return [{"id": f"s{i}", "kind": "streaming-v3", "applied": [ref]} for i in range(3)]

    def session_log(self, session_id: str) -> list[dict[str, Any]]:
        self.reads.append(session_id)
        return [{"seq": 1, "at": 1.0, "status": "sent", "policies": [{"id": "p", "version": 1}]}]


def test_sessions_status_reports_each_session_before_reading_its_log() -> None:
    client, seen = Sessions(), []

    def progress(done: int, total: int) -> None:
        seen.append((done, total, list(client.reads)))

    rows = status_rows(client, policy=None, selector=(), kind=None, stale_after_s=5,  # type: ignore[arg-type]
                       progress=progress)  # fmt: skip
    assert [r["status"] for r in rows] == ["UNVERIFIED"] * 3
    assert seen == [(0, 3, []), (1, 3, ["s0"]), (2, 3, ["s0", "s1"])]


def test_a_long_step_ticks_and_a_short_one_is_quiet() -> None:
    # audit verify --data-dir over 100,000 entries was ~8 s without a word
    err = io.StringIO()
    with Ticker("audit verify: reading data/audit", every=0.05, stream=err):
        pass
    assert err.getvalue() == ""
    with Ticker("audit verify: reading data/audit", every=0.05, stream=err):
        time.sleep(0.3)
    lines = err.getvalue().splitlines()
    assert lines, "a 0.3 s step with a 0.05 s tick said nothing"
    assert all(line.startswith("controlplane: audit verify: reading data/audit... [")
               for line in lines)  # fmt: skip
    assert not [t for t in threading.enumerate() if t.name == "cli-ticker"]
