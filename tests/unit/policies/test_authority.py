"""Locks are a ceiling (issue #18): resolution by owner rank, and the publish-time clash check.

Ranks stand for roles (controlplane.roles): 3 experimenter, 4 compliance, 5 admin.
"""

from __future__ import annotations

from typing import Any

import pytest

from policies.authority import lock_clashes, overlap
from policies.model import Match, Policy, parse_policy
from policies.provenance import PolicyRef
from policies.resolve import Resolver, resolve
from policies.selectors import Target

EXPERIMENTER, COMPLIANCE, ADMIN = 3, 4, 5
EU = Target("s-1", "streaming-v3", "u3-rt-pro", {"region": "eu-west-1", "tenant": "acme"})
CLIENT = {"prompt": "client"}


def policy(pid: str, rank: int, version: int = 1, **doc: Any) -> Policy:
    return parse_policy({"id": pid, "version": version, **doc}).with_rank(rank)


DISCLOSURE = policy(
    "eu-disclosure", COMPLIANCE, 4, priority=100, match={"labels": {"region": "eu-west-1"}},
    set={"prompt": "This call is recorded."}, lock=["prompt"],
)  # fmt: skip


def experiment(pid: str = "upsell", priority: int = 1_000_000, **doc: Any) -> Policy:
    return policy(pid, EXPERIMENTER, priority=priority, experiment={
        "key": pid, "variants": [{"name": "pitch", "weight": 100, "set": {"prompt": "Buy!"}}],
    }, **doc)  # fmt: skip


def test_rank_is_not_part_of_the_document_and_survives_a_new_version() -> None:
    assert "rank" not in DISCLOSURE.document()
    assert DISCLOSURE.with_version(5).rank == COMPLIANCE
    assert DISCLOSURE.with_version(5).plan.rank == COMPLIANCE
    assert parse_policy(DISCLOSURE.document()).rank == 0  # a document cannot claim a rank


def test_a_lower_role_at_any_priority_does_not_override_a_locked_field() -> None:
    upsell = experiment()
    for resolved in (
        resolve(CLIENT, [DISCLOSURE, upsell], EU),
        Resolver([upsell, DISCLOSURE]).resolve(CLIENT, EU),
    ):
        assert resolved.config["prompt"] == "This call is recorded."
        assert resolved.provenance["prompt"] == PolicyRef("eu-disclosure", 4)
        assert resolved.locks == {"prompt": PolicyRef("eu-disclosure", 4)}
        # the experiment still applies (its other fields would win), it just cannot set prompt
        assert PolicyRef("upsell", 1, "pitch") in resolved.applied


def test_without_ranks_priority_alone_would_have_let_the_experiment_win() -> None:
    """The guarded line: the same two policies at equal rank resolve by priority."""
    same_rank = experiment().with_rank(COMPLIANCE)
    assert resolve(CLIENT, [DISCLOSURE, same_rank], EU).config["prompt"] == "Buy!"


def test_a_lock_of_a_lower_role_does_not_hold_against_a_higher_role() -> None:
    admin = policy("admin-prompt", ADMIN, priority=200, set={"prompt": "admin"})
    resolved = resolve(CLIENT, [DISCLOSURE, admin], EU)
    assert resolved.config["prompt"] == "admin"
    assert resolved.locks == {"prompt": PolicyRef("eu-disclosure", 4)}  # clients still locked


def test_between_two_locks_the_higher_role_wins_then_priority() -> None:
    admin = policy("admin-lock", ADMIN, priority=-5, set={"prompt": "admin"}, lock=["prompt"])
    resolved = resolve(CLIENT, [DISCLOSURE, admin], EU)
    assert resolved.locks["prompt"] == PolicyRef("admin-lock", 1)
    assert resolved.config["prompt"] == "admin"  # the compliance lock cannot take it back
    other = policy("other-lock", COMPLIANCE, priority=500, set={"prompt": "other"},
                   lock=["prompt"])  # fmt: skip
    resolved = resolve(CLIENT, [DISCLOSURE, other], EU)
    assert resolved.locks["prompt"] == PolicyRef("other-lock", 1)
    assert resolved.config["prompt"] == "other"


