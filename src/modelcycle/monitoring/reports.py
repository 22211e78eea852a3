"""The monitoring report: a self-contained HTML page of a `MonitoringResult`.

The verdict and its reasons, the warnings, the live metrics against the test split and the
goal, then one plot per column (and one of the model's scores): the reference's
distribution, rebuilt from its profile, over the current one. A numeric column is drawn as
two densities on 40 common bins spanning both distributions' 1st to 99th percentiles; a
categorical column as the share of each of its most frequent categories. Plots are PNGs
inlined as base64, so the page is one file to attach or archive.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelcycle.monitoring.drift import ColumnDrift
from modelcycle.monitoring.monitors import MonitoringResult
from modelcycle.monitoring.profiles import ColumnProfile, ReferenceProfile

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["render_monitoring_report"]

TOP_CATEGORIES = 12
BINS = 40
REFERENCE_COLOUR, CURRENT_COLOUR = "#4c72b0", "#dd8452"


def render_monitoring_report(
    result: MonitoringResult,
    profile: ReferenceProfile,
    current: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    scores: pd.Series | None = None,
) -> Path:
    """Write the report of `result` (computed on `current`, and `scores`) to `path`, atomically."""
    plots = []
    drifts = {c.column: c for c in result.drift.columns}
    for reference in profile.columns:
        if reference.name in current.columns:
            plots.append((reference.name, drifts.get(reference.name),
                          _plot(reference, current[reference.name], reference.name)))
    if scores is not None and result.drift.prediction is not None:
        plots.append((f"model score ({profile.score_kind.replace('_', ' ')})", result.drift.prediction,
                      _plot(profile.scores, scores, "score")))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(_page(result, plots))
    os.replace(temporary, path)
    return path


def _plot(reference: ColumnProfile, values: pd.Series, label: str) -> str:
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 2.8), dpi=90, layout="tight")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if reference.kind == "numeric" and reference.values is None and reference.edges:
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        numbers = numbers[np.isfinite(numbers)]
        edges, cdf = np.asarray(reference.edges), np.asarray(reference.cdf)
        low, high = np.interp([0.01, 0.99], cdf, edges)
        if len(numbers):
            low, high = min(low, np.quantile(numbers, 0.01)), max(high, np.quantile(numbers, 0.99))
        bins = np.linspace(low, high, BINS + 1) if high > low else np.array([low - 0.5, low + 0.5])
        width = np.diff(bins)
        ax.stairs(np.diff(np.interp(bins, edges, cdf, left=0.0, right=1.0)) / width, bins, fill=True, alpha=0.5,
                  color=REFERENCE_COLOUR, label="reference")
        if len(numbers):
            ax.stairs(np.histogram(numbers, bins)[0] / len(numbers) / width, bins, color=CURRENT_COLOUR,
                      linewidth=2, label="current")
        ax.set_ylabel("density")
        ax.set_xlabel(label)
    else:
        known = reference.values if reference.kind == "numeric" else reference.categories
        known = known or {}
        present = values.dropna()
        if reference.kind == "numeric":
            present = pd.to_numeric(present, errors="coerce").dropna().map(lambda v: repr(float(v)))
        current = present.astype(str).value_counts(normalize=True)
        total = max(reference.present, 1)
        keys = sorted(set(known) | set(current.index), key=lambda k: -(known.get(k, 0) / total + current.get(k, 0)))
        keys = keys[:TOP_CATEGORIES]
        x = np.arange(len(keys))
        ax.bar(x - 0.2, [known.get(k, 0) / total for k in keys], 0.4, color=REFERENCE_COLOUR, label="reference")
        ax.bar(x + 0.2, [float(current.get(k, 0.0)) for k in keys], 0.4, color=CURRENT_COLOUR, label="current")
        ax.set_xticks(x, [k if len(k) <= 14 else k[:13] + "…" for k in keys], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("share")
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def _page(result: MonitoringResult, plots: list[tuple[str, ColumnDrift | None, str]]) -> str:
    e = html.escape
    colours = {"ok": "#2e7d32", "drift": "#f57c00", "performance": "#c62828"}
    drift = result.drift

    def row(c: ColumnDrift) -> str:
        effect = f"{c.effect} {c.effect_size:.4g} (min {c.min_effect:g})" if c.effect_size is not None else ""
        adjusted = f"{c.p_value_adjusted:.3g}" if c.p_value_adjusted is not None else ""
        return (f"<tr><td>{e(c.column)}</td><td>{e(c.kind)}</td><td>{e(c.stattest)}</td><td>{c.score:.4g}</td>"
                f"<td>{adjusted}</td><td>{c.threshold:g}</td><td>{e(effect)}</td>"
                f"<td class='{'bad' if c.drifted else 'good'}'>{'drifted' if c.drifted else 'no'}</td>"
                f"<td>{c.current_missing_rate:.1%} ({c.reference_missing_rate:.1%})</td><td>{e(c.reason)}</td></tr>")

    columns = list(drift.columns) + ([drift.prediction] if drift.prediction else [])
    table = "\n".join(row(c) for c in columns)
    performance = ""
    if result.performance:
        rows = "\n".join(
            f"<tr><td>{e(m.metric)}</td><td>{m.value:.4g} [{m.low:.4g}, {m.high:.4g}]</td><td>{m.n}</td>"
            f"<td>{'' if m.test_value is None else f'{m.test_value:.4g}'}</td><td>{e(m.op)} {m.threshold:g}</td>"
            f"<td class='{ {'pass': 'good', 'fail': 'bad'}.get(m.outcome, 'unsure') }'>{e(m.outcome)}</td></tr>"
            for m in result.performance.metrics)
        performance = (f"<h2>Live performance</h2><p>{result.performance.labelled_rows:,} labelled rows, intervals at "
                       f"{result.performance.confidence:.0%} (bootstrap).</p><table><tr><th>metric</th><th>live</th>"
                       f"<th>n</th><th>test split</th><th>goal</th><th>outcome</th></tr>{rows}</table>")
    quality = result.quality
    refused = (f"<p>{quality.refused_requests:,} of {quality.requests:,} requests refused with 422.</p>"
               if quality.requests is not None else "")
    figures = "\n".join(
        f"<figure><img alt='{e(name)}' src='data:image/png;base64,{data}'><figcaption>{e(name)}"
        f"{'' if c is None else ': ' + e(c.reason)}</figcaption></figure>" for name, c, data in plots)
    window = ""
    if result.window_start and result.window_end:
        window = (f" Window {e(result.window_start.isoformat(timespec='seconds'))} to "
                  f"{e(result.window_end.isoformat(timespec='seconds'))}.")
    model = f"{result.model or ''}{'@' + result.version if result.version else ''}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Monitoring {e(model)}: {e(result.verdict)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; color: #222; }}
.verdict {{ display: inline-block; padding: .2em .8em; border-radius: .3em; color: white;
           background: {colours[result.verdict]}; text-transform: uppercase; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 90%; }}
th, td {{ text-align: left; padding: .25em .6em; border-bottom: 1px solid #ddd; }}
td.good {{ color: #2e7d32; }} td.bad {{ color: #c62828; font-weight: bold; }} td.unsure {{ color: #b28704; }}
.plots {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(30em, 1fr)); gap: 1em; }}
img {{ width: 100%; }} figcaption {{ font-size: 85%; }}
</style></head>
<body>
<h1>Monitoring {e(model)} <span class="verdict">{e(result.verdict)}</span></h1>
<p>Computed {e(result.computed_at.isoformat(timespec="seconds"))} on {result.rows:,} rows of {e(result.source)}.{window}</p>
<ul>{''.join(f'<li>{e(r)}</li>' for r in result.reasons)}</ul>
{'<h2>Warnings</h2><ul>' + ''.join(f'<li>{e(w)}</li>' for w in result.warnings) + '</ul>' if result.warnings else ''}
{performance}
<h2>Drift</h2>
<p>{len(drift.drifted_columns)} of {len(drift.columns)} input columns drifted ({drift.drift_share:.0%}; the data set
drifts at {drift.drift_share_threshold:.0%}). p-values corrected by {e(drift.correction)}.</p>
<table><tr><th>column</th><th>type</th><th>test</th><th>score</th><th>corrected p</th><th>threshold</th>
<th>effect size</th><th>drift</th><th>missing (reference)</th><th>why</th></tr>{table}</table>
{refused}
<h2>Reference and current, per column</h2>
<div class="plots">{figures}</div>
</body></html>
"""
