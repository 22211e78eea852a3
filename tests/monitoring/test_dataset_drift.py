"""Dataset drift over many columns: the share rule, the multiple-testing correction and the
effect-size rule, on synthetic data with a known shift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelcycle.monitoring.drift import adjust_p_values, detect_drift
from modelcycle.monitoring.profiles import ReferenceProfile, profile_column, profile_scores
from modelcycle.spec import ColumnMonitoring, MonitoringSpec

rng = np.random.default_rng(7)


def _profile(frame: pd.DataFrame, monitoring: MonitoringSpec | None = None) -> ReferenceProfile:
    """A regression model's profile of `frame`, with standard normal scores."""
    columns = [profile_column(name, frame[name], "numeric" if frame[name].dtype.kind == "f" else "categorical")
               for name in frame.columns]
    kind, scores = profile_scores("regression", probabilities=None, predictions=rng.normal(size=len(frame)))
    return ReferenceProfile(task="regression", target="y", columns=columns, score_kind=kind, scores=scores,
                            monitoring=monitoring or MonitoringSpec())


def _frame(rows: int, *, columns: int, shifted: int = 0, shift: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame({f"x{i}": rng.normal(shift if i < shifted else 0.0, 1, rows) for i in range(columns)})


def test_no_shift_is_no_drift_and_a_shift_in_most_columns_is_dataset_drift():
    profile = _profile(_frame(5_000, columns=10))
    calm = detect_drift(profile, _frame(3_000, columns=10))
    assert calm.drifted_columns == [] and not calm.dataset_drift
    moved = detect_drift(profile, _frame(3_000, columns=10, shifted=6, shift=0.5))
    assert moved.drifted_columns == [f"x{i}" for i in range(6)]
    assert moved.drift_share == 0.6 and moved.dataset_drift


def test_the_share_threshold_comes_from_the_spec():
    profile = _profile(_frame(5_000, columns=10), MonitoringSpec(drift_share=0.7))
    moved = detect_drift(profile, _frame(3_000, columns=10, shifted=6, shift=0.5))
    assert len(moved.drifted_columns) == 6 and not moved.dataset_drift


def test_a_trivial_shift_on_a_huge_sample_is_not_drift_thanks_to_the_effect_size():
    reference = _frame(200_000, columns=1)
    current = _frame(1_000_000, columns=1, shifted=1, shift=0.02)  # a fiftieth of a standard deviation
    forced_ks = MonitoringSpec(columns={"x0": ColumnMonitoring(stattest="ks")})
    result = detect_drift(_profile(reference, forced_ks), current).columns[0]
    assert result.stattest == "ks" and result.significant  # real: p is tiny on a million rows
    assert result.effect == "wasserstein" and result.effect_size < 0.05
    assert not result.drifted and "too small to count" in result.reason
    without_rule = MonitoringSpec(columns={"x0": ColumnMonitoring(stattest="ks", min_effect=0)})
    assert detect_drift(_profile(reference, without_rule), current).columns[0].drifted
    real = detect_drift(_profile(reference, forced_ks), _frame(1_000_000, columns=1, shifted=1, shift=0.3))
    assert real.columns[0].drifted


def test_the_correction_keeps_chance_from_flagging_columns():
    """20 checks of 60 unshifted columns at the 5% level: uncorrected, about three false alarms
    per check; corrected, a false alarm in about one check in twenty."""
    tests = {f"x{i}": ColumnMonitoring(stattest="ks", min_effect=0) for i in range(60)}
    flagged = {"none": 0, "fdr": 0, "bonferroni": 0}
    for _ in range(20):
        reference, current = _frame(400, columns=60), _frame(400, columns=60)
        for method in flagged:
            profile = _profile(reference, MonitoringSpec(correction=method, columns=tests))
            flagged[method] += len(detect_drift(profile, current).drifted_columns)
    assert flagged["none"] >= 20
    assert flagged["fdr"] <= 4 and flagged["bonferroni"] <= 4


def test_benjamini_hochberg_and_bonferroni_adjust_as_defined():
    p = [0.01, 0.04, 0.03, 0.005]
    assert adjust_p_values(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02])
    # sorted 0.005, 0.01, 0.03, 0.04 -> 0.02, 0.02, 0.04, 0.04, back in the original order
    assert adjust_p_values(p, "fdr") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert adjust_p_values(p, "none") == p


def test_categorical_drift_and_prediction_drift():
    reference = pd.DataFrame({"channel": rng.choice(["pos", "online", "atm"], 4_000, p=[0.6, 0.3, 0.1])})
    profile = _profile(reference)
    current = pd.DataFrame({"channel": rng.choice(["pos", "online", "atm"], 4_000, p=[0.25, 0.7, 0.05])})
    result = detect_drift(profile, current, scores=pd.Series(rng.normal(1.0, 1, 4_000)))
    assert result.columns[0].stattest == "jensenshannon" and result.columns[0].drifted
    assert result.prediction is not None and result.prediction.drifted


def test_a_missing_column_and_an_unknown_setting_are_errors_naming_them():
    profile = _profile(_frame(500, columns=2))
    with pytest.raises(ValueError, match="no column 'x1'"):
        detect_drift(profile, _frame(100, columns=1))
    settings = MonitoringSpec(columns={"nope": ColumnMonitoring(stattest="psi")})
    with pytest.raises(ValueError, match="monitoring.columns: 'nope'"):
        detect_drift(profile, _frame(100, columns=2), settings=settings)
