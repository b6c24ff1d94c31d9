"""Resolution: precedence and tie-break, locks, provenance with variants, rollout, retire."""

from __future__ import annotations

from typing import Any

import pytest

from policies.bucketing import bucket, in_rollout, pick_variant
from policies.delta import diff
from policies.fields import Config
from policies.model import Policy, parse_policy
from policies.provenance import PolicyRef
from policies.resolve import Effective, applies, precedence_key, resolve
from policies.selectors import Target

SESSION = Target("sess-1", "streaming-v3", "u3-rt-pro", {"region": "eu-west-1", "caller": "c-9"})
CLIENT: Config = {"prompt": "client prompt", "keyterms": ("client",), "vad_threshold": 0.4}


def policy(pid: str, version: int = 1, **doc: Any) -> Policy:
    return parse_policy({"id": pid, "version": version, **doc})


def test_no_policies_leaves_client_config() -> None:
    effective = resolve(CLIENT, [], SESSION)
    assert effective == Effective(dict(CLIENT), {}, {}, ())
    assert effective.config is not CLIENT


def test_policy_overlays_client_config_with_provenance() -> None:
    eu = policy("eu", 3, match={"labels": {"region": "eu-west-1"}}, set={"prompt": "EU"})
    effective = resolve(CLIENT, [eu], SESSION)
    assert effective.config == {**CLIENT, "prompt": "EU"}
    assert effective.provenance == {"prompt": PolicyRef("eu", 3)}
    assert effective.applied == (PolicyRef("eu", 3),)


def test_non_matching_policy_does_not_apply() -> None:
    us = policy("us", match={"labels": {"region": "us-east-1"}}, set={"prompt": "US"})
    assert resolve(CLIENT, [us], SESSION).config == CLIENT
    assert applies(us, SESSION) is None


def test_higher_priority_owns_the_field_whatever_the_order() -> None:
    low = policy("aaa-low", priority=5, set={"prompt": "low", "keyterms": ["low"]})
    high = policy("zzz-high", priority=10, set={"prompt": "high"})
    for order in ([low, high], [high, low]):
        effective = resolve(CLIENT, order, SESSION)
        assert effective.config["prompt"] == "high"
        assert effective.config["keyterms"] == ("low",)  # only the low one sets it
        assert effective.provenance == {
            "prompt": PolicyRef("zzz-high", 1),
            "keyterms": PolicyRef("aaa-low", 1),
        }
        assert effective.applied == (PolicyRef("zzz-high", 1), PolicyRef("aaa-low", 1))


@pytest.mark.parametrize(
    ("first", "second"),
    [("alpha", "beta"), ("a-b", "a0"), ("a1", "a10"), ("a10", "a2")],
)
def test_equal_priority_ties_go_to_the_smaller_id_in_byte_order(first: str, second: str) -> None:
    p1 = policy(first, priority=7, set={"prompt": first})
    p2 = policy(second, priority=7, set={"prompt": second})
    for order in ([p1, p2], [p2, p1]):
        effective = resolve({}, order, SESSION)
        assert effective.config["prompt"] == first
        assert effective.provenance["prompt"].id == first
    assert sorted([p2, p1], key=precedence_key) == [p1, p2]


def test_negative_priority_loses_to_default() -> None:
    base = policy("zzz", set={"prompt": "default priority"})
    floor = policy("aaa", priority=-1, set={"prompt": "fallback"})
    assert resolve({}, [floor, base], SESSION).config["prompt"] == "default priority"


def test_locks_go_to_the_highest_precedence_locking_policy() -> None:
    strict = policy("compliance", priority=100, lock=["prompt"])  # locks without setting
    lax = policy("team", priority=1, set={"prompt": "team"}, lock=["prompt", "keyterms"])
    effective = resolve(CLIENT, [lax, strict], SESSION)
    assert effective.config["prompt"] == "team"
    assert effective.provenance["prompt"] == PolicyRef("team", 1)
    assert effective.locks == {
        "prompt": PolicyRef("compliance", 1),
        "keyterms": PolicyRef("team", 1),
    }


def test_locks_only_from_applying_policies() -> None:
    elsewhere = policy("us", match={"labels": {"region": "us-east-1"}}, lock=["prompt"])
    assert resolve(CLIENT, [elsewhere], SESSION).locks == {}


EXPERIMENT = {
    "key": "upsell-q4",
    "variants": [
        {"name": "control", "weight": 50, "set": {}},
        {"name": "pitch", "weight": 50, "set": {"system_prompt": "pitch", "prompt": "variant"}},
    ],
}


def _variant_of(session_id: str, key: str = "upsell-q4", salt: str = "upsell-q4") -> str:
    names = ("control", "pitch")
    return names[pick_variant([50_000, 50_000], bucket(key, salt, session_id))]


def _session_in(variant: str) -> Target:
    for i in range(1000):
        if _variant_of(f"s-{i}") == variant:
            return Target(f"s-{i}", "voice-agent-v1", "m", {})
    raise AssertionError("unreachable")


