"""Monitoring a model in production: drift, data quality and live performance, one verdict.

A check compares *current* data with the model version's reference profile
(`modelcycle.monitoring.profiles`) and returns a `MonitoringResult`:

- `monitor_frame` takes a frame of new data (a file): the inputs are tested for drift and
  quality; with the model at hand its scores are tested for prediction drift, and when the
  frame also has the target column, the live metrics are measured on it;
- `monitor_log` takes the gateway's prediction log (`read_prediction_log`) over the spec's
  window, ending now: the logged records and production's answers are tested the same way,
  the labels sent to ``/feedback`` give the live metrics, and the requests production
  refused with 422 are counted.

The verdict: ``performance`` when a goal fails on the labelled rows (its whole interval on
the wrong side), else ``drift`` when the data set or the model's scores drifted, else
``ok``. Data-quality flags are warnings: they say what to look at, and a column that stays
flagged long enough drifts too. `modelcycle monitor` turns the verdict into an exit code.

`monitor_followed_log` is for a long-lived process that checks the same growing log again
and again (the gateway's worker): it parses only what was appended since its last call and
forgets requests older than the window.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel

from modelcycle.monitoring.drift import DriftReport, detect_drift
from modelcycle.monitoring.performance import LivePerformance, live_performance
from modelcycle.monitoring.predictions import PredictionLogReader
from modelcycle.monitoring.profiles import ReferenceProfile
from modelcycle.monitoring.quality import DataQuality, check_quality
from modelcycle.spec import MonitoringSpec

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LogWindow", "MonitoringResult", "Verdict", "load_profile", "log_window", "monitor_followed_log", "monitor_frame",
           "monitor_log", "scores_of"]

Verdict = Literal["ok", "drift", "performance"]
REFUSED_STATUS = 422


class MonitoringResult(BaseModel):
    """What one check found, and its verdict."""

    model: str | None = None
    version: str | None = None
    source: str
    """Where the current data came from: a data file, or a prediction log and its window."""
    computed_at: dt.datetime
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None
    rows: int
    verdict: Verdict
    reasons: list[str]
    warnings: list[str]
    drift: DriftReport
    quality: DataQuality
    performance: LivePerformance | None


def scores_of(profile: ReferenceProfile, *, predictions: list[Any], probabilities: list[Any] | None) -> pd.Series:
    """The scores prediction drift compares, from answers in the serving contract's form:
    the positive class's probability, the predicted class, or the predicted value."""
    import pandas as pd

    if profile.score_kind == "positive_class_probability":
        assert profile.classes is not None and probabilities is not None
        positive = profile.classes[1]
        return pd.Series([float(p[positive]) if isinstance(p, dict) and positive in p else math.nan
                          for p in probabilities], dtype=float)
    if profile.score_kind == "prediction":
        return pd.to_numeric(pd.Series(predictions, dtype=object), errors="coerce")
    return pd.Series([None if p is None else str(p) for p in predictions], dtype=object)


def _probability_matrix(profile: ReferenceProfile, probabilities: list[Any]) -> np.ndarray | None:
    if profile.classes is None or not probabilities or not all(isinstance(p, dict) for p in probabilities):
        return None
    return np.array([[float(p.get(c, 0.0)) for c in profile.classes] for p in probabilities])


