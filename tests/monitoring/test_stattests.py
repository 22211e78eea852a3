"""The drift tests against a profile: known shifts found, no shift left alone, and the figures
close to the same tests run on the raw rows with scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from modelcycle.monitoring.profiles import profile_column
from modelcycle.monitoring.stattests import STATTESTS, CurrentSample, UnknownStatTest, default_stattest, get_stattest, ks_statistic

rng = np.random.default_rng(20261129)


def _numeric(reference: np.ndarray, current: np.ndarray) -> CurrentSample:
    return CurrentSample(profile_column("x", pd.Series(reference), "numeric"), pd.Series(current))


def _categorical(reference: list[str], current: list[str]) -> CurrentSample:
    return CurrentSample(profile_column("c", pd.Series(reference), "categorical"), pd.Series(current))


def _draw(shares: dict[str, float], n: int) -> list[str]:
    return rng.choice(list(shares), n, p=list(shares.values())).tolist()


def test_an_unknown_test_is_refused_with_the_valid_names():
    with pytest.raises(UnknownStatTest, match="expected one of ks, chisquare, z, wasserstein, jensenshannon, psi"):
        get_stattest("anderson")
    with pytest.raises(UnknownStatTest, match="takes numeric columns, not categorical"):
        get_stattest("ks", "categorical")


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.2, 0.5, 1.0])
def test_wasserstein_and_ks_from_the_profile_match_scipy_on_the_rows(shift):
    reference, current = rng.normal(0, 1, 20_000), rng.normal(shift, 1.3 if shift else 1, 20_000)
    sample = _numeric(reference, current)
    exact = stats.wasserstein_distance(reference, current) / np.std(reference)
    assert STATTESTS["wasserstein"].func(sample) == pytest.approx(exact, rel=0.02, abs=0.002)
    assert ks_statistic(sample) == pytest.approx(stats.ks_2samp(reference, current).statistic, abs=0.01)


def test_ks_p_value_is_the_two_sample_one():
    reference, current = rng.normal(0, 1, 3_000), rng.normal(0.08, 1, 2_000)
    scipy_p = stats.ks_2samp(reference, current, method="asymp").pvalue
    ours = STATTESTS["ks"].func(_numeric(reference, current))
    # The gap is read at the profile's bin edges, a little under the rows' own: same order of magnitude.
    assert scipy_p <= ours and np.log10(ours) - np.log10(scipy_p) < 0.5


def test_numeric_tests_find_a_shift_and_leave_an_unshifted_column_alone():
    reference = rng.lognormal(3, 1, 5_000)
    same, shifted = rng.lognormal(3, 1, 800), rng.lognormal(3.4, 1, 800)
    for name in ("ks", "wasserstein", "psi"):
        test = STATTESTS[name]
        unshifted, moved = test.func(_numeric(reference, same)), test.func(_numeric(reference, shifted))
        assert not test.drifted(unshifted, test.default_threshold), (name, unshifted)
        assert test.drifted(moved, test.default_threshold), (name, moved)


def test_categorical_tests_find_a_shift_and_leave_an_unshifted_column_alone():
    shares = {"pos": 0.6, "online": 0.3, "atm": 0.1}
    moved = {"pos": 0.35, "online": 0.6, "atm": 0.05}
    reference = _draw(shares, 5_000)
    for name in ("chisquare", "jensenshannon", "psi"):
        test = STATTESTS[name]
        unshifted = test.func(_categorical(reference, _draw(shares, 900)))
        shifted = test.func(_categorical(reference, _draw(moved, 900)))
        assert not test.drifted(unshifted, test.default_threshold), (name, unshifted)
        assert test.drifted(shifted, test.default_threshold), (name, shifted)


def test_a_category_the_reference_never_had_is_drift_for_chi_square():
    reference = _draw({"a": 0.5, "b": 0.5}, 2_000)
    current = _draw({"a": 0.4, "b": 0.4, "new": 0.2}, 500)
    assert STATTESTS["chisquare"].func(_categorical(reference, current)) < 1e-10


def test_z_test_on_two_categories_agrees_with_the_two_proportion_test():
    reference, current = _draw({"yes": 0.3, "no": 0.7}, 1_000), _draw({"yes": 0.4, "no": 0.6}, 600)
    p_value = STATTESTS["z"].func(_categorical(reference, current))
    p1, p2 = reference.count("yes") / 1_000, current.count("yes") / 600
    pooled = (reference.count("yes") + current.count("yes")) / 1_600
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / 1_000 + 1 / 600))
    assert p_value == pytest.approx(2 * stats.norm.sf(abs(z)))
    assert STATTESTS["z"].drifted(p_value, 0.05)


def test_default_tests_follow_evidently_rules_on_the_smaller_sample():
    big, small = rng.normal(size=5_000), rng.normal(size=300)
    assert default_stattest(_numeric(big, rng.normal(size=5_000))).name == "wasserstein"
    assert default_stattest(_numeric(big, small)).name == "ks"  # Evidently would take wasserstein here
    assert default_stattest(_numeric(small, small)).name == "ks"
    few = rng.integers(0, 4, 5_000).astype(float)
    assert default_stattest(_numeric(few, rng.integers(0, 4, 5_000).astype(float))).name == "jensenshannon"
    assert default_stattest(_numeric(few, rng.integers(0, 4, 500).astype(float))).name == "chisquare"
    two = rng.integers(0, 2, 500).astype(float)
    assert default_stattest(_numeric(two, two)).name == "z"
    colours = _draw({"red": 0.5, "blue": 0.3, "green": 0.2}, 3_000)
    assert default_stattest(_categorical(colours, colours)).name == "jensenshannon"
    assert default_stattest(_categorical(colours, colours[:200])).name == "chisquare"


def test_a_column_with_few_values_is_compared_value_by_value():
    reference = rng.poisson(2.0, 5_000).astype(float)
    sample = _numeric(reference, rng.poisson(2.0, 5_000).astype(float))
    assert sample.by_value
    exact = stats.wasserstein_distance(reference, sample.numbers) / np.std(reference)
    assert STATTESTS["wasserstein"].func(sample) == pytest.approx(exact, rel=1e-9)
