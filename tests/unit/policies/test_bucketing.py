"""LaunchDarkly-compatible bucketing: golden vectors, split accuracy, ramp stability laws."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.bucketing import (
    WEIGHT_SCALE,
    bucket,
    in_rollout,
    percent_to_units,
    pick_variant,
    units_in_rollout,
)

LAWS = settings(max_examples=300, deadline=None)

# Golden vectors published in LaunchDarkly's SDK test suites:
#   launchdarkly/python-server-sdk, testing/impl/test_evaluator_bucketing.py
#     (test_bucket_by_user_key, test_bucket_by_user_key_with_seed, test_bucket_by_int_attr)
#   launchdarkly/go-server-sdk-evaluation, evaluator_bucketing_test.go
#     (TestBucketUserByKey, TestBucketUserByIntAttr, TestVariationIndexForUser)
# Same flag key "hashKey", salt "saltyA"; the int attribute 33333 is bucketed as "33333".
GOLDEN = [
    ("userKeyA", None, 0.42157587),
    ("userKeyB", None, 0.6708485),
    ("userKeyC", None, 0.10343106),
    ("userKeyA", 61, 0.09801207),
    ("userKeyB", 61, 0.14483777),
    ("userKeyC", 61, 0.9242641),
    ("33333", None, 0.54771423),
]


@pytest.mark.parametrize(("value", "seed", "expected"), GOLDEN)
def test_launchdarkly_golden_vectors(value: str, seed: int | None, expected: float) -> None:
    """Bit-compatibility with LaunchDarkly's SDKs.

    Vectors from launchdarkly/python-server-sdk ``testing/impl/test_evaluator_bucketing.py`` and
    launchdarkly/go-server-sdk-evaluation ``evaluator_bucketing_test.go``.
    """
    assert bucket("hashKey", "saltyA", value, seed=seed) == pytest.approx(expected, rel=1e-7)


def test_seed_replaces_key_and_salt() -> None:
    """As in python-server-sdk ``test_seed_independent_of_salt_and_hashKey``."""
    assert bucket("hashKey", "saltyA", "userKeyA", seed=61) == bucket(
        "hashKey2", "saltyB", "userKeyA", seed=61
    )
    assert bucket("hashKey", "saltyA", "userKeyA", seed=61) != bucket(
        "hashKey", "saltyA", "userKeyA", seed=62
    )


@pytest.mark.parametrize(("value", "index"), [("userKeyA", 0), ("userKeyB", 1), ("userKeyC", 0)])
def test_launchdarkly_variation_index_vectors(value: str, index: int) -> None:
    """go-server-sdk-evaluation ``TestVariationIndexForUser``: a 60000/40000 rollout."""
    assert pick_variant([60_000, 40_000], bucket("hashKey", "saltyA", value)) == index


def test_bucket_boundary_is_exclusive() -> None:
    """python-server-sdk ``test_variation_index_is_returned_for_bucket``: a 1-unit window."""
    point = bucket("key", "salt", "userkey")
    units = math.trunc(point * WEIGHT_SCALE)
    assert 0 < units < WEIGHT_SCALE
    assert pick_variant([units, 1, WEIGHT_SCALE - units - 1], point) == 1


def test_last_variant_when_bucket_is_past_every_boundary() -> None:
    """python-server-sdk ``test_last_bucket_is_used_if_bucket_value_equals_total_weight``."""
    point = bucket("key", "salt", "userkey")
    units = math.trunc(point * WEIGHT_SCALE)
    assert pick_variant([units], point) == 0
    assert pick_variant([10, 20, 30], 0.99) == 2


@pytest.mark.parametrize(
    ("point", "index"),
    [(0.0, 0), (0.2499999, 0), (0.25, 1), (0.5, 1), (0.75, 2), (0.9999999, 2)],
)
def test_pick_variant_boundaries_belong_to_the_next_variant(point: float, index: int) -> None:
    """LaunchDarkly compares ``bucket < cumulative / 100000``: a boundary opens the next arm."""
    assert pick_variant([25_000, 50_000, 25_000], point) == index


def test_pick_variant_needs_weights() -> None:
    with pytest.raises(ValueError, match="at least one weight"):
        pick_variant([], 0.5)


@pytest.mark.parametrize(
    ("percent", "units"),
    [
        (0, 0),
        (25, 25_000),
        (Decimal("12.345"), 12_345),
        (0.001, 1),
        ("99.999", 99_999),
        (100, 100_000),
    ],
)
def test_percent_to_units(percent: Decimal | float | int | str, units: int) -> None:
    assert percent_to_units(percent) == units  # type: ignore[arg-type]


def test_rollout_extremes() -> None:
    values = [f"s{i}" for i in range(2000)]
    assert not any(in_rollout("p", "rollout", v, 0) for v in values)
    assert all(in_rollout("p", "rollout", v, 100) for v in values)
    assert units_in_rollout(1.0, WEIGHT_SCALE)  # the 2**-60 bucket of exactly 1.0


def test_fifty_fifty_split_of_100k_sessions_within_one_percent() -> None:
    counts = [0, 0]
    for i in range(100_000):
        counts[pick_variant([50_000, 50_000], bucket("upsell-q4", "upsell-q4", f"sess-{i}"))] += 1
    for count in counts:
        assert abs(count / 100_000 - 0.5) <= 0.01, counts


def test_three_way_split_and_rollout_share() -> None:
    counts = [0, 0, 0]
    inside = 0
    for i in range(30_000):
        value = f"call-{i}"
        counts[pick_variant([20_000, 30_000, 50_000], bucket("exp", "exp", value))] += 1
        inside += in_rollout("policy", "rollout", value, 25)
    shares = [c / 30_000 for c in counts]
    assert shares == pytest.approx([0.2, 0.3, 0.5], abs=0.015)
    assert inside / 30_000 == pytest.approx(0.25, abs=0.015)


percents = st.integers(min_value=0, max_value=WEIGHT_SCALE).map(lambda u: Decimal(u) / 1000)
session_ids = st.text(min_size=1, max_size=40)


@LAWS
@given(value=session_ids, low=percents, high=percents)
def test_raising_rollout_percent_never_removes_a_session(
    value: str, low: Decimal, high: Decimal
) -> None:
    low, high = min(low, high), max(low, high)
    if in_rollout("policy", "rollout", value, low):
        assert in_rollout("policy", "rollout", value, high)


def _weights(n: int) -> st.SearchStrategy[list[int]]:
    """``n`` weights in LD units summing to exactly 100 %."""
    cuts = st.lists(st.integers(0, WEIGHT_SCALE), min_size=n - 1, max_size=n - 1).map(sorted)
    return cuts.map(lambda c: [b - a for a, b in zip([0, *c], [*c, WEIGHT_SCALE], strict=True)])


weight_pairs = st.integers(2, 6).flatmap(lambda n: st.tuples(_weights(n), _weights(n)))
buckets = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@LAWS
@given(pair=weight_pairs, point=buckets)
def test_variants_before_the_first_changed_weight_never_move(
    pair: tuple[list[int], list[int]], point: float
) -> None:
    """E.g. shrinking only variant k (growing the last): sessions in variants < k stay put."""
    old, new = pair
    changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    first_changed = changed[0] if changed else len(old)
    before = pick_variant(old, point)
    if before < first_changed:
        assert pick_variant(new, point) == before
    if pick_variant(new, point) < first_changed:
        assert before == pick_variant(new, point)  # nobody moves in either


@LAWS
@given(pair=weight_pairs, point=buckets)
def test_growing_the_last_variant_never_moves_a_session_out_of_it(
    pair: tuple[list[int], list[int]], point: float
) -> None:
    old, new = pair
    last = len(old) - 1
    if new[last] >= old[last] and pick_variant(old, point) == last:
        assert pick_variant(new, point) == last


@LAWS
@given(pair=weight_pairs, point=buckets)
def test_growing_the_first_variant_never_moves_a_session_out_of_it(
    pair: tuple[list[int], list[int]], point: float
) -> None:
    old, new = pair
    if new[0] >= old[0] and pick_variant(old, point) == 0:
        assert pick_variant(new, point) == 0


@LAWS
@given(value=session_ids, pair=weight_pairs)
def test_laws_hold_for_hashed_sessions(value: str, pair: tuple[list[int], list[int]]) -> None:
    """The same laws through the real hash, not just arbitrary bucket points."""
    old, new = pair
    point = bucket("exp", "exp", value)
    last = len(old) - 1
    if new[last] >= old[last] and pick_variant(old, point) == last:
        assert pick_variant(new, point) == last
    assert pick_variant(old, point) == pick_variant(old, bucket("exp", "exp", value))


def test_a_middle_variant_growing_can_lose_sessions() -> None:
    """Why the law names the first/last variant: a middle arm's range can slide away."""
    old, new = [50_000, 10_000, 40_000], [10_000, 20_000, 70_000]
    assert pick_variant(old, 0.55) == 1
    assert pick_variant(new, 0.55) == 2