def _verdict(drift: DriftReport, quality: DataQuality, performance: LivePerformance | None) -> tuple[Verdict, list[str], list[str]]:
    reasons: list[str] = []
    verdict: Verdict = "ok"
    if performance and performance.breached:
        verdict = "performance"
        reasons += [m.message for m in performance.metrics if m.outcome == "fail"]
    if drift.dataset_drift:
        verdict = "drift" if verdict == "ok" else verdict
        reasons.append(f"data set drift: {len(drift.drifted_columns)} of {len(drift.columns)} input columns drifted "
                       f"({drift.drift_share:.0%} >= {drift.drift_share_threshold:.0%}): "
                       f"{', '.join(drift.drifted_columns)}")
    if drift.prediction and drift.prediction.drifted:
        verdict = "drift" if verdict == "ok" else verdict
        reasons.append(f"prediction drift: {drift.prediction.reason}")
    warnings = [f"{c.column}: {c.reason}" for c in drift.columns if c.drifted and not drift.dataset_drift]
    warnings += [f"{c.column}: {reason}" for c in quality.columns for reason in c.reasons]
    if quality.refused_requests:
        warnings.append(f"{quality.refused_requests} of {quality.requests} requests refused with 422 by the model server")
    if performance:
        warnings += [m.message for m in performance.metrics if m.outcome == "inconclusive"]
    if verdict == "ok":
        reasons.append(f"no data set drift ({len(drift.drifted_columns)} of {len(drift.columns)} input columns "
                       f"drifted, {drift.drift_share:.0%} < {drift.drift_share_threshold:.0%})"
                       + ("" if performance is None else ", no goal breached on the labelled rows"))
    return verdict, reasons, warnings


def monitor_frame(
    profile: ReferenceProfile,
    frame: pd.DataFrame,
    *,
    model: Any | None = None,
    settings: MonitoringSpec | None = None,
    source: str = "data frame",
) -> MonitoringResult:
    """Check a frame of new data. `model` (a `TrainedModel`) adds prediction drift, and live
    metrics when the frame has the target column with labels."""
    import pandas as pd

    settings = settings or profile.monitoring
    scores, performance = None, None
    if model is not None and len(frame):
        proba = model.predict_proba(frame)
        predictions = model.decide(proba) if proba is not None else model.predict(frame)
        probabilities = None
        if proba is not None:
            probabilities = [dict(zip(profile.classes or [], row, strict=True)) for row in proba.tolist()]
        scores = scores_of(profile, predictions=predictions.tolist(), probabilities=probabilities)
        if profile.target in frame.columns:
            labelled = frame[profile.target].notna().to_numpy()
            performance = live_performance(
                profile, labels=frame[profile.target][labelled].tolist(),
                predictions=pd.Series(predictions)[labelled].tolist(),
                scores=proba[labelled] if proba is not None else None, confidence=settings.confidence,
            )
    drift = detect_drift(profile, frame, scores=scores, settings=settings)
    quality = check_quality(profile, frame)
    verdict, reasons, warnings = _verdict(drift, quality, performance)
    return MonitoringResult(source=source, computed_at=dt.datetime.now(dt.UTC), rows=len(frame), verdict=verdict,
                            reasons=reasons, warnings=warnings, drift=drift, quality=quality, performance=performance)


@dataclasses.dataclass
class LogWindow:
    """The answered rows of a prediction log within a window, as a check reads them."""

    start: float
    end: float
    current: pd.DataFrame
    """The input records production answered, one row per prediction."""
    scores: pd.Series | None
    labels: list[Any]
    """Labels of the labelled rows, in the order of `labelled_predictions`."""
    labelled_predictions: list[Any]
    labelled_scores: np.ndarray | None
    requests: int
    refused: int
    """Requests production refused with 422."""
    models: list[str]
    versions: list[str]


