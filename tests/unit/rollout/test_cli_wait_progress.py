"""``policy apply --wait`` decisions over rollout answers (controlplane.cli.rollout)."""

from __future__ import annotations

import io
import json
from typing import Any

from controlplane.cli.http import ControlPlaneClient
from controlplane.cli.rollout import CONFIRM_S, EXIT_HALTED, progress, wait_for, watch


def row(version: int, **counts: int) -> dict[str, Any]:
    base = dict.fromkeys(("pending", "sent", "acknowledged", "unverified", "rejected",
                          "unchanged", "guard_failures"), 0)  # fmt: skip
    base.update(counts)
    base["targeted"] = sum(v for k, v in base.items() if k != "guard_failures")
    return {"version": version, "variant": None, **base}


def body(version: int, *rows: dict[str, Any], state: str = "active", halt: Any = None) -> Any:
    return {"id": "p", "version": version, "status": "active", "state": state,
            "versions": list(rows), "halt": halt}  # fmt: skip


def test_sessions_still_on_another_version_are_not_converged() -> None:
    p = progress(body(2, row(1, acknowledged=3), row(2, acknowledged=7)), 2)
    assert (p.outcome, p.elsewhere, p.final, p.targeted) == (None, 3, 7, 7)
    assert progress(body(2, row(2, acknowledged=10)), 2).outcome == "converged"


def test_in_flight_rejected_halted_and_superseded() -> None:
    assert progress(body(1, row(1, acknowledged=5, sent=1)), 1).outcome is None
    assert progress(body(1, row(1, acknowledged=5, pending=1)), 1).outcome is None
    assert progress(body(1, row(1, acknowledged=5, rejected=1)), 1).outcome == "rejected"
    halted = body(1, row(1, acknowledged=5, sent=1), state="halted", halt={"version": 1})
    assert progress(halted, 1).outcome == "halted"
    rolled = body(2, row(2, acknowledged=5), state="rolled_back", halt={"version": 1})
    assert progress(rolled, 1).outcome == "halted"
    assert progress(rolled).outcome == "converged"  # --watch follows the rollback version
    assert progress(body(3, row(3, acknowledged=5)), 2).outcome == "superseded"
    # --watch of a policy the guard retired (exit 4, docs/cli.md); it said superseded (6, a
    # --wait code) -- and one retired by hand ends when the retirement is delivered
    guard_retired = body(2, row(1, guard_failures=3), state="retired", halt={"version": 1})
    assert progress(guard_retired).outcome == "halted"
    assert progress(guard_retired, 1).outcome == "halted"
    retired = body(2, row(1, acknowledged=4), state="retired")
    assert progress(retired).outcome is None  # its sessions still count under version 1
    assert progress(body(2, row(2, acknowledged=4), state="retired")).outcome == "converged"
    assert progress(retired, 1).outcome == "superseded"  # --wait on version 1
    variants = body(1, {**row(1, acknowledged=2), "variant": "a"},
                    {**row(1, unverified=3), "variant": "b"})  # fmt: skip
    p = progress(variants, 1)
    assert (p.outcome, p.targeted, p.final) == ("converged", 5, 5)


class Answers(ControlPlaneClient):
    """A client whose rollout answers are given in advance (the last one repeats)."""

    def __init__(self, *answers: Any) -> None:
        super().__init__()
        self.answers = list(answers)

    def rollout_status(self, policy_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer


def test_a_converged_view_is_confirmed_and_a_timeout_ends_the_wait() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    # a new policy's sessions on another replica are not counted yet in the first answer
    client = Answers(body(1), body(1, row(1, acknowledged=4)))
    err = io.StringIO()
    outcome, p, _ = wait_for(client, "p", 1, timeout_s=30, interval_s=0.5, err=err,
                             clock=lambda: now[0], sleep=sleep)  # fmt: skip
    assert (outcome, p.acknowledged) == ("converged", 4)
    assert now[0] >= CONFIRM_S
    assert "policy p version 1: 4/4 sessions final" in err.getvalue()

    now[0] = 0.0
    client = Answers(body(1, row(1, sent=2)))
    outcome, p, _ = wait_for(client, "p", 1, timeout_s=3, interval_s=0.5, err=io.StringIO(),
                             clock=lambda: now[0], sleep=sleep)  # fmt: skip
    assert (outcome, p.sent) == ("timeout", 2)
    assert 3.0 <= now[0] < 3.6


def test_watch_json_prints_one_line_per_change_and_ends_on_convergence() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    answers = [body(2, row(1, acknowledged=2), row(2, sent=1)),
               body(2, row(2, sent=3)), body(2, row(2, acknowledged=3))]  # fmt: skip
    out = io.StringIO()
    code = watch(Answers(*answers), "p", interval_s=0.5, as_json=True, table=lambda h, r: "",
                 out=out, clock=lambda: now[0], sleep=sleep)  # fmt: skip
    assert code == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines == answers  # each change once, the repeated last answer not again
    halted = body(1, row(1, sent=1), state="halted", halt={"version": 1})
    assert watch(Answers(halted), "p", interval_s=0.5, as_json=True, table=lambda h, r: "",
                 out=io.StringIO(), clock=lambda: now[0], sleep=sleep) == EXIT_HALTED  # fmt: skip
