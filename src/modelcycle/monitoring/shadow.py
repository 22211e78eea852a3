"""Shadow comparison: does the shadow model answer like production, as fast, as reliably?

The gateway mirrors a sample of live requests to a shadow model and the prediction log keeps
both answers. `compare_shadow` reads that log (`read_prediction_log`) and measures:

- **agreement**: the share of compared rows where both predicted the same class
  (classification only), with a Wilson score interval;
- **score deltas**: per row, the shadow's score minus production's. The score is the
  positive-class probability for binary classification, the total variation distance between
  the two probability vectors for multiclass (already a distance, so its mean is the mean
  absolute delta), the prediction itself for regression. The mean absolute delta gets a
  normal-approximation interval; a two-sample Kolmogorov-Smirnov test compares the
  distributions of the two sides' scores;
- **latency**: shadow p50 / production p50 over requests both answered, with an interval
  built from order-statistic intervals of each median; p95s are reported as well;
- **error rates**: production's share of requests without a 2xx answer; the shadow's share
  of mirrored requests that production answered with 2xx and the shadow did not (timeout,
  connection failure or an error status). Inputs that both sides reject are not held
  against the shadow.

The verdict rule. Each of agreement, latency ratio and shadow error rate is checked against
`ShadowPolicy` with its interval at `policy.confidence`: it *fails* when the whole interval
is on the wrong side of the threshold, *passes* when the whole interval is on the right
side, and is *inconclusive* otherwise. Then:

- **reject** when any check fails, whatever the number of requests: a conclusive breach
  needs no more traffic (a shadow that errors on every request is rejected after a handful);
- **hold** while fewer than `min_requests` requests were compared, or while any check is
  inconclusive (the data cannot yet tell the shadow from the threshold);
- **promote** when all checks pass on at least `min_requests` compared requests.

numpy, pandas, scipy and matplotlib are imported by the functions that use them: the gateway
imports this module for `ShadowPolicy` and should start in well under a second, and the
operator, whose image has no scientific stack, takes its promotion defaults from `ShadowPolicy`.

Memory. A comparison needs counts and a few numbers per compared request, not the log's
entries: `ShadowEvidence` holds just that, and `ShadowEvidenceReader` builds it while it
follows a log, segment by segment, so the gateway's worker holds about 60 bytes per request
plus its id, and lets go of a segment's share when retention deletes the segment.

The verdict is meant to be recomputed as traffic flows. Looking repeatedly raises the chance
that a shadow sitting right at a threshold is rejected by noise at some look; a shadow
clearly inside the policy is not affected. The KS test and the score deltas are evidence for
a person to read, not part of the verdict: a retrained model is expected to move scores.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import io
import math
import os
import statistics
from array import array
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelcycle.monitoring.predictions import COLUMNS, PredictionLogTail

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = [
    "Estimate",
    "ShadowCheck",
    "ShadowComparison",
    "ShadowEvidence",
    "ShadowEvidenceReader",
    "ShadowPolicy",
    "compare_evidence",
    "compare_followed_log",
    "compare_shadow",
    "render_shadow_report",
    "wilson_interval",
]

Verdict = Literal["promote", "hold", "reject"]
ScoreKind = Literal["positive_class_probability", "total_variation", "prediction"]


class ShadowPolicy(BaseModel):
    """What a shadow must show before it may replace production."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    min_requests: Annotated[int, Field(gt=0)] = 500
    """Compared requests (both sides answered 2xx) needed before promotion. With 0 errors,
    a max_error_rate of 1% is only shown at 95% confidence after about 380 requests."""
    min_agreement: Annotated[float, Field(gt=0, lt=1)] = 0.95
    """Smallest acceptable share of rows with the same predicted class. Below 1, because no
    finite sample shows an agreement of exactly 1."""
    max_latency_ratio: Annotated[float, Field(gt=0)] = 1.5
    """Largest acceptable shadow p50 latency over production p50 latency."""
    max_error_rate: Annotated[float, Field(gt=0, le=1)] = 0.01
    """Largest acceptable share of mirrored requests the shadow failed while production
    answered. Above 0, because no finite sample shows a rate of exactly 0."""
    confidence: Annotated[float, Field(ge=0.5, lt=1)] = 0.95
    """Confidence level of the two-sided intervals the checks use."""


class Estimate(BaseModel):
    """A measured figure with its confidence interval and the sample size behind it."""

    value: float
    low: float
    high: float
    n: int


class ShadowCheck(BaseModel):
    """One policy threshold, and whether the data show it is met."""

    name: Literal["agreement", "latency_ratio", "error_rate"]
    outcome: Literal["pass", "fail", "inconclusive"]
    observed: Estimate | None
    threshold: float
    message: str


