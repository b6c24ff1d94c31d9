"""The pure-Python chi-squared p-value against known values, and the SRM verdict."""

from __future__ import annotations

import math

import pytest

from controlplane.rollouts.srm import chi_squared_p_value, gamma_q, srm_check


# Published critical values (chi-squared tables: the statistic whose upper tail is p).
@pytest.mark.parametrize(
    ("statistic", "dof", "expected"),
    [
        (3.841458820694124, 1, 0.05),
        (6.634896601021214, 1, 0.01),
        (10.827566170662733, 1, 0.001),
        (5.991464547107979, 2, 0.05),
        (13.815510557964274, 2, 0.001),
        (18.307038053275146, 10, 0.05),
    ],
)
def test_chi_squared_p_value_matches_table_values(
    statistic: float, dof: int, expected: float
) -> None:
    assert chi_squared_p_value(statistic, dof) == pytest.approx(expected, rel=1e-9)


def _closed_form(statistic: float, dof: int) -> float:
    """Independent formulas: even dof, Q(n, y) = e^-y sum_{k<n} y^k/k!; odd dof, the erfc
    series p = erfc(sqrt(y)) + e^-y sum_{k=1}^{(dof-1)/2} y^(k-1/2) / Gamma(k+1/2)."""
    y = statistic / 2
    if dof % 2 == 0:
        return math.exp(-y) * sum(y**k / math.factorial(k) for k in range(dof // 2))
    tail = sum(y ** (k - 0.5) / math.gamma(k + 0.5) for k in range(1, (dof - 1) // 2 + 1))
    return math.erfc(math.sqrt(y)) + math.exp(-y) * tail


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 5, 8, 19])
@pytest.mark.parametrize("statistic", [0.01, 0.5, 1.0, 2.0, 7.5, 15.0, 30.0, 100.0])
def test_chi_squared_p_value_matches_closed_forms(statistic: float, dof: int) -> None:
    assert chi_squared_p_value(statistic, dof) == pytest.approx(
        _closed_form(statistic, dof), rel=1e-9, abs=1e-300
    )


def test_gamma_q_edges_and_closed_forms() -> None:
    assert gamma_q(1.0, 0.0) == 1.0
    assert gamma_q(2.5, math.inf) == 0.0
    for x in (0.1, 1.0, 2.0, 7.5, 40.0):  # Q(1, x) = e^-x; Q(1/2, x) = erfc(sqrt x)
        assert gamma_q(1.0, x) == pytest.approx(math.exp(-x), rel=1e-12)
        assert gamma_q(0.5, x) == pytest.approx(math.erfc(math.sqrt(x)), rel=1e-10)
    with pytest.raises(ValueError, match="a > 0"):
        gamma_q(0.0, 1.0)
    with pytest.raises(ValueError, match="degrees of freedom"):
        chi_squared_p_value(1.0, 0)


def test_srm_flags_a_75_25_split_of_a_50_50_experiment() -> None:
    srm = srm_check([45, 15], [0.5, 0.5], min_exposures=50)
    assert srm.statistic == pytest.approx(15.0)
    assert srm.p_value == pytest.approx(0.00010751117672624, rel=1e-9)
    assert srm.mismatch is True
    assert srm.document()["test"] == "chi-squared"


def test_srm_balanced_split_and_too_few_exposures() -> None:
    assert srm_check([31, 29], [0.5, 0.5], min_exposures=50).mismatch is False
    few = srm_check([30, 10], [0.5, 0.5], min_exposures=50)
    assert few.p_value < 0.01 and few.mismatch is False  # 40 < min_exposures: no verdict
    assert srm_check([0, 0], [0.5, 0.5], min_exposures=0).p_value == 1.0


def test_srm_exposure_of_a_zero_weight_variant_is_a_mismatch() -> None:
    srm = srm_check([50, 50, 1], [0.5, 0.5, 0.0], min_exposures=10)
    assert srm.p_value == 0.0 and srm.mismatch is True
    assert srm_check([50, 50, 0], [0.5, 0.5, 0.0], min_exposures=10).mismatch is False
