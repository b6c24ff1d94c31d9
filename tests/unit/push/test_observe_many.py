"""``observe_many`` must expose exactly what one ``observe`` per amount would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from controlplane.metrics import LATENCY_BUCKETS, observe_many

AMOUNTS = st.lists(
    st.one_of(
        st.floats(min_value=-1.0, max_value=100.0, allow_nan=False),
        st.sampled_from(LATENCY_BUCKETS),  # exactly on a bound: counted in that bucket
    ),
    max_size=200,
)


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("lat_seconds", "x", buckets=LATENCY_BUCKETS, registry=one)
    h2 = Histogram("lat_seconds", "x", buckets=LATENCY_BUCKETS, registry=many)
    return one, h1, many, h2


def _exposition(registry: CollectorRegistry) -> list[str]:
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if not line.startswith("lat_seconds_created") and not line.startswith("#")
    ]


@given(AMOUNTS)
def test_bulk_observation_equals_one_by_one(amounts: list[float]) -> None:
    one, h1, many, h2 = _pair()
    for amount in amounts:
        h1.observe(amount)
    observe_many(h2, amounts)
    got, want = _exposition(many), _exposition(one)
    # _sum may differ in the last bits (one float sum vs running sum)
    assert [g for g in got if "_sum" not in g] == [w for w in want if "_sum" not in w]
    g_sum = float(next(g for g in got if "_sum" in g).split()[-1])
    w_sum = float(next(w for w in want if "_sum" in w).split()[-1])
    assert abs(g_sum - w_sum) <= 1e-9 * max(1.0, abs(w_sum))


def test_a_value_on_a_bound_lands_in_that_bucket() -> None:
    _, _, many, h2 = _pair()
    observe_many(h2, [0.001, 0.0010001, 31.0])
    lines = _exposition(many)
    assert 'lat_seconds_bucket{le="0.001"} 1.0' in lines
    assert 'lat_seconds_bucket{le="0.0025"} 2.0' in lines
    assert 'lat_seconds_bucket{le="30.0"} 2.0' in lines
    assert 'lat_seconds_bucket{le="+Inf"} 3.0' in lines
    assert "lat_seconds_count 3.0" in lines