class ShadowComparison(BaseModel):
    """The shadow measured against production on the logged traffic, and the verdict."""

    computed_at: dt.datetime
    policy: ShadowPolicy
    verdict: Verdict
    reasons: list[str]
    checks: list[ShadowCheck]
    task: Literal["classification", "regression"] | None
    production_versions: list[str]
    shadow_versions: list[str]
    requests: int
    """Requests in the log."""
    mirrored: int
    """Requests in the mirror sample."""
    dropped: int
    """Mirrored requests never sent to the shadow (queue full, shutdown)."""
    shadow_calls: int
    """Mirrored requests the shadow was called for."""
    compared_requests: int
    """Requests both sides answered with 2xx."""
    compared_rows: int
    """Prediction rows of the compared requests with a prediction on both sides."""
    agreement: Estimate | None
    score_kind: ScoreKind | None
    mean_abs_score_delta: Estimate | None
    ks_statistic: float | None
    ks_pvalue: float | None
    production_latency_p50_ms: float | None
    shadow_latency_p50_ms: float | None
    production_latency_p95_ms: float | None
    shadow_latency_p95_ms: float | None
    latency_ratio_p50: Estimate | None
    latency_ratio_p95: float | None
    production_error_rate: Estimate | None
    shadow_error_rate: Estimate | None


