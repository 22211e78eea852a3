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

pandas, scipy and matplotlib are imported by the functions that use them: the gateway imports
this module for `ShadowPolicy` and should start in well under a second.

The verdict is meant to be recomputed as traffic flows. Looking repeatedly raises the chance
that a shadow sitting right at a threshold is rejected by noise at some look; a shadow
clearly inside the policy is not affected. The KS test and the score deltas are evidence for
a person to read, not part of the verdict: a retrained model is expected to move scores.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modelcycle.monitoring.predictions import COLUMNS, PredictionLogReader

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Estimate",
    "ShadowCheck",
    "ShadowComparison",
    "ShadowPolicy",
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
    from scipy.stats import ks_2samp

    missing = [column for column in COLUMNS if column not in log.columns]
    if missing:
        raise ValueError(f"expected a prediction log frame (read_prediction_log); missing columns {missing}")
    policy = policy or ShadowPolicy()
    requests = log.drop_duplicates("request_id")
    production_ok = _is_2xx(requests["production_status"])
    shadow_called = requests["shadow_latency_ms"].notna()
    shadow_ok = _is_2xx(requests["shadow_status"]) & shadow_called
    compared_ids = requests.loc[production_ok & shadow_ok, "request_id"]
    task = task or _infer_task(log)
    pairs = _paired_rows(log, compared_ids, task)

    production_error_rate = _proportion(int((~production_ok).sum()), len(requests), policy)
    judged = production_ok & shadow_called
    shadow_error_rate = _proportion(int((judged & ~shadow_ok).sum()), int(judged.sum()), policy)

    agreement = None
    if task == "classification" and len(pairs):
        agreement = _proportion(int(pairs["agree"].sum()), len(pairs), policy)

    score_kind, mean_abs_delta, ks_statistic, ks_pvalue = None, None, None, None
    scored = pairs.dropna(subset=["production_score", "shadow_score"])
    if len(scored) >= 2:
        score_kind = scored["score_kind"].iloc[0]
        deltas = scored["abs_delta"].to_numpy(dtype=float)
        mean_abs_delta = _mean_estimate(deltas, policy)
        ks = ks_2samp(scored["production_score"], scored["shadow_score"])
        ks_statistic, ks_pvalue = float(ks.statistic), float(ks.pvalue)

    compared = requests[requests["request_id"].isin(compared_ids)]
    production_latency = compared["production_latency_ms"].to_numpy(dtype=float)
    shadow_latency = compared["shadow_latency_ms"].to_numpy(dtype=float)
    latency_ratio = _median_ratio(shadow_latency, production_latency, policy)

    checks = _checks(policy, task, agreement, latency_ratio, shadow_error_rate)
    verdict, reasons = _verdict(policy, checks, len(compared))
    return ShadowComparison(
        computed_at=dt.datetime.now(dt.UTC),
        policy=policy,
        verdict=verdict,
        reasons=reasons,
        checks=checks,
        task=task,
        production_versions=_versions(requests["production_version"]),
        shadow_versions=_versions(requests["shadow_version"]),
        requests=len(requests),
        mirrored=int(requests["mirrored"].sum()),
        dropped=int((requests["mirrored"] & ~shadow_called & (requests["shadow_reason"] != "pending")).sum()),
        shadow_calls=int(shadow_called.sum()),
        compared_requests=len(compared),
        compared_rows=len(pairs),
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


_followed: dict[Path, PredictionLogReader] = {}
"""The logs `compare_followed_log` follows in this process, by directory."""


def compare_followed_log(log_dir: str | os.PathLike[str], *, policy: ShadowPolicy | None = None) -> ShadowComparison:
    """`compare_shadow` over the prediction log in `log_dir`, parsing only what was appended
    since the last call for the same directory in this process.

    The readers stay in this module for the life of the process: this is meant for a
    long-lived worker that compares the same growing log again and again (the gateway's)."""
    path = Path(log_dir).resolve()
    reader = _followed.get(path)
    if reader is None:
        reader = _followed[path] = PredictionLogReader(path, keep_records=False)
    return compare_shadow(reader.refresh().frame(), policy=policy)


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


def _paired_rows(log: pd.DataFrame, compared_ids: pd.Series, task: str | None) -> pd.DataFrame:
    """Rows of the compared requests with both predictions, their agreement and scores."""
    import pandas as pd

    rows = log[log["request_id"].isin(compared_ids)]
    rows = rows[rows["production_prediction"].notna() & rows["shadow_prediction"].notna()]
    columns = ["ts", "agree", "score_kind", "production_score", "shadow_score", "abs_delta"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    agree = [a == b for a, b in zip(rows["production_prediction"], rows["shadow_prediction"], strict=True)]
    if task == "regression":
        production = rows["production_prediction"].astype(float).to_numpy()
        shadow = rows["shadow_prediction"].astype(float).to_numpy()
        kinds = ["prediction"] * len(rows)
        abs_delta = np.abs(shadow - production)
    else:
        scored = [
            _probability_scores(p, s)
            for p, s in zip(rows["production_probabilities"], rows["shadow_probabilities"], strict=True)
        ]
        kinds = [kind for kind, _, _, _ in scored]
        production = np.array([p for _, p, _, _ in scored], dtype=float)
        shadow = np.array([s for _, _, s, _ in scored], dtype=float)
        abs_delta = np.array([d for _, _, _, d in scored], dtype=float)
    return pd.DataFrame(
        {
            "ts": rows["ts"].to_numpy(),
            "agree": agree,
            "score_kind": kinds,
            "production_score": production,
            "shadow_score": shadow,
            "abs_delta": abs_delta,
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


def _infer_task(log: pd.DataFrame) -> Literal["classification", "regression"] | None:
    answered = log[log["production_prediction"].notna()]
    if answered.empty:
        return None
    if answered["production_probabilities"].notna().any():
        return "classification"
    floats = all(isinstance(v, float) for v in answered["production_prediction"])
    return "regression" if floats else "classification"


def _is_2xx(status: pd.Series) -> pd.Series:
    return ((status >= 200) & (status < 300)).fillna(False).astype(bool)


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
    ordered = np.sort(values)
    n = len(ordered)
    from scipy.stats import binom

    rank = int(binom.ppf((1 - confidence) / 2, n, 0.5))
    if rank < 1:
        return float(ordered[0]), float(ordered[-1])
    return float(ordered[rank - 1]), float(ordered[n - rank])


def _quantile(values: np.ndarray, q: float) -> float | None:
    return float(np.quantile(values, q)) if len(values) else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _versions(column: pd.Series) -> list[str]:
    return sorted({str(v) for v in column.dropna()})


def _z(confidence: float) -> float:
    return statistics.NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def render_shadow_report(
    comparison: ShadowComparison, log: pd.DataFrame, path: str | os.PathLike[str]
) -> Path:
    """Write a self-contained HTML page (plots inlined as PNG) about the comparison.

    The plots: agreement over time (mean absolute delta for regression), the score delta
    histogram, production vs shadow scores, and both sides' latency distributions.
    """
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
