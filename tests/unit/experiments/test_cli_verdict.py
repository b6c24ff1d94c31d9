"""``experiments show``'s SRM line says what the console says: below the check's minimum
exposures there is no verdict (it printed "ok" for 4 of the 100 exposures it needs)."""

from __future__ import annotations

from controlplane.cli.experiments import srm_line

SRM = {"test": "chi-squared", "p_value": 0.3173, "mismatch": False, "threshold": 0.001,
       "min_exposures": 100, "statistic": 1.0}  # fmt: skip


def test_below_the_minimum_exposures_there_is_no_verdict() -> None:
    line = srm_line(SRM, 4)
    assert line == "SRM (chi-squared): p = 0.317, too few exposures for a verdict (4 of 100)"
    assert "ok" not in line


def test_from_the_minimum_on_the_check_decides() -> None:
    assert srm_line(SRM, 100).endswith(", ok (threshold 0.001, from 100 exposures)")
    mismatch = {**SRM, "p_value": 0.000532, "mismatch": True, "min_exposures": 40}
    assert srm_line(mismatch, 48) == (
        "SRM (chi-squared): p = 0.000532, MISMATCH (threshold 0.001, from 40 exposures)"
    )
    # an exposure in a weight-0 variant is a mismatch outright, whatever the count
    assert "MISMATCH" in srm_line({**SRM, "p_value": 0.0, "mismatch": True}, 3)
