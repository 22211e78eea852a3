"""A reference profile is what drift checks compare live data with, so they never need the
training rows again.

It is computed once, at evaluation, and stored with the model version (``profile.json``
next to the registry's manifest). Per input column it keeps the type, the rows and missing
values, and the shape of the distribution:

- a **numeric** column keeps the edges of its quantile bins (each percentile, finer in the
  tails, the minimum and the maximum included) with the share of values at or below each edge, and its mean and
  standard deviation; a column with at most `MAX_DISCRETE_VALUES` distinct values also keeps
  every value's count, so that it can be compared value by value;
- a **categorical** column keeps the counts of its `MAX_CATEGORIES` most frequent categories
  and the count of the rest (``other``).

The model's scores on the test split get the same treatment (the positive class's probability
for a binary classifier, the predicted class for a multiclass one, the prediction for a
regression), and the profile carries the test metrics, the spec's goal and its monitoring
section, so that a monitor can judge live traffic from this one file. For 50 columns it is
some 150 kB of JSON; the fraud example's is about 20 kB.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel

from modelcycle.spec import MetricThreshold, MonitoringSpec

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PROFILE_BINS", "ColumnProfile", "ReferenceProfile", "profile_column", "profile_scores"]

PROFILE_BINS = 100
"""Quantile bins per numeric column: a KS statistic read on their edges is within one bin's
mass (1%) of the sample's, and 101 edges cost about 2 kB."""
_TAILS = np.array([1e-4, 5e-4, 1e-3, 2e-3, 5e-3])
QUANTILE_LEVELS = np.unique(np.concatenate([np.linspace(0, 1, PROFILE_BINS + 1), _TAILS, 1 - _TAILS]))
"""The bins' edges as quantile levels: percentiles, and finer in the tails, where a bin of 1%
spans several standard deviations and a linear CDF inside it would overstate distances."""
MAX_DISCRETE_VALUES = 20
"""A numeric column with at most this many distinct values is also kept value by value, as
Evidently bins such a column by value rather than by range."""
MAX_CATEGORIES = 200
"""Categories kept per categorical column; the rarer ones are counted together as ``other``."""

ColumnKind = Literal["numeric", "categorical"]
ScoreKind = Literal["positive_class_probability", "predicted_class", "prediction"]


class ColumnProfile(BaseModel):
    """The distribution of one column in the reference data."""

    name: str
    kind: ColumnKind
    rows: int
    missing: int
    edges: list[float] | None = None
    """Numeric: increasing quantile-bin edges, from the minimum to the maximum."""
    cdf: list[float] | None = None
    """Numeric: the share of non-missing values at or below each edge."""
    mean: float | None = None
    std: float | None = None
    values: dict[str, int] | None = None
    """Numeric with few distinct values: each value (as `repr(float)`) and its count."""
    categories: dict[str, int] | None = None
    """Categorical: the most frequent categories and their counts."""
    other: int = 0
    """Categorical: values of the categories not kept in `categories`."""

    @property
    def present(self) -> int:
        """Non-missing values."""
        return self.rows - self.missing

    @property
    def missing_rate(self) -> float:
        return self.missing / self.rows if self.rows else 0.0

    @property
    def distinct(self) -> int | None:
        """Distinct non-missing values, when the profile knows them all."""
        if self.kind == "numeric":
            return len(self.values) if self.values is not None else None
        return len(self.categories or {}) if not self.other else None


class ReferenceProfile(BaseModel):
    """What a model version was trained on and how it scored, for drift and performance checks."""

    task: str
    target: str
    classes: list[str] | None = None
    """Class labels as strings (as the serving contract's probability keys), sorted as the model's."""
    threshold: float | None = None
    columns: list[ColumnProfile]
    score_kind: ScoreKind
    scores: ColumnProfile
    """The model's scores on the test split."""
    test_metrics: dict[str, float] = {}
    goal: list[MetricThreshold] = []
    """The spec's primary threshold first, then the secondary ones."""
    monitoring: MonitoringSpec = MonitoringSpec()
    """The spec's monitoring section at evaluation: thresholds, correction, window."""

    def column(self, name: str) -> ColumnProfile:
        for column in self.columns:
            if column.name == name:
                return column
        known = ", ".join(c.name for c in self.columns)
        raise KeyError(f"the reference profile has no column {name!r}; columns: {known}")