def wilson_interval(successes: int, n: int, *, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion; sound near 0 and 1, unlike the normal one."""
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def compare_shadow(
    log: pd.DataFrame,
    *,
    policy: ShadowPolicy | None = None,
    task: Literal["classification", "regression"] | None = None,
) -> ShadowComparison:
    """Compare the shadow with production on a `read_prediction_log` frame.

    `task` is inferred when not given: classification when production returns
    probabilities or non-float predictions, regression when it returns floats only.
    """
    missing = [column for column in COLUMNS if column not in log.columns]
    if missing:
        raise ValueError(f"expected a prediction log frame (read_prediction_log); missing columns {missing}")
    return compare_evidence(ShadowEvidence.from_frame(log), policy=policy, task=task)


@dataclasses.dataclass
class ShadowEvidence:
    """What a shadow comparison needs of a prediction log: counts, two latencies per compared
    request and a few numbers per compared row, about 60 bytes per request where the log's
    entries take hundreds to thousands. Built from a frame (`from_frame`) or entry by entry
    (`add`), so a process that follows a log need not keep the entries."""

    requests: int = 0
    mirrored: int = 0
    dropped: int = 0
    """Mirrored requests never sent to the shadow (queue full, shutdown)."""
    shadow_calls: int = 0
    production_failures: int = 0
    """Requests production did not answer with 2xx."""
    judged: int = 0
    """Requests production answered with 2xx and the shadow was called for."""
    shadow_failures: int = 0
    """Judged requests the shadow did not answer with 2xx."""
    answered_rows: int = 0
    """Rows with a production prediction; with the two below, what tells the task."""
    probability_rows: int = 0
    non_float_rows: int = 0
    production_versions: set[str] = dataclasses.field(default_factory=set)
    shadow_versions: set[str] = dataclasses.field(default_factory=set)
    production_latency: array = dataclasses.field(default_factory=lambda: array("d"))
    """Per compared request (both sides 2xx), in ms; so is `shadow_latency`."""
    shadow_latency: array = dataclasses.field(default_factory=lambda: array("d"))
    agree: array = dataclasses.field(default_factory=lambda: array("b"))
    """Per compared row (both sides predicted): 1 when the predictions are equal."""
    score_kind: array = dataclasses.field(default_factory=lambda: array("b"))
    """Per compared row, the index in `SCORE_KINDS` of its probability scores' kind."""
    production_score: array = dataclasses.field(default_factory=lambda: array("d"))
    """Per compared row, the probability scores of `_probability_scores` (NaN without)."""
    shadow_score: array = dataclasses.field(default_factory=lambda: array("d"))
    score_delta: array = dataclasses.field(default_factory=lambda: array("d"))
    production_value: array = dataclasses.field(default_factory=lambda: array("d"))
    """Per compared row, the prediction as a number, a regression's score (NaN when it is not one)."""
    shadow_value: array = dataclasses.field(default_factory=lambda: array("d"))

    def add(self, request: Mapping[str, Any], shadow: Mapping[str, Any] | None = None) -> None:
        """Count a ``request`` log entry, with its ``shadow`` entry when there is one."""
        production = request.get("production") or {}
        side = shadow if shadow is not None else request
        answer = side.get("shadow") or {}
        mirrored = bool(request.get("mirrored"))
        production_ok = _is_2xx_status(production.get("status"))
        called = answer.get("latency_ms") is not None
        shadow_ok = called and _is_2xx_status(answer.get("status"))
        self.requests += 1
        self.mirrored += mirrored
        self.shadow_calls += called
        self.dropped += mirrored and not called and side.get("shadow_reason") != "pending"
        self.production_failures += not production_ok
        self.judged += production_ok and called
        self.shadow_failures += production_ok and called and not shadow_ok
        for versions, found in ((self.production_versions, production), (self.shadow_versions, answer)):
            if found.get("version") is not None:
                versions.add(str(found["version"]))
        predictions = production.get("predictions")
        predictions = predictions if isinstance(predictions, list) else []
        probabilities = production.get("probabilities")
        for row, prediction in enumerate(predictions):
            if prediction is not None:
                self._answered(prediction, _nth(probabilities, row))
        if production_ok and shadow_ok:
            self.production_latency.append(_number(production.get("latency_ms")))
            self.shadow_latency.append(_number(answer.get("latency_ms")))
            shadow_predictions, shadow_probabilities = answer.get("predictions"), answer.get("probabilities")
            for row, prediction in enumerate(predictions):
                other = _nth(shadow_predictions, row)
                if prediction is not None and other is not None:
                    self._compared_row(prediction, other, _nth(probabilities, row), _nth(shadow_probabilities, row))

    @classmethod
    def from_frame(cls, log: pd.DataFrame) -> ShadowEvidence:
        """The evidence in a `read_prediction_log` frame."""
        evidence = cls()
        requests = log.drop_duplicates("request_id")
        production_ok = _is_2xx(requests["production_status"])
        called = requests["shadow_latency_ms"].notna()
        shadow_ok = _is_2xx(requests["shadow_status"]) & called
        mirrored = requests["mirrored"].astype(bool)
        evidence.requests = len(requests)
        evidence.mirrored = int(mirrored.sum())
        evidence.shadow_calls = int(called.sum())
        evidence.dropped = int((mirrored & ~called & (requests["shadow_reason"] != "pending")).sum())
        evidence.production_failures = int((~production_ok).sum())
        evidence.judged = int((production_ok & called).sum())
        evidence.shadow_failures = int((production_ok & called & ~shadow_ok).sum())
        evidence.production_versions = {str(v) for v in requests["production_version"].dropna()}
        evidence.shadow_versions = {str(v) for v in requests["shadow_version"].dropna()}
        answered = log[log["production_prediction"].notna()]
        for prediction, probabilities in zip(answered["production_prediction"], answered["production_probabilities"],
                                             strict=True):
            evidence._answered(prediction, probabilities)
        compared = requests[production_ok & shadow_ok]
        evidence.production_latency.extend(compared["production_latency_ms"].to_numpy(dtype=float))
        evidence.shadow_latency.extend(compared["shadow_latency_ms"].to_numpy(dtype=float))
        evidence._add_compared_rows(_compared_rows(log, compared["request_id"]))
        return evidence

    @classmethod
    def combine(cls, parts: Iterable[ShadowEvidence]) -> ShadowEvidence:
        """The evidence of several parts of a log together."""
        total = cls()
        for part in parts:
            for item in dataclasses.fields(cls):
                mine, theirs = getattr(total, item.name), getattr(part, item.name)
                if isinstance(mine, int):
                    setattr(total, item.name, mine + theirs)
                elif isinstance(mine, set):
                    mine |= theirs
                else:
                    mine.extend(theirs)
        return total

    def task(self) -> Literal["classification", "regression"] | None:
        """Classification when production gave probabilities or predictions other than floats."""
        if not self.answered_rows:
            return None
        if self.probability_rows or self.non_float_rows:
            return "classification"
        return "regression"

    def scores(self, task: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per compared row: production's score, the shadow's, their distance and the index of
        the score kind in `SCORE_KINDS`; the predictions themselves for a regression."""
        import numpy as np

        if task == "regression":
            production, shadow = np.frombuffer(self.production_value), np.frombuffer(self.shadow_value)
            kinds = np.full(len(production), SCORE_KINDS.index("prediction"), dtype=np.int8)
            return production, shadow, np.abs(shadow - production), kinds
        return (np.frombuffer(self.production_score), np.frombuffer(self.shadow_score),
                np.frombuffer(self.score_delta), np.frombuffer(self.score_kind, dtype=np.int8))

    def _add_compared_rows(self, rows: pd.DataFrame) -> None:
        for values in zip(rows["production_prediction"], rows["shadow_prediction"], rows["production_probabilities"],
                          rows["shadow_probabilities"], strict=True):
            self._compared_row(*values)

    def _answered(self, prediction: Any, probabilities: Any) -> None:
        self.answered_rows += 1
        self.probability_rows += probabilities is not None
        self.non_float_rows += not isinstance(prediction, float)

    def _compared_row(self, production: Any, shadow: Any, production_probabilities: Any,
                      shadow_probabilities: Any) -> None:
        kind, production_score, shadow_score, delta = _probability_scores(
            production_probabilities, shadow_probabilities)
        self.agree.append(production == shadow)
        self.score_kind.append(SCORE_KINDS.index(kind))
        self.production_score.append(production_score)
        self.shadow_score.append(shadow_score)
        self.score_delta.append(delta)
        self.production_value.append(_number(production))
        self.shadow_value.append(_number(shadow))


SCORE_KINDS: tuple[ScoreKind | None, ...] = (None, "positive_class_probability", "total_variation", "prediction")
"""The score kinds `ShadowEvidence.score_kind` numbers."""


def compare_evidence(
    evidence: ShadowEvidence,
    *,
    policy: ShadowPolicy | None = None,
    task: Literal["classification", "regression"] | None = None,
) -> ShadowComparison:
    """The comparison and verdict on what `evidence` holds (see `compare_shadow`)."""
    import numpy as np
    from scipy.stats import ks_2samp

    policy = policy or ShadowPolicy()
    task = task or evidence.task()
    production_error_rate = _proportion(evidence.production_failures, evidence.requests, policy)
    shadow_error_rate = _proportion(evidence.shadow_failures, evidence.judged, policy)

    agree = np.frombuffer(evidence.agree, dtype=np.int8)
    agreement = None
    if task == "classification" and len(agree):
        agreement = _proportion(int(agree.sum()), len(agree), policy)

    production_score, shadow_score, deltas, kinds = evidence.scores(task)
    scored = ~np.isnan(production_score) & ~np.isnan(shadow_score)
    score_kind, mean_abs_delta, ks_statistic, ks_pvalue = None, None, None, None
    if scored.sum() >= 2:
        score_kind = SCORE_KINDS[int(kinds[scored][0])]
        mean_abs_delta = _mean_estimate(deltas[scored], policy)
        ks = ks_2samp(production_score[scored], shadow_score[scored])
        ks_statistic, ks_pvalue = float(ks.statistic), float(ks.pvalue)

    production_latency = np.frombuffer(evidence.production_latency)
    shadow_latency = np.frombuffer(evidence.shadow_latency)
    latency_ratio = _median_ratio(shadow_latency, production_latency, policy)

    compared = len(production_latency)
    checks = _checks(policy, task, agreement, latency_ratio, shadow_error_rate)
    verdict, reasons = _verdict(policy, checks, compared)
    return ShadowComparison(
        computed_at=dt.datetime.now(dt.UTC),
        policy=policy,
        verdict=verdict,
        reasons=reasons,
        checks=checks,
        task=task,
        production_versions=sorted(evidence.production_versions),
        shadow_versions=sorted(evidence.shadow_versions),
        requests=evidence.requests,
        mirrored=evidence.mirrored,
        dropped=evidence.dropped,
        shadow_calls=evidence.shadow_calls,
        compared_requests=compared,
        compared_rows=len(agree),
        agreement=agreement,
        score_kind=score_kind,
        mean_abs_score_delta=mean_abs_delta,
        ks_statistic=ks_statistic,
        ks_pvalue=ks_pvalue,
        production_latency_p50_ms=_quantile(production_latency, 0.5),
        shadow_latency_p50_ms=_quantile(shadow_latency, 0.5),
        production_latency_p95_ms=_quantile(production_latency, 0.95),
        shadow_latency_p95_ms=_quantile(shadow_latency, 0.95),
        latency_ratio_p50=latency_ratio,
        latency_ratio_p95=_ratio(_quantile(shadow_latency, 0.95), _quantile(production_latency, 0.95)),
        production_error_rate=production_error_rate,
        shadow_error_rate=shadow_error_rate,
    )


class ShadowEvidenceReader:
    """Follows a prediction log and keeps only the `ShadowEvidence` of each segment.

    For the gateway's comparison worker, which compares the same growing log again and
    again. A request is reduced to its evidence once both of its entries are read; until
    then it waits whole, without its records (a mirror in flight, or a shadow entry read
    before its request's). When retention deletes a segment, its evidence goes too, so the
    comparison covers what the log holds, as `read_prediction_log` would, and memory follows
    the log's size on disk, a small fraction of it, instead of growing for as long as the
    gateway runs. A request entry written twice (a write retried after a full disk) counts once.
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        self.tail = PredictionLogTail(log_dir)
        self._segments: dict[Path, ShadowEvidence] = {}
        self._ids: dict[Path, list[str]] = {}
        """Per segment, the ids of the requests whose request entry it holds."""
        self._seen: set[str] = set()
        self._pending: dict[str, tuple[Path, dict[str, Any]]] = {}
        """Mirrored requests whose shadow entry is not read yet, with their segment."""
        self._orphans: dict[str, tuple[Path, dict[str, Any]]] = {}
        """Shadow entries read before their request's, with their segment."""

    def refresh(self) -> ShadowEvidenceReader:
        """Read what was appended since the last refresh, and forget deleted segments."""
        for path in self.tail.vanished():
            self._segments.pop(path, None)
            self._seen.difference_update(self._ids.pop(path, ()))
            for waiting in (self._pending, self._orphans):
                for request_id in [key for key, (where, _) in waiting.items() if where == path]:
                    del waiting[request_id]
        for path, entry in self.tail.entries():
            if entry["type"] == "request":
                self._request(path, entry)
            elif entry["type"] == "shadow":
                self._shadow(path, entry)
        return self

    def evidence(self) -> ShadowEvidence:
        """The evidence of everything read, pending mirrors counted as pending."""
        waiting = ShadowEvidence()
        for _, request in self._pending.values():
            waiting.add(request)
        return ShadowEvidence.combine([*self._segments.values(), waiting])

    def _request(self, path: Path, entry: dict[str, Any]) -> None:
        request_id = entry["request_id"]
        if request_id in self._seen:
            return
        self._seen.add(request_id)
        self._ids.setdefault(path, []).append(request_id)
        entry["records"] = None
        orphan = self._orphans.pop(request_id, None)
        if orphan is not None:
            self._segment(path).add(entry, orphan[1])
        elif entry.get("shadow_reason") == "pending":
            self._pending[request_id] = (path, entry)
        else:
            self._segment(path).add(entry)

    def _shadow(self, path: Path, entry: dict[str, Any]) -> None:
        request_id = entry["request_id"]
        waiting = self._pending.pop(request_id, None)
        if waiting is not None:
            self._segment(waiting[0]).add(waiting[1], entry)
        elif request_id not in self._seen:
            self._orphans[request_id] = (path, entry)

    def _segment(self, path: Path) -> ShadowEvidence:
        evidence = self._segments.get(path)
        if evidence is None:
            evidence = self._segments[path] = ShadowEvidence()
        return evidence


_followed: dict[Path, ShadowEvidenceReader] = {}
"""The logs `compare_followed_log` follows in this process, by directory."""


def compare_followed_log(log_dir: str | os.PathLike[str], *, policy: ShadowPolicy | None = None) -> ShadowComparison:
    """`compare_shadow` over the prediction log in `log_dir`, parsing only what was appended
    since the last call for the same directory in this process.

    The readers stay in this module for the life of the process: this is meant for a
    long-lived worker that compares the same growing log again and again (the gateway's)."""
    path = Path(log_dir).resolve()
    reader = _followed.get(path)
    if reader is None:
        reader = _followed[path] = ShadowEvidenceReader(path)
    return compare_evidence(reader.refresh().evidence(), policy=policy)


def _checks(
    policy: ShadowPolicy,
    task: str | None,
    agreement: Estimate | None,
    latency_ratio: Estimate | None,
    shadow_error_rate: Estimate | None,
) -> list[ShadowCheck]:
    checks = []
    if task != "regression":
        checks.append(
            _check("agreement", agreement, policy.min_agreement, higher_is_better=True, fmt="{:.3f}")
        )
    checks.append(
        _check("latency_ratio", latency_ratio, policy.max_latency_ratio, higher_is_better=False, fmt="{:.2f}")
    )
    checks.append(
        _check("error_rate", shadow_error_rate, policy.max_error_rate, higher_is_better=False, fmt="{:.2%}")
    )
    return checks


_CHECK_LABELS = {
    "agreement": ("agreement", "minimum"),
    "latency_ratio": ("p50 latency ratio (shadow/production)", "maximum"),
    "error_rate": ("shadow error rate", "maximum"),
}


def _check(
    name: Literal["agreement", "latency_ratio", "error_rate"],
    observed: Estimate | None,
    threshold: float,
    *,
    higher_is_better: bool,
    fmt: str,
) -> ShadowCheck:
    label, bound = _CHECK_LABELS[name]
    if observed is None:
        return ShadowCheck(
            name=name, outcome="inconclusive", observed=None, threshold=threshold,
            message=f"{label}: no data yet ({bound} {fmt.format(threshold)})",
        )
    if higher_is_better:
        good, bad = observed.low >= threshold, observed.high < threshold
    else:
        good, bad = observed.high <= threshold, observed.low > threshold
    outcome = "fail" if bad else "pass" if good else "inconclusive"
    verb = {"pass": "meets", "fail": "breaches", "inconclusive": "cannot yet be told from"}[outcome]
    message = (
        f"{label} {fmt.format(observed.value)} "
        f"[{fmt.format(observed.low)}, {fmt.format(observed.high)}] over {observed.n} "
        f"{verb} the {bound} {fmt.format(threshold)}"
    )
    return ShadowCheck(name=name, outcome=outcome, observed=observed, threshold=threshold, message=message)


def _verdict(policy: ShadowPolicy, checks: list[ShadowCheck], compared: int) -> tuple[Verdict, list[str]]:
    failed = [check.message for check in checks if check.outcome == "fail"]
    if failed:
        return "reject", failed
    reasons = []
    if compared < policy.min_requests:
        reasons.append(f"{compared} of the {policy.min_requests} compared requests the policy needs")
    reasons += [check.message for check in checks if check.outcome == "inconclusive"]
    if reasons:
        return "hold", reasons
    return "promote", [check.message for check in checks]


def _compared_rows(log: pd.DataFrame, compared_ids: pd.Series) -> pd.DataFrame:
    """The rows of the compared requests where both sides predicted."""
    rows = log[log["request_id"].isin(compared_ids)]
    return rows[rows["production_prediction"].notna() & rows["shadow_prediction"].notna()]


def _paired_rows(log: pd.DataFrame, compared_ids: pd.Series, task: str | None) -> pd.DataFrame:
    """Rows of the compared requests with both predictions: time, agreement and scores, as
    the comparison counts them."""
    import numpy as np
    import pandas as pd

    rows = _compared_rows(log, compared_ids)
    evidence = ShadowEvidence()
    evidence._add_compared_rows(rows)
    production, shadow, delta, kinds = evidence.scores(task)
    return pd.DataFrame(
        {
            "ts": rows["ts"].to_numpy(),
            "agree": np.frombuffer(evidence.agree, dtype=np.int8).astype(bool),
            "score_kind": [SCORE_KINDS[kind] for kind in kinds],
            "production_score": production,
            "shadow_score": shadow,
            "abs_delta": delta,
        }
    )


def _probability_scores(production: Any, shadow: Any) -> tuple[ScoreKind | None, float, float, float]:
    """(kind, production score, shadow score, |delta|) of one row's probability vectors.

    Binary: the probability of the positive class, the second of the sorted class labels (as
    in scikit-learn). Multiclass: both sides' probability of production's most likely class
    as scores, and the total variation distance between the vectors as the delta.
    """
    if not isinstance(production, dict) or not isinstance(shadow, dict):
        return None, math.nan, math.nan, math.nan
    classes = sorted(set(production) | set(shadow))
    if len(classes) == 2:
        positive = classes[1]
        p, s = float(production.get(positive, 0.0)), float(shadow.get(positive, 0.0))
        return "positive_class_probability", p, s, abs(s - p)
    top = max(production, key=production.__getitem__)
    distance = 0.5 * sum(abs(float(production.get(c, 0.0)) - float(shadow.get(c, 0.0))) for c in classes)
    return "total_variation", float(production[top]), float(shadow.get(top, 0.0)), distance


def _is_2xx(status: pd.Series) -> pd.Series:
    return ((status >= 200) & (status < 300)).fillna(False).astype(bool)


def _is_2xx_status(status: Any) -> bool:
    return isinstance(status, int) and 200 <= status < 300


def _number(value: Any) -> float:
    """A JSON value as a float, NaN when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _nth(values: Any, index: int) -> Any:
    return values[index] if isinstance(values, list) and index < len(values) else None


def _proportion(successes: int, n: int, policy: ShadowPolicy) -> Estimate | None:
    if n == 0:
        return None
    low, high = wilson_interval(successes, n, confidence=policy.confidence)
    return Estimate(value=successes / n, low=low, high=high, n=n)


def _mean_estimate(values: np.ndarray, policy: ShadowPolicy) -> Estimate:
    mean = float(values.mean())
    half = _z(policy.confidence) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return Estimate(value=mean, low=max(0.0, mean - half), high=mean + half, n=len(values))


def _median_ratio(numerator: np.ndarray, denominator: np.ndarray, policy: ShadowPolicy) -> Estimate | None:
    """Ratio of medians, with bounds from each median's order-statistic interval taken at
    Bonferroni-adjusted confidence, so the ratio's interval covers at `policy.confidence`."""
    import numpy as np

    if len(numerator) == 0 or len(denominator) == 0:
        return None
    side_confidence = 1 - (1 - policy.confidence) / 2
    top_low, top_high = _median_interval(numerator, side_confidence)
    bottom_low, bottom_high = _median_interval(denominator, side_confidence)
    value = _ratio(float(np.median(numerator)), float(np.median(denominator)))
    if value is None:
        return None
    low = top_low / bottom_high if bottom_high > 0 else math.inf
    high = top_high / bottom_low if bottom_low > 0 else math.inf
    return Estimate(value=value, low=low, high=high, n=len(numerator))


def _median_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Distribution-free interval of a median: the order statistics the binomial(n, 1/2)
    quantiles point at."""
    import numpy as np
    from scipy.stats import binom

    ordered = np.sort(values)
    n = len(ordered)

    rank = int(binom.ppf((1 - confidence) / 2, n, 0.5))
    if rank < 1:
        return float(ordered[0]), float(ordered[-1])
    return float(ordered[rank - 1]), float(ordered[n - rank])


def _quantile(values: np.ndarray, q: float) -> float | None:
    import numpy as np

    return float(np.quantile(values, q)) if len(values) else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _z(confidence: float) -> float:
    return statistics.NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def render_shadow_report(
    comparison: ShadowComparison, log: pd.DataFrame, path: str | os.PathLike[str]
) -> Path:
    """Write a self-contained HTML page (plots inlined as PNG) about the comparison.

    The plots: agreement over time (mean absolute delta for regression), the score delta
    histogram, production vs shadow scores, and both sides' latency distributions.
    """
    import numpy as np
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    requests = log.drop_duplicates("request_id")
    compared = requests[_is_2xx(requests["production_status"]) & _is_2xx(requests["shadow_status"])]
    pairs = _paired_rows(log, compared["request_id"], comparison.task)

    def figure() -> tuple[Figure, Any]:
        fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="tight")
        FigureCanvasAgg(fig)
        return fig, fig.add_subplot()

    images = []
    fig, ax = figure()
    _plot_over_time(ax, pairs, comparison)
    images.append(("Agreement over time" if comparison.task != "regression" else "Delta over time", fig))

    fig, ax = figure()
    if len(pairs):
        signed = (pairs["shadow_score"] - pairs["production_score"]).dropna()
        if comparison.score_kind == "total_variation":
            signed = pairs["abs_delta"].dropna()
        ax.hist(signed, bins=40, color="#4c72b0")
    ax.set_xlabel("total variation distance" if comparison.score_kind == "total_variation" else "shadow score - production score")
    ax.set_ylabel("rows")
    images.append(("Score delta", fig))

    fig, ax = figure()
    if len(pairs):
        ax.scatter(pairs["production_score"], pairs["shadow_score"], s=6, alpha=0.4, color="#4c72b0")
        low = float(np.nanmin(pairs[["production_score", "shadow_score"]].to_numpy()))
        high = float(np.nanmax(pairs[["production_score", "shadow_score"]].to_numpy()))
        ax.plot([low, high], [low, high], color="#999999", linewidth=1)
    ax.set_xlabel("production score")
    ax.set_ylabel("shadow score")
    images.append(("Production vs shadow score", fig))

    fig, ax = figure()
    latencies = [
        ("production", compared["production_latency_ms"].dropna(), "#4c72b0"),
        ("shadow", compared["shadow_latency_ms"].dropna(), "#dd8452"),
    ]
    if len(compared):
        everything = pd.concat([values for _, values, _ in latencies])
        bins = np.geomspace(max(float(everything.min()), 1e-3), max(float(everything.max()), 2e-3), 40)
        for name, values, colour in latencies:
            ax.hist(values, bins=bins, alpha=0.6, label=name, color=colour)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend()
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    images.append(("Latency", fig))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(_report_html(comparison, [(title, _png_base64(fig)) for title, fig in images]))
    os.replace(temporary, path)
    return path


def _plot_over_time(ax: Any, pairs: pd.DataFrame, comparison: ShadowComparison) -> None:
    import numpy as np
    import pandas as pd

    if pairs.empty:
        ax.set_title("no compared rows yet")
        return
    times = pd.to_datetime(pairs["ts"], utc=True)
    bins = pd.cut(times.astype("int64"), bins=min(20, max(1, len(pairs) // 20)))
    grouped = pairs.assign(bin=bins.to_numpy()).groupby("bin", observed=True)
    centres = grouped["ts"].apply(lambda t: pd.to_datetime(t, utc=True).mean())
    if comparison.task == "regression":
        ax.plot(centres, grouped["abs_delta"].mean(), marker="o", color="#4c72b0")
        ax.set_ylabel("mean |delta|")
    else:
        agree = grouped["agree"].agg(["sum", "count"])
        values = agree["sum"] / agree["count"]
        intervals = [
            wilson_interval(int(s), int(c), confidence=comparison.policy.confidence)
            for s, c in zip(agree["sum"], agree["count"], strict=True)
        ]
        errors = np.array([[v - lo for (lo, _), v in zip(intervals, values, strict=True)],
                           [hi - v for (_, hi), v in zip(intervals, values, strict=True)]])
        ax.errorbar(centres, values, yerr=errors, marker="o", capsize=2, color="#4c72b0")
        ax.axhline(comparison.policy.min_agreement, color="#c44e52", linestyle="--", label="min agreement")
        ax.set_ylabel("agreement")
        ax.legend()
    ax.tick_params(axis="x", labelrotation=30)


def _png_base64(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def _report_html(comparison: ShadowComparison, images: list[tuple[str, str]]) -> str:
    e = html.escape

    def figure(value: float | None, fmt: str = "{:.3f}") -> str:
        return "n/a" if value is None else fmt.format(value)

    def estimate(value: Estimate | None, fmt: str = "{:.3f}") -> str:
        if value is None:
            return "n/a"
        return f"{fmt.format(value.value)} [{fmt.format(value.low)}, {fmt.format(value.high)}] (n={value.n})"

    rows = [
        ("Production versions", ", ".join(comparison.production_versions) or "n/a"),
        ("Shadow versions", ", ".join(comparison.shadow_versions) or "n/a"),
        ("Task", comparison.task or "n/a"),
        ("Requests logged", str(comparison.requests)),
        ("Mirrored / dropped / shadow calls", f"{comparison.mirrored} / {comparison.dropped} / {comparison.shadow_calls}"),
        ("Compared requests / rows", f"{comparison.compared_requests} / {comparison.compared_rows}"),
        ("Agreement", estimate(comparison.agreement)),
        (f"Mean |score delta| ({comparison.score_kind or 'n/a'})", estimate(comparison.mean_abs_score_delta, "{:.4f}")),
        ("KS statistic / p-value", f"{figure(comparison.ks_statistic)} / {figure(comparison.ks_pvalue, '{:.3g}')}"),
        ("Latency p50 production / shadow (ms)",
         f"{figure(comparison.production_latency_p50_ms, '{:.2f}')} / {figure(comparison.shadow_latency_p50_ms, '{:.2f}')}"),
        ("Latency p95 production / shadow (ms)",
         f"{figure(comparison.production_latency_p95_ms, '{:.2f}')} / {figure(comparison.shadow_latency_p95_ms, '{:.2f}')}"),
        ("Latency ratio p50 / p95", f"{estimate(comparison.latency_ratio_p50, '{:.2f}')} / {figure(comparison.latency_ratio_p95, '{:.2f}')}"),
        ("Production error rate", estimate(comparison.production_error_rate, "{:.2%}")),
        ("Shadow error rate", estimate(comparison.shadow_error_rate, "{:.2%}")),
    ]
    colours = {"promote": "#2e7d32", "hold": "#f9a825", "reject": "#c62828"}
    policy = comparison.policy
    table = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    checks = "\n".join(
        f"<tr><td>{e(c.name)}</td><td class='{c.outcome}'>{e(c.outcome)}</td><td>{e(c.message)}</td></tr>"
        for c in comparison.checks
    )
    reasons = "\n".join(f"<li>{e(r)}</li>" for r in comparison.reasons)
    plots = "\n".join(
        f"<figure><img alt='{e(title)}' src='data:image/png;base64,{data}'><figcaption>{e(title)}</figcaption></figure>"
        for title, data in images
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Shadow report: {e(comparison.verdict)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }}
.verdict {{ display: inline-block; padding: .2em .8em; border-radius: .3em; color: white;
           background: {colours[comparison.verdict]}; text-transform: uppercase; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ text-align: left; padding: .25em .8em; border-bottom: 1px solid #ddd; }}
td.pass {{ color: #2e7d32; }} td.fail {{ color: #c62828; }} td.inconclusive {{ color: #b28704; }}
.plots {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(30em, 1fr)); gap: 1em; }}
img {{ width: 100%; }}
</style></head>
<body>
<h1>Shadow comparison <span class="verdict">{e(comparison.verdict)}</span></h1>
<p>Computed {e(comparison.computed_at.isoformat(timespec="seconds"))}. Policy: at least
{policy.min_requests} compared requests, agreement &ge; {policy.min_agreement:.3f},
p50 latency ratio &le; {policy.max_latency_ratio:.2f}, shadow error rate &le;
{policy.max_error_rate:.2%}, intervals at {policy.confidence:.0%}.</p>
<ul>{reasons}</ul>
<h2>Checks</h2>
<table><tr><th>check</th><th>outcome</th><th>detail</th></tr>{checks}</table>
<h2>Figures</h2>
<table>{table}</table>
<h2>Plots</h2>
<div class="plots">{plots}</div>
</body></html>
"""