def _salt_and_doc(**extra: object) -> tuple[str, dict[str, object]]:
    from policies.model import parse_policy

    variants = [{"name": "a", "weight": 50}, {"name": "b", "weight": 50}]
    policy = parse_policy({"id": "p", "experiment": {"key": "upsell", "variants": variants,
                                                     **extra}})  # fmt: skip
    assert policy.experiment is not None
    return policy.experiment.effective_salt, policy.experiment.document()


def test_iteration_one_keeps_launchdarkly_hash_and_a_raised_iteration_reshuffles() -> None:
    assert _salt_and_doc() == _salt_and_doc(iteration=1)  # same hash, same document (digest)
    assert _salt_and_doc()[0] == "upsell" and "iteration" not in _salt_and_doc()[1]
    salt2, doc2 = _salt_and_doc(iteration=2)
    assert salt2 == "upsell.iteration-2" and doc2["iteration"] == 2
    ids = [f"s-{i}" for i in range(400)]
    first = [pick_variant([50_000, 50_000], bucket("upsell", "upsell", s)) for s in ids]
    second = [pick_variant([50_000, 50_000], bucket("upsell", salt2, s)) for s in ids]
    moved = sum(a != b for a, b in zip(first, second, strict=True))
    assert 150 < moved < 250  # an independent reshuffle: about half move
