"""Live performance: how good the model is on traffic whose true labels came back.

Labels arrive after the fact (``POST /feedback`` on the gateway, joined to the prediction by
request id, or a label column in a data file). On the labelled rows `live_performance`
measures each metric of the spec's goal, with a percentile bootstrap interval
(`BOOTSTRAP_RESAMPLES` resamples of the rows, a fixed seed), and sets it against the test
metric the evaluation measured and the goal's bound, with the shadow comparison's rule: a
goal *fails* when the whole interval is on the wrong side of the bound, *passes* when it is
all on the right side, and is *inconclusive* otherwise. A few dozen labels cannot show a
breach unless it is gross, which is what an interval is for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from modelcycle.monitoring.profiles import ReferenceProfile
from modelcycle.spec import MetricThreshold

__all__ = ["LiveMetric", "LivePerformance", "live_performance", "metric_value"]

BOOTSTRAP_RESAMPLES = 300
"""Resamples of the labelled rows for each interval: enough for 95% bounds to within about a
tenth of the interval's width."""
MIN_LABELLED = 2


class LiveMetric(BaseModel):
    metric: str
    value: float
    low: float
    high: float
    n: int
    test_value: float | None
    """What the evaluation measured on the test split."""
    op: Literal[">=", "<="]
    threshold: float
    outcome: Literal["pass", "fail", "inconclusive"]
    message: str


class LivePerformance(BaseModel):
    labelled_rows: int
    confidence: float
    metrics: list[LiveMetric]
    breached: bool
    """Whether some goal fails: its whole interval is on the wrong side of the bound."""


def metric_value(name: str, task: str, y: np.ndarray, predictions: np.ndarray, scores: np.ndarray | None,
                 classes: list[str] | None, weights: np.ndarray | None = None) -> np.ndarray:
    """One metric of `modelcycle.evaluation` on labelled rows, once per row of `weights` (each
    row a weighting of the rows: a bootstrap resample is a row of counts; None is one plain
    measurement). Labels and predictions are strings (floats for a regression), `scores` the
    class probabilities in `classes` order. A metric the rows cannot give is NaN."""
    weights = np.ones((1, len(y))) if weights is None else weights
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if task == "regression":
            error = predictions - y
            mse = weights @ (error * error) / total
            if name == "r2":
                mean = weights @ y / total
                spread = (weights * (y[None, :] - mean[:, None]) ** 2).sum(axis=1)
                return np.where(spread > 0, 1 - mse * total / spread, np.nan)
            return {"mse": lambda: mse, "rmse": lambda: np.sqrt(mse),
                    "mae": lambda: weights @ np.abs(error) / total}[name]()
        assert classes is not None
        if task == "binary_classification":
            return _binary(name, y == classes[1], predictions == classes[1], None if scores is None else scores[:, 1],
                           weights, total)
    return np.array([_multiclass(name, y, predictions, scores, classes, row) for row in weights])


