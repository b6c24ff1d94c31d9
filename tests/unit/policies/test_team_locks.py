"""Locks bound to their owner team (docs/security.md#locks-and-teams), in resolution and in the
publish-time clash check. Ranks stand for roles: 4 compliance, 5 admin; a policy's lock team
is set by the store (``Policy.with_rank(rank, team)``; None for admin)."""

from __future__ import annotations

from typing import Any

from policies.authority import lock_clashes
from policies.model import Policy, parse_policy
from policies.resolve import Resolver, resolve
from policies.selectors import Target

COMPLIANCE, ADMIN = 4, 5
EU = Target("s-1", "streaming-v3", "u3-rt-pro", {"region": "eu-west-1", "tier": "gold"})


def policy(pid: str, rank: int, team: str | None, **doc: Any) -> Policy:
    return parse_policy({"id": pid, "version": 1, **doc}).with_rank(rank, team)


LEGAL = policy("legal", COMPLIANCE, "legal", set={"prompt": "Recorded."}, lock=["prompt"])


def _both(policies: list[Policy], client: dict[str, Any] | None = None) -> dict[str, Any]:
    direct = resolve(client or {}, policies, EU)
    cached = Resolver(policies).resolve(client or {}, EU)
    assert direct == cached
    return dict(direct.config)


def test_another_teams_policy_of_the_locks_role_cannot_set_the_field_whatever_its_priority() -> (
    None
):
    risk = policy(
        "risk", COMPLIANCE, "risk", priority=1000, set={"prompt": "Risk.", "vad_threshold": 0.5}
    )
    config = _both([LEGAL, risk])
    assert (
        config["prompt"] == "Recorded." and config["vad_threshold"] == 0.5
    )  # its other fields apply
    mine = policy("legal-2", COMPLIANCE, "legal", priority=1000, set={"prompt": "Legal 2."})
    assert _both([LEGAL, mine])["prompt"] == "Legal 2."  # the lock's team competes by priority
    admin = policy("admin", ADMIN, None, set={"prompt": "Admin."})
    assert _both([LEGAL, risk, admin])["prompt"] == "Admin."


def test_defaults_follow_the_same_rule_and_an_admin_lock_binds_no_team() -> None:
    risk = policy("risk", COMPLIANCE, "risk", priority=1000, defaults={"keyterms": ["risk"]})
    locked = policy("legal", COMPLIANCE, "legal", lock=["keyterms"])
    assert "keyterms" not in _both([locked, risk])  # risk's default may not fill it
    with_default = policy("legal", COMPLIANCE, "legal", lock=["keyterms"],
                          defaults={"keyterms": ["legal"]})  # fmt: skip
    assert _both([with_default, risk])["keyterms"] == ("legal",)  # the lock team's does
    admin_lock = policy("admin", ADMIN, None, set={"prompt": "A."}, lock=["prompt"])
    other_admin = policy("admin-2", ADMIN, None, priority=9, set={"prompt": "B."})
    assert _both([admin_lock, other_admin])["prompt"] == "B."
    # without teams (rank only: policies resolved without a store) nothing changes
    plain = [policy("a", COMPLIANCE, None, set={"prompt": "a"}, lock=["prompt"]),
             policy("b", COMPLIANCE, None, priority=9, set={"prompt": "b"})]  # fmt: skip
    assert _both(plain)["prompt"] == "b"


def test_the_clash_check_names_another_teams_lock_and_a_second_lock_wherever_both_may_meet() -> (
    None
):
    risk = parse_policy({"id": "risk", "version": 1, "set": {"prompt": "Risk."}})
    (clash,) = lock_clashes(risk, COMPLIANCE, [LEGAL], "risk")
    assert (clash.policy, clash.team, clash.certain, clash.locks, clash.refused) == (
        "legal", "legal", True, False, True)  # fmt: skip
    assert lock_clashes(risk, COMPLIANCE, [LEGAL], "legal") == []  # its own team
    assert lock_clashes(risk, ADMIN, [LEGAL], None) == []  # a higher role
    relock = parse_policy({"id": "risk", "version": 1, "match": {"labels": {"tier": "gold"}},
                           "lock": ["prompt"]})  # fmt: skip
    (clash,) = lock_clashes(relock, COMPLIANCE, [LEGAL], "risk")
    assert (clash.certain, clash.locks, clash.refused) == (True, True, True)
    gold_only = policy("legal", COMPLIANCE, "legal", match={"labels": {"region": "eu"}},
                       lock=["prompt"])  # fmt: skip
    (clash,) = lock_clashes(relock, COMPLIANCE, [gold_only], "risk")
    assert (clash.certain, clash.locks, clash.refused) == (False, True, True)
