"""``timeline_body``: the exposures-over-time answer from the store's one-minute bins, at most
``MAX_BINS`` bins per variant (a longer span gets wider bins), cumulative counts exact."""

from __future__ import annotations

from controlplane.rollouts.experiments import MAX_BINS, timeline_body
from sessions.exposures import BIN_S

T0 = 1_790_000_040  # a minute boundary


def test_a_long_experiment_gets_wider_bins_and_exact_totals() -> None:
    minutes = 1_000  # over MAX_BINS one-minute bins
    bins = {"control": {T0 + 60 * m: 2 for m in range(minutes)},
            "warm": {T0 + 60 * m: 1 for m in range(0, minutes, 3)}}  # fmt: skip
    counts = {"control": 2 * minutes, "warm": len(range(0, minutes, 3))}
    body = timeline_body(["control", "warm"], counts, bins)
    assert body["bin_s"] == 2 * BIN_S  # ceil(1000 / 720) minutes
    for name in ("control", "warm"):
        own = [b for b in body["bins"] if b["variant"] == name]
        assert len(own) <= MAX_BINS
        assert own[-1]["cumulative"] == counts[name] == sum(b["exposed"] for b in own)
        assert [b["cumulative"] for b in own] == sorted(b["cumulative"] for b in own)
    assert (body["exposed"], body["binned"]) == (sum(counts.values()), sum(counts.values()))
    assert [b["at"] for b in body["bins"]] == sorted(b["at"] for b in body["bins"])


def test_exposures_counted_before_bins_existed_are_said_not_drawn() -> None:
    body = timeline_body(["control", "warm", "gone"], {"control": 5, "warm": 1},
                         {"control": {T0: 3}, "warm": {T0 + 60: 1}})  # fmt: skip
    assert body["bin_s"] == BIN_S
    assert (body["exposed"], body["binned"]) == (6, 4)
    by_name = {v["name"]: v for v in body["variants"]}
    assert (by_name["control"]["exposed"], by_name["control"]["binned"]) == (5, 3)
    assert by_name["gone"] == {"name": "gone", "exposed": 0, "binned": 0, "first": None,
                               "latest": None}  # fmt: skip
    assert by_name["warm"]["latest"] == "2026-09-21T14:16:00Z"  # the end of its last bin