def test_variant_set_overrides_policy_set_and_provenance_names_the_variant() -> None:
    exp = policy("upsell", 2, set={"prompt": "base", "keyterms": ["x"]}, experiment=EXPERIMENT)
    pitched = resolve({}, [exp], _session_in("pitch"))
    ref = PolicyRef("upsell", 2, "pitch")
    assert pitched.config == {"prompt": "variant", "keyterms": ("x",), "system_prompt": "pitch"}
    assert pitched.provenance == {"prompt": ref, "keyterms": ref, "system_prompt": ref}
    assert pitched.applied == (ref,)
    control = resolve({}, [exp], _session_in("control"))
    assert control.config == {"prompt": "base", "keyterms": ("x",)}
    assert control.applied == (PolicyRef("upsell", 2, "control"),)


def test_variant_assignment_uses_experiment_key_and_default_salt() -> None:
    exp = policy("upsell", experiment=EXPERIMENT)
    salted = policy("upsell", experiment={**EXPERIMENT, "salt": "s2"})
    moved = 0
    for i in range(300):
        target = Target(f"s-{i}", "streaming-v3", "m", {})
        ref = applies(exp, target)
        assert ref is not None and ref.variant == _variant_of(target.id)
        salted_ref = applies(salted, target)
        assert salted_ref is not None and salted_ref.variant == _variant_of(target.id, salt="s2")
        moved += ref.variant != salted_ref.variant
    assert moved > 50  # a new salt reshuffles


def test_bucket_by_label_and_missing_label_is_not_targeted() -> None:
    exp = policy("upsell", experiment={**EXPERIMENT, "bucket_by": "caller"})
    ref = applies(exp, SESSION)
    assert ref is not None and ref.variant == _variant_of("c-9")
    # same caller on another session: same variant (sticky per caller)
    other = Target("sess-2", "voice-agent-v1", "m", {"caller": "c-9"})
    assert applies(exp, other) == ref
    for labels in ({}, {"caller": ""}):
        anonymous = Target("sess-3", "streaming-v3", "m", labels)
        assert applies(exp, anonymous) is None
        assert resolve(CLIENT, [exp], anonymous).applied == ()


def test_rollout_gate_uses_policy_id_and_rollout_salt() -> None:
    quarter = policy("eu", rollout={"percent": 25}, set={"prompt": "EU"})
    salted = policy("eu", rollout={"percent": 25, "salt": "again"}, set={"prompt": "EU"})
    inside = 0
    for i in range(400):
        target = Target(f"s-{i}", "streaming-v3", "m", {})
        expected = in_rollout("eu", "rollout", target.id, 25)
        assert (applies(quarter, target) is not None) is expected
        assert (applies(salted, target) is not None) is in_rollout("eu", "again", target.id, 25)
        inside += expected
    assert 60 < inside < 140


def test_rollout_bounds_and_missing_bucket_label() -> None:
    none = policy("p", rollout={"percent": 0})
    everyone = policy("q", rollout={"percent": 100})
    by_caller = policy("r", rollout={"percent": 100, "bucket_by": "caller"})
    bare = Target("x", "streaming-v3", "m", {})
    assert applies(none, SESSION) is None and applies(everyone, SESSION) is not None
    assert applies(by_caller, SESSION) is not None and applies(by_caller, bare) is None


def test_raising_the_rollout_keeps_every_session_in() -> None:
    targets = [Target(f"s-{i}", "streaming-v3", "m", {}) for i in range(500)]
    steps = [policy("ramp", rollout={"percent": p}) for p in (1, 5, 12.5, 50, 99.999, 100)]
    previous: set[str] = set()
    for step in steps:
        current = {t.id for t in targets if applies(step, t) is not None}
        assert previous <= current
        previous = current
    assert len(previous) == 500


def test_retire_hands_fields_back_to_client_or_unset() -> None:
    eu = policy("eu", set={"prompt": "EU", "agent_context": "ctx"}, lock=["prompt"])
    other = policy("other", priority=-5, set={"keyterms": ["other"]})
    before = resolve(CLIENT, [eu, other], SESSION)
    after = resolve(CLIENT, [other], SESSION)  # "eu" retired
    assert diff(before.config, after.config) == {"prompt": "client prompt", "agent_context": None}
    assert after.provenance == {"keyterms": PolicyRef("other", 1)}
    assert after.locks == {}


def test_unversioned_policy_cannot_resolve() -> None:
    draft = parse_policy({"id": "draft", "set": {"prompt": "x"}})
    with pytest.raises(ValueError, match="no version"):
        resolve({}, [draft], SESSION)
    with pytest.raises(ValueError, match="no version"):
        applies(draft, SESSION)


def test_one_version_per_policy_id() -> None:
    with pytest.raises(ValueError, match="given twice"):
        resolve({}, [policy("eu", 1), policy("eu", 2)], SESSION)


def test_with_version_changes_the_reference() -> None:
    eu = policy("eu", 1, set={"prompt": "EU"}).with_version(9)
    assert resolve({}, [eu], SESSION).provenance == {"prompt": PolicyRef("eu", 9)}
