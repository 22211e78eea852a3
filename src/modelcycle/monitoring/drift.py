"""Data drift: do the live inputs, and the model's scores, still look like the reference?

`detect_drift` runs one drift test per input column (`modelcycle.monitoring.stattests`: the
spec's choice for the column, else the default by type and sample size) against the
reference profile, and one on the model's scores (prediction drift).

The p-value tests of the input columns are one family: their p-values are corrected for
multiple testing before they are compared with each column's significance level, by
Benjamini-Hochberg (``fdr``, the default: among the columns called drifted, the expected
share of false calls is at most the level) or Bonferroni (at most the level's chance of any
false call). With 50 columns and no correction, a check with nothing drifting flags two or
three columns by chance. Distances are not p-values and are not corrected. A p-value test's
drift must also pass the effect-size rule (see `stattests`).

The data set has drifted when the share of drifted input columns reaches
`MonitoringSpec.drift_share` (0.5 by default, as Evidently). Prediction drift is reported
apart: the scores can move with no input drifting (a change in how the inputs combine), and
inputs can drift without moving the scores (a feature the model hardly uses).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel

from modelcycle.monitoring.profiles import ColumnProfile, ReferenceProfile
from modelcycle.monitoring.stattests import STATTESTS, CurrentSample, default_stattest, get_stattest
from modelcycle.spec import ColumnMonitoring, MonitoringSpec

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ColumnDrift", "DriftReport", "adjust_p_values", "column_drift", "detect_drift"]


class ColumnDrift(BaseModel):
    """One column's drift test against the reference, and its verdict."""

    column: str
    kind: Literal["numeric", "categorical"]
    stattest: str
    stattest_kind: Literal["p_value", "distance"]
    score: float
    """The p-value (before correction) or the distance."""
    threshold: float
    p_value_adjusted: float | None = None
    """The p-value after the multiple-testing correction; None for a distance."""
    effect: str | None = None
    """The distance that measured the shift's size, for a p-value test."""
    effect_size: float | None = None
    min_effect: float | None = None
    significant: bool | None = None
    """For a p-value test: whether the corrected p-value is below the threshold."""
    drifted: bool
    reference_rows: int
    current_rows: int
    reference_missing_rate: float
    current_missing_rate: float
    reason: str
    """The verdict in words: what was measured against which bound."""


class DriftReport(BaseModel):
    """Every input column's drift, the data set's verdict, and the scores' drift."""

    computed_at: dt.datetime
    rows: int
    columns: list[ColumnDrift]
    correction: Literal["fdr", "bonferroni", "none"]
    drifted_columns: list[str]
    drift_share: float
    """Share of input columns that drifted."""
    drift_share_threshold: float
    dataset_drift: bool
    prediction: ColumnDrift | None
    """Drift of the model's scores; None when there are no scores to compare."""


def column_drift(reference: ColumnProfile, values: pd.Series, settings: ColumnMonitoring) -> tuple[ColumnDrift, float]:
    """One column's test, before correction: (result, p-value or NaN for a distance)."""
    sample = CurrentSample(reference, values)
    test = get_stattest(settings.stattest, reference.kind) if settings.stattest else default_stattest(sample)
    threshold = settings.threshold if settings.threshold is not None else test.default_threshold
    score = test.func(sample) if sample.present and reference.present else math.nan
    result = ColumnDrift(
        column=reference.name, kind=reference.kind, stattest=test.name, stattest_kind=test.kind,
        score=score, threshold=threshold, drifted=False, reference_rows=reference.rows,
        current_rows=sample.rows, reference_missing_rate=reference.missing_rate,
        current_missing_rate=sample.missing / sample.rows if sample.rows else 0.0, reason="",
    )
    if math.isnan(score):
        result.reason = "no values to compare"
        return result, math.nan
    if test.kind == "distance":
        result.drifted = test.drifted(score, threshold)
        result.reason = f"{test.display_name} {score:.4g} {'>=' if result.drifted else '<'} {threshold:g}"
        return result, math.nan
    assert test.effect is not None
    effect = STATTESTS[test.effect]
    result.effect = effect.name
    result.effect_size = effect.func(sample)
    result.min_effect = settings.min_effect if settings.min_effect is not None else effect.default_threshold
    return result, score


def adjust_p_values(p_values: list[float], method: Literal["fdr", "bonferroni", "none"]) -> list[float]:
    """p-values corrected for testing them together: Benjamini-Hochberg (``fdr``) or Bonferroni."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0 or method == "none":
        return p.tolist()
    if method == "bonferroni":
        return np.minimum(p * m, 1.0).tolist()
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


def _decide(result: ColumnDrift, adjusted: float) -> None:
    """The verdict of a p-value test: significant after correction, and large enough."""
    result.p_value_adjusted = adjusted
    result.significant = adjusted < result.threshold
    large = result.effect_size is not None and result.min_effect is not None and result.effect_size >= result.min_effect
    result.drifted = bool(result.significant and large)
    p_text = f"p = {result.score:.3g} (corrected {adjusted:.3g}) {'<' if result.significant else '>='} {result.threshold:g}"
    size = f"{result.effect} {result.effect_size:.4g} {'>=' if large else '<'} {result.min_effect:g}"
    if result.drifted:
        result.reason = f"{p_text} and {size}"
    elif result.significant:
        result.reason = f"{p_text}, but the shift is too small to count: {size}"
    else:
        result.reason = p_text


def detect_drift(
    profile: ReferenceProfile,
    current: pd.DataFrame,
    *,
    scores: pd.Series | None = None,
    settings: MonitoringSpec | None = None,
) -> DriftReport:
    """Test every profiled input column of `current`, and `scores` when given, against the
    reference. A column missing from `current` is an error naming it."""
    settings = settings or profile.monitoring
    absent = [c.name for c in profile.columns if c.name not in current.columns]
    if absent:
        raise ValueError(f"the current data has no column {', '.join(map(repr, absent))}; "
                         f"expected the model's input columns ({', '.join(c.name for c in profile.columns)})")
    unknown = sorted(set(settings.columns) - {c.name for c in profile.columns})
    if unknown:
        raise ValueError(f"monitoring.columns: {', '.join(map(repr, unknown))} not in the reference profile")
    results, p_values = [], []
    for reference in profile.columns:
        result, p = column_drift(reference, current[reference.name], settings.columns.get(reference.name,
                                                                                          ColumnMonitoring()))
        results.append(result)
        p_values.append(p)
    tested = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    for i, adjusted in zip(tested, adjust_p_values([p_values[i] for i in tested], settings.correction), strict=True):
        _decide(results[i], adjusted)
    prediction = None
    if scores is not None:
        prediction, p = column_drift(profile.scores, scores, settings.prediction)
        if not math.isnan(p):
            _decide(prediction, p)
    drifted = [r.column for r in results if r.drifted]
    share = len(drifted) / len(results) if results else 0.0
    return DriftReport(
        computed_at=dt.datetime.now(dt.UTC), rows=len(current), columns=results, correction=settings.correction,
        drifted_columns=drifted, drift_share=share, drift_share_threshold=settings.drift_share,
        dataset_drift=bool(results) and share >= settings.drift_share, prediction=prediction,
    )