def profile_column(name: str, values: pd.Series, kind: ColumnKind) -> ColumnProfile:
    """The profile of one column of reference data."""
    import pandas as pd

    rows = len(values)
    if kind == "categorical":
        present = values.dropna().astype(str)
        counts = present.value_counts()
        kept = counts.iloc[:MAX_CATEGORIES]
        return ColumnProfile(name=name, kind=kind, rows=rows, missing=rows - len(present),
                             categories={str(k): int(v) for k, v in kept.items()},
                             other=int(counts.iloc[MAX_CATEGORIES:].sum()))
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    numbers = numbers[np.isfinite(numbers)]
    profile = ColumnProfile(name=name, kind=kind, rows=rows, missing=rows - len(numbers))
    if not len(numbers):
        return profile
    ordered = np.sort(numbers)  # one sort gives the distinct values, the quantiles and the CDF
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    if len(starts) <= MAX_DISCRETE_VALUES:
        counts = np.diff(np.append(starts, len(ordered)))
        profile.values = {repr(float(ordered[i])): int(c) for i, c in zip(starts, counts, strict=True)}
    position = QUANTILE_LEVELS * (len(ordered) - 1)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, len(ordered) - 1)
    quantiles = ordered[below] + (ordered[above] - ordered[below]) * (position - below)
    edges = np.unique([_round(v) for v in quantiles])
    edges[0], edges[-1] = min(edges[0], ordered[0]), max(edges[-1], ordered[-1])
    cdf = np.searchsorted(ordered, edges, side="right") / len(ordered)
    profile.edges = [float(e) for e in edges]
    profile.cdf = [round(float(c), 7) for c in cdf]
    profile.mean = float(numbers.mean())
    profile.std = float(numbers.std())
    return profile


def profile_scores(task: str, *, probabilities: np.ndarray | None, predictions: np.ndarray) -> tuple[ScoreKind, ColumnProfile]:
    """The profile of a model's scores: what prediction drift compares."""
    import pandas as pd

    if task == "binary_classification" and probabilities is not None:
        return "positive_class_probability", profile_column("score", pd.Series(probabilities[:, 1]), "numeric")
    if task == "regression":
        return "prediction", profile_column("score", pd.Series(predictions, dtype=float), "numeric")
    return "predicted_class", profile_column("score", pd.Series(predictions).astype(str), "categorical")


def build_profile(
    frame: pd.DataFrame,
    *,
    numeric: list[str],
    categorical: list[str],
    task: str,
    target: str,
    classes: list[Any] | None,
    threshold: float | None,
    probabilities: np.ndarray | None,
    predictions: np.ndarray,
    test_metrics: dict[str, float],
    goal: list[MetricThreshold],
    monitoring: MonitoringSpec,
) -> ReferenceProfile:
    """The reference profile of the rows a model was fitted on (`frame`), with its scores on
    the test split (`probabilities`, `predictions`) and its test metrics."""
    columns = [profile_column(name, frame[name], "numeric") for name in numeric]
    columns += [profile_column(name, frame[name], "categorical") for name in categorical]
    score_kind, scores = profile_scores(task, probabilities=probabilities, predictions=predictions)
    return ReferenceProfile(
        task=task, target=target, classes=[str(c) for c in classes] if classes is not None else None,
        threshold=threshold, columns=columns, score_kind=score_kind, scores=scores,
        test_metrics={k: float(v) for k, v in test_metrics.items() if math.isfinite(v)}, goal=goal,
        monitoring=monitoring,
    )


def _round(value: float) -> float:
    """`value` to 7 significant digits: the profile stays small, and its edges exact as stored."""
    return float(f"{value:.7g}")