def _binary(name: str, positive: np.ndarray, flagged: np.ndarray, score: np.ndarray | None, weights: np.ndarray,
            total: np.ndarray) -> np.ndarray:
    pos, hit = positive.astype(float), flagged.astype(float)
    tp, fp, fn = weights @ (pos * hit), weights @ ((1 - pos) * hit), weights @ (pos * (1 - hit))
    if name == "accuracy":
        return weights @ (pos == hit).astype(float) / total
    if name in ("precision", "recall", "f1"):
        bottom = {"precision": tp + fp, "recall": tp + fn, "f1": 2 * tp + fp + fn}[name]
        return np.where(bottom > 0, (2 * tp if name == "f1" else tp) / np.where(bottom > 0, bottom, 1), 0.0)
    if score is None:
        return np.full(len(weights), np.nan)
    if name == "brier":
        return weights @ (score - pos) ** 2 / total
    if name == "log_loss":
        p = np.clip(score, 1e-15, 1 - 1e-15)
        return weights @ -(pos * np.log(p) + (1 - pos) * np.log(1 - p)) / total
    # Rows grouped by distinct score, so that ties count half, as in scikit-learn.
    order = np.argsort(score if name == "roc_auc" else -score, kind="stable")
    ordered = score[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    positives = np.add.reduceat(weights[:, order] * pos[order], starts, axis=1)
    negatives = np.add.reduceat(weights[:, order] * (1 - pos[order]), starts, axis=1)
    all_positive, all_negative = positives.sum(axis=1), negatives.sum(axis=1)
    if name == "roc_auc":
        below = np.cumsum(negatives, axis=1) - negatives
        auc = (positives * (below + 0.5 * negatives)).sum(axis=1) / (all_positive * all_negative)
        return np.where((all_positive > 0) & (all_negative > 0), auc, np.nan)
    if name == "pr_auc":
        found = np.cumsum(positives, axis=1)
        seen = found + np.cumsum(negatives, axis=1)
        precision = np.where(seen > 0, found / np.where(seen > 0, seen, 1), 0.0)
        return np.where(all_positive > 0, (positives * precision).sum(axis=1) / all_positive, np.nan)
    raise ValueError(f"metric {name!r} cannot be measured for a binary classification")


def _multiclass(name: str, y: np.ndarray, predictions: np.ndarray, scores: np.ndarray | None, classes: list[str],
                weights: np.ndarray) -> float:
    from sklearn import metrics as skm

    keep = weights > 0
    y, predictions, weights = y[keep], predictions[keep], weights[keep]
    if name == "accuracy":
        return float(skm.accuracy_score(y, predictions, sample_weight=weights))
    if name in ("precision", "recall", "f1"):
        scorer = {"precision": skm.precision_score, "recall": skm.recall_score, "f1": skm.f1_score}[name]
        return float(scorer(y, predictions, average="macro", labels=classes, zero_division=0, sample_weight=weights))
    if scores is None:
        return math.nan
    scores = scores[keep]
    if name == "roc_auc":
        if len(np.unique(y)) < len(classes):
            return math.nan
        return float(skm.roc_auc_score(y, scores, multi_class="ovr", labels=classes, sample_weight=weights))
    if name == "log_loss":
        return float(skm.log_loss(y, scores, labels=classes, sample_weight=weights))
    raise ValueError(f"metric {name!r} cannot be measured for a multiclass classification")


def live_performance(
    profile: ReferenceProfile,
    *,
    labels: Sequence[Any],
    predictions: Sequence[Any],
    scores: np.ndarray | None,
    confidence: float,
    seed: int = 0,
) -> LivePerformance | None:
    """The goal's metrics on labelled live rows, with intervals, against the test metrics and
    the goal; None with fewer than two labelled rows."""
    n = len(labels)
    if n < MIN_LABELLED:
        return None
    if profile.task == "regression":
        y = np.asarray(labels, dtype=float)
        predicted = np.asarray(predictions, dtype=float)
    else:
        y = np.array([str(v) for v in labels], dtype=object)
        predicted = np.array([str(v) for v in predictions], dtype=object)
    # A resample drawn with replacement is a row of counts: weighting the rows by them measures
    # every resample in a few matrix products.
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1 / n), size=BOOTSTRAP_RESAMPLES).astype(float)
    results = []
    for goal in profile.goal:
        value = float(metric_value(goal.metric, profile.task, y, predicted, scores, profile.classes)[0])
        resampled = metric_value(goal.metric, profile.task, y, predicted, scores, profile.classes, counts)
        resampled = resampled[np.isfinite(resampled)]
        tail = (1 - confidence) / 2
        low, high = (np.quantile(resampled, [tail, 1 - tail]).tolist() if len(resampled) else (math.nan, math.nan))
        results.append(_judge(goal, value, low, high, n, profile.test_metrics.get(goal.metric)))
    return LivePerformance(labelled_rows=n, confidence=confidence, metrics=results,
                           breached=any(m.outcome == "fail" for m in results))


def _judge(goal: MetricThreshold, value: float, low: float, high: float, n: int, test: float | None) -> LiveMetric:
    op: Literal[">=", "<="] = ">=" if goal.min is not None else "<="
    bound = float(goal.min if goal.min is not None else goal.max)  # type: ignore[arg-type]
    if not math.isfinite(value) or not (math.isfinite(low) and math.isfinite(high)):
        outcome: Literal["pass", "fail", "inconclusive"] = "inconclusive"
    elif op == ">=":
        outcome = "fail" if high < bound else "pass" if low >= bound else "inconclusive"
    else:
        outcome = "fail" if low > bound else "pass" if high <= bound else "inconclusive"
    test_text = f"; {test:.4g} on the test split" if test is not None else ""
    verb = {"pass": "meets", "fail": "breaches", "inconclusive": "cannot yet be told from"}[outcome]
    message = (f"live {goal.metric} {value:.4g} [{low:.4g}, {high:.4g}] over {n} labelled rows {verb} the goal "
               f"{op} {bound:g}{test_text}")
    return LiveMetric(metric=goal.metric, value=value, low=low, high=high, n=n, test_value=test, op=op,
                      threshold=bound, outcome=outcome, message=message)
