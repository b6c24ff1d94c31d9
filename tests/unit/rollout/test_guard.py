"""The rollout guard's decision (``controlplane.rollouts.guard``), without sockets: the breach rule,
the failure window on a fake clock, and one check against fake ports."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from controlplane.config import Settings
from controlplane.rollouts.guard import FailureWindow, GuardSpec, RolloutGuard
from policies.model import parse_policy
from policies.provenance import PolicyRef
from sessions.clock import FakeClock

DEFAULTS = Settings()


def spec(**guard: Any) -> GuardSpec:
    doc: dict[str, Any] = {"id": "p", "version": 1}
    if guard:
        doc["guard"] = guard
    return GuardSpec.of(parse_policy(doc), DEFAULTS)


def test_omitted_fields_take_the_deployment_defaults() -> None:
    assert spec() == GuardSpec(True, 0.01, 50, 300.0, "halt")
    assert spec(on_breach="rollback", min_sessions=10) == GuardSpec(True, 0.01, 10, 300.0,
                                                                    "rollback")  # fmt: skip
    off = Settings(guard_enabled=False, guard_max_failure_ratio=0.2)
    assert GuardSpec.of(parse_policy({"id": "p"}), off).enabled is False
    opted_in = parse_policy({"id": "p", "guard": {"enabled": True}})
    assert GuardSpec.of(opted_in, off) == GuardSpec(True, 0.2, 50, 300.0, "halt")


@pytest.mark.parametrize(
    ("targeted", "failed", "breached"),
    [
        (50, 0, False),
        (50, 1, True),  # 2 % of 50
        (100, 1, False),  # exactly 1 %: not more than
        (100, 2, True),
        (49, 49, False),  # fewer than min_sessions: never
        (0, 3, False),
        (10_000, 100, False),
        (10_000, 101, True),
    ],
)
def test_more_than_the_ratio_of_at_least_min_sessions(
    targeted: int, failed: int, breached: bool
) -> None:
    assert spec().breached(targeted, failed) is breached


def test_a_disabled_guard_never_breaches_and_zero_means_any_failure() -> None:
    assert not spec(enabled=False).breached(1000, 1000)
    assert spec(max_failure_ratio=0.0, min_sessions=1).breached(1, 1)
    assert not spec(max_failure_ratio=0.0, min_sessions=1).breached(1, 0)


def test_failure_window_prunes_by_time_and_reports_rows() -> None:
    window = FailureWindow(max_kept=3)
    a, b = PolicyRef("p", 2), PolicyRef("p", 2, "treatment")
    for at in (1.0, 2.0, 3.0, 4.0):  # bounded: the oldest falls out
        window.add(a, at)
    window.add(b, 5.0)
    window.add(PolicyRef("q", 1), 5.0)
    assert window.versions() == [("p", 2), ("q", 1)]
    assert window.rows("p") == {"p": [{"version": 2, "variant": None, "guard_failures": 3},
                                      {"version": 2, "variant": "treatment",
                                       "guard_failures": 1}]}  # fmt: skip
    assert window.prune("p", 2, since=3.5) == 2  # 4.0 and 5.0 remain
    assert window.prune("p", 2, since=6.0) == 0
    assert window.versions() == [("q", 1)]
    window.add(PolicyRef("q", 2), 7.0)
    window.forget("q", keep_version=2)
    assert window.versions() == [("q", 2)]
    window.forget("q")
    assert not window


def test_a_tagged_failure_counts_once_and_is_retracted_while_the_window_holds_it() -> None:
    window = FailureWindow(max_kept=3)
    a = PolicyRef("p", 2)
    window.add(a, 1.0, ("s1", 2))
    window.add(a, 1.5, ("s1", 2))  # the same push again: one failure per push
    window.add(a, 2.0, ("s2", 2))
    assert window.rows("p")["p"][0]["guard_failures"] == 2
    assert window.retract(a, ("s1", 2)) and not window.retract(a, ("s1", 2))
    assert not window.retract(a, ("s9", 2)) and not window.retract(PolicyRef("p", 3), ("s2", 2))
    assert window.rows("p")["p"][0]["guard_failures"] == 1
    assert window.prune("p", 2, since=3.0) == 0  # pruned: nothing left to retract
    assert not window.retract(a, ("s2", 2)) and not window
    for at, tag in ((1.0, ("s1", 3)), (2.0, ("s2", 3)), (3.0, ("s3", 3)), (4.0, ("s4", 3))):
        window.add(a, at, tag)  # bounded: the oldest (s1) falls out, its tag with it
    assert not window.retract(a, ("s1", 3)) and window.retract(a, ("s4", 3))


def test_a_session_counts_once_however_many_of_its_pushes_fail() -> None:
    window = FailureWindow(max_kept=10)
    a = PolicyRef("p", 2)
    window.add(a, 1.0, ("s1", 2))
    window.add(a, 2.0, ("s1", 3))  # another push of the same session and policy version
    window.add(a, 3.0, ("s1", 2))  # a re-registered id's first push again
    assert window.rows("p")["p"][0]["guard_failures"] == 1
    window.add(a, 3.5, None)  # an untagged failure counts on its own
    window.add(a, 4.0, ("s2", 2))
    assert window.rows("p")["p"][0]["guard_failures"] == 3
    # retracting one of s1's pushes leaves its other failure counting
    assert window.retract(a, ("s1", 2))
    assert window.rows("p")["p"][0]["guard_failures"] == 3
    assert window.retract(a, ("s1", 3))
    assert window.rows("p")["p"][0]["guard_failures"] == 2
    assert window.prune("p", 2, since=3.8) == 1  # s2 remains
    window.forget("p")
    assert not window and window.count(("p", 2, None)) == 0


@dataclass
class Ports:
    """Fake GuardPorts: one guarded policy ``p`` at ``version``, fixed cluster totals."""

    version: int = 2
    spec: GuardSpec = field(default_factory=spec)
    targeted: int = 60
    peer_failures: int = 0
    window: FailureWindow | None = None
    halts: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)

    def guarded(self, policy_id: str) -> tuple[int, GuardSpec] | None:
        return (self.version, self.spec) if policy_id == "p" else None

    async def totals(self, policy_id: str, version: int) -> tuple[int, int]:
        assert self.window is not None
        local = sum(r["guard_failures"] for r in self.window.rows(policy_id).get(policy_id, []))
        return self.targeted, local + self.peer_failures

    async def halt(self, policy_id: str, version: int, detail: dict[str, Any]) -> None:
        self.halts.append((policy_id, version, detail))


def make(ports: Ports) -> tuple[RolloutGuard, FakeClock]:
    clock = FakeClock()
    guard = RolloutGuard(ports, clock=clock, check_interval_s=1.0)
    ports.window = guard.window
    return guard, clock


async def test_only_the_guarded_version_counts_and_a_breach_halts_once() -> None:
    ports = Ports()
    guard, _ = make(ports)
    guard.failed([PolicyRef("p", 1), PolicyRef("other", 7)])  # superseded / unguarded
    assert not guard.window
    guard.failed([PolicyRef("p", 2)])
    assert await guard.check() == [("p", 2)]  # 1 of 60 = 1.7 %
    assert ports.halts == [("p", 2, {
        "reason": "failure_ratio", "failed": 1, "targeted": 60, "ratio": 0.016667,
        "max_failure_ratio": 0.01, "min_sessions": 50, "window_s": 300.0, "on_breach": "halt",
    })]  # fmt: skip
    assert not guard.window  # decided: forgotten
    assert await guard.check() == []


async def test_failures_age_out_of_the_window_and_other_replicas_count() -> None:
    ports = Ports(spec=spec(window_s=10.0), targeted=300)
    guard, clock = make(ports)
    for _ in range(3):
        guard.failed([PolicyRef("p", 2)])
    assert await guard.check() == []  # 3 of 300 = 1 %: not more than
    clock.advance(11.0)
    guard.failed([PolicyRef("p", 2)])
    ports.peer_failures = 3  # the rest of the cluster: 1 + 3 = 4 of 300 > 1 %
    assert await guard.check() == [("p", 2)]
    assert ports.halts[0][2]["failed"] == 4


async def test_a_version_superseded_before_the_check_is_not_halted() -> None:
    ports = Ports(targeted=50)
    guard, _ = make(ports)
    guard.failed([PolicyRef("p", 2)])
    ports.version = 3
    assert await guard.check() == []
    assert not guard.window and ports.halts == []


async def test_a_failed_halt_keeps_the_failures_for_the_next_check() -> None:
    class Flaky(Ports):
        async def halt(self, policy_id: str, version: int, detail: dict[str, Any]) -> None:
            raise RuntimeError("NATS unreachable")

    ports = Flaky()
    guard, _ = make(ports)
    guard.failed([PolicyRef("p", 2)])
    with pytest.raises(RuntimeError):
        await guard.check()
    assert guard.window.versions() == [("p", 2)]


async def test_the_guard_task_starts_and_stops() -> None:
    ports = Ports()
    guard, _ = make(ports)
    await guard.start()
    guard.failed([PolicyRef("p", 2)])
    for _ in range(100):
        if ports.halts:
            break
        await asyncio.sleep(0.01)
    await guard.close()
    assert [h[:2] for h in ports.halts] == [("p", 2)]