def test_a_lock_without_a_value_keeps_lower_roles_out_and_the_client_value_stays() -> None:
    lock_only = policy("lock-only", COMPLIANCE, lock=["prompt"])
    resolved = resolve(CLIENT, [lock_only, experiment()], EU)
    assert resolved.config["prompt"] == "client"
    assert "prompt" not in resolved.provenance


def test_a_lock_only_holds_where_its_policy_applies() -> None:
    us = Target("s-2", "streaming-v3", "u3-rt-pro", {"region": "us-east-1"})
    assert resolve(CLIENT, [DISCLOSURE, experiment()], us).config["prompt"] == "Buy!"


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        ({}, {"labels": {"region": ["eu-west-1"]}}, "certain"),
        ({"labels": {"region": ["eu-west-1"]}}, {"labels": {"region": ["eu-west-1", "x"]}},
         "certain"),
        ({"labels": {"region": ["us-east-1"]}}, {"labels": {"region": ["eu-west-1"]}}, "none"),
        ({"kind": ["voice-agent-v1"]}, {"kind": ["streaming-v3"]}, "none"),
        ({"model": ["a"]}, {"model": ["b"]}, "none"),
        ({"labels": {"tenant": ["acme"]}}, {"labels": {"region": ["eu-west-1"]}}, "labels"),
        ({"labels": {"region": ["eu-west-1"]}}, {"labels_absent": ["region"]}, "none"),
        ({"labels": {"region": ["eu-west-1"]}}, {"labels_not": {"region": ["eu-west-1"]}}, "none"),
        ({"kind": ["streaming-v3"]}, {"labels": {"region": ["eu-west-1"]}}, "labels"),
        ({"kind": ["streaming-v3"], "labels": {"region": ["eu-west-1"]}},
         {"labels": {"region": ["eu-west-1"]}}, "certain"),
    ],
)  # fmt: skip
def test_overlap_of_two_selectors(a: dict[str, Any], b: dict[str, Any], want: str) -> None:
    assert overlap(Match.model_validate(a), Match.model_validate(b)) == want
    assert overlap(Match.model_validate(b), Match.model_validate(a)) == want


def test_clashes_name_the_field_the_locking_policy_and_its_version() -> None:
    (clash,) = lock_clashes(experiment(), EXPERIMENTER, [DISCLOSURE])
    assert (clash.field, clash.policy, clash.version, clash.rank) == (
        "prompt",
        "eu-disclosure",
        4,
        COMPLIANCE,
    )
    assert clash.certain


def test_no_clash_for_an_equal_or_higher_role_the_same_id_or_other_fields() -> None:
    assert lock_clashes(experiment(), COMPLIANCE, [DISCLOSURE]) == []
    assert lock_clashes(experiment("eu-disclosure"), EXPERIMENTER, [DISCLOSURE]) == []
    keyterms = policy("kt", EXPERIMENTER, set={"keyterms": ["x"]})
    assert lock_clashes(keyterms, EXPERIMENTER, [DISCLOSURE]) == []
    us = experiment(match={"labels": {"region": "us-east-1"}})
    assert lock_clashes(us, EXPERIMENTER, [DISCLOSURE]) == []


def test_a_clash_that_depends_on_live_labels_is_not_certain() -> None:
    acme = experiment(match={"labels": {"tenant": "acme"}})
    (clash,) = lock_clashes(acme, EXPERIMENTER, [DISCLOSURE])
    assert not clash.certain
    # and on a session carrying both labels the lock wins at resolve time
    assert resolve(CLIENT, [DISCLOSURE, acme], EU).config["prompt"] == "This call is recorded."


def test_a_default_under_a_higher_roles_lock_clashes_like_a_set() -> None:
    app = policy("prompt-default", 2, defaults={"prompt": "Be brief."})
    (clash,) = lock_clashes(app, 2, [DISCLOSURE])
    assert (clash.field, clash.policy, clash.certain) == ("prompt", "eu-disclosure", True)
    # at resolve time it never fills a locked field, even for a client without a prompt
    keep = policy("keep-prompt", COMPLIANCE, lock=["prompt"])
    assert "prompt" not in resolve({}, [keep, app], EU).config
    assert resolve({}, [app], EU).config == {"prompt": "Be brief."}