def log_window(profile: ReferenceProfile, log: pd.DataFrame, *, start: float, end: float) -> LogWindow:
    """The rows of a `read_prediction_log` frame logged from `start` to `end` (Unix times)."""
    import pandas as pd

    ts = (log["ts"].astype("int64") / 1e9).to_numpy() if len(log) else np.array([])
    window = log[(ts >= start) & (ts <= end)]
    requests = window.drop_duplicates("request_id")
    refused = int((requests["production_status"] == REFUSED_STATUS).fillna(False).sum())
    answered = window[window["production_prediction"].notna()]
    names = [c.name for c in profile.columns]
    records = [r if isinstance(r, dict) else {} for r in answered["record"]]
    current = pd.DataFrame.from_records(records, columns=names) if records else pd.DataFrame(
        {c.name: pd.Series([], dtype=float if c.kind == "numeric" else object) for c in profile.columns})
    probabilities = answered["production_probabilities"].tolist()
    scores = scores_of(profile, predictions=answered["production_prediction"].tolist(),
                       probabilities=probabilities if profile.task != "regression" else None) if len(answered) else None
    labelled = answered["label"].notna().to_numpy()
    return LogWindow(
        start=start, end=end, current=current, scores=scores, labels=answered["label"][labelled].tolist(),
        labelled_predictions=answered["production_prediction"][labelled].tolist(),
        labelled_scores=_probability_matrix(profile, [p for p, keep in zip(probabilities, labelled, strict=True) if keep]),
        requests=len(requests), refused=refused,
        models=sorted({str(v) for v in answered["production_model"].dropna()}),
        versions=sorted({str(v) for v in answered["production_version"].dropna()}),
    )


def monitor_log(
    profile: ReferenceProfile,
    log: pd.DataFrame | LogWindow,
    *,
    now: float | None = None,
    settings: MonitoringSpec | None = None,
    source: str = "prediction log",
) -> MonitoringResult:
    """Check the rows of a `read_prediction_log` frame logged within the window that ends
    `now` (a Unix time; the current time by default), or a `LogWindow` already cut."""
    settings = settings or profile.monitoring
    if not isinstance(log, LogWindow):
        end = time.time() if now is None else now
        log = log_window(profile, log, start=end - settings.window_seconds, end=end)
    performance = None
    if log.labels:
        performance = live_performance(profile, labels=log.labels, predictions=log.labelled_predictions,
                                       scores=log.labelled_scores, confidence=settings.confidence)
    drift = detect_drift(profile, log.current, scores=log.scores, settings=settings)
    quality = check_quality(profile, log.current).model_copy(update={"refused_requests": log.refused,
                                                                     "requests": log.requests})
    verdict, reasons, warnings = _verdict(drift, quality, performance)
    return MonitoringResult(
        model=", ".join(log.models) or None, version=", ".join(log.versions) or None,
        source=f"{source}, window {settings.window}", computed_at=dt.datetime.now(dt.UTC),
        window_start=dt.datetime.fromtimestamp(log.start, dt.UTC), window_end=dt.datetime.fromtimestamp(log.end, dt.UTC),
        rows=len(log.current), verdict=verdict, reasons=reasons, warnings=warnings, drift=drift, quality=quality,
        performance=performance,
    )


class _WindowedLogReader(PredictionLogReader):
    """A `PredictionLogReader` that can forget what is older than a window, so that following
    a production log for months holds one window of it in memory, not all of it."""

    def forget_before(self, ts: float) -> None:
        old = {request_id for request_id, entry in self._requests.items() if entry["ts"] < ts}
        if old:
            self.forget(old)


_followed: dict[Path, _WindowedLogReader] = {}
_profiles: dict[Path, tuple[float, ReferenceProfile]] = {}


def monitor_followed_log(log_dir: str | os.PathLike[str], profile_path: str | os.PathLike[str]) -> MonitoringResult:
    """`monitor_log` over the log in `log_dir` and the profile at `profile_path`, parsing only
    what was appended since the last call for the same directory in this process."""
    path = Path(log_dir).resolve()
    reader = _followed.get(path)
    if reader is None:
        reader = _followed[path] = _WindowedLogReader(path)
    profile = load_profile(profile_path)
    now = time.time()
    reader.refresh().forget_before(now - profile.monitoring.window_seconds)
    return monitor_log(profile, reader.frame(), now=now, source=str(path))


def load_profile(path: str | os.PathLike[str]) -> ReferenceProfile:
    """A profile file, read again only when it changed."""
    path = Path(path).resolve()
    mtime = path.stat().st_mtime
    cached = _profiles.get(path)
    if cached is None or cached[0] != mtime:
        cached = _profiles[path] = (mtime, ReferenceProfile.model_validate_json(path.read_bytes()))
    return cached[1]
