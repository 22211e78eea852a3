"""The evaluation report: one self-contained HTML page a stakeholder can read.

It opens with the verdict (registered, or rejected and by which gate), then what won and
why, the gates with where each threshold came from, every candidate's cross-validated
score, and the plots: ROC and precision-recall curves, the confusion matrix at the chosen
threshold, calibration, the cost of each threshold, and the importance of each input column. Plots are PNGs inlined as base64, so the page can be
mailed, uploaded to the Kubeflow UI as an HTML artifact, or opened from disk.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from modelcycle.evaluation import Evaluation  # noqa: E402
from modelcycle.spec import ProjectSpec  # noqa: E402

_SET_COLORS = {"validation": "#8c8c8c", "test": "#1f77b4", "out_of_time": "#d62728"}
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
.verdict{padding:.8rem 1rem;border-radius:6px;font-size:1.1rem;margin:1rem 0}
.pass{background:#e6f4ea;border:1px solid #34a853}.fail{background:#fce8e6;border:1px solid #d93025}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.92rem}
th,td{border-bottom:1px solid #ddd;padding:.3rem .7rem;text-align:left} th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#188038;font-weight:600}.bad{color:#d93025;font-weight:600}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem} .grid img{width:100%}
"""


def _png(fig: plt.Figure) -> str:
    """The figure as an inline <img>, its axes' title as the alt text."""
    alt = html.escape(fig.axes[0].get_title() if fig.axes else "plot", quote=True)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p>none</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="{"num" if isinstance(r.get(c), (int, float)) else ""}">{_fmt(r.get(c, ""))}</td>' for c in columns
        ) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _curve(ev: Evaluation, key: str, x: str, y: str, title: str, diagonal: bool = False) -> str | None:
    fig, ax = plt.subplots(figsize=(5, 4))
    drawn = False
    for name, s in ev.sets.items():
        curve = getattr(s, key)
        if curve:
            label = f"{name} ({key.upper()} AUC {s.metrics.get('roc_auc' if key == 'roc' else 'pr_auc', float('nan')):.3f})" if key in ("roc", "pr") else name
            ax.plot(curve[x], curve[y], label=label, color=_SET_COLORS.get(name))
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    if diagonal:
        top = 1.0
        if key == "calibration":  # rare-event scores crowd near 0: zoom to where they are
            top = min(1.0, 1.1 * max(max(getattr(s, key)[x] + getattr(s, key)[y]) for s in ev.sets.values() if getattr(s, key)))
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
        ax.plot([0, top], [0, top], ls="--", color="#bbb", lw=1)
    ax.set_xlabel({"fpr": "false positive rate", "tpr": "true positive rate"}.get(x, x))
    ax.set_ylabel({"fpr": "false positive rate", "tpr": "true positive rate"}.get(y, y))
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def _confusion(ev: Evaluation, set_name: str) -> str | None:
    s = ev.sets.get(set_name)
    if s is None or s.confusion_matrix is None:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    matrix = s.confusion_matrix
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:,}", ha="center", va="center", color="#000" if v < max(map(max, matrix)) / 2 else "#fff")
    ax.set_xticks(range(len(s.labels)), s.labels)
    ax.set_yticks(range(len(s.labels)), s.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    threshold = f" at threshold {ev.threshold:.3f}" if ev.threshold is not None else ""
    ax.set_title(f"Confusion matrix, {set_name}{threshold}")
    return _png(fig)


def _bars(values: dict[str, float], title: str, xlabel: str) -> str | None:
    if not values:
        return None
    items = list(values.items())[:20][::-1]
    fig, ax = plt.subplots(figsize=(5, max(2.5, 0.3 * len(items) + 1)))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#1f77b4")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _png(fig)


def _threshold_costs(ev: Evaluation) -> str | None:
    if not ev.threshold_costs:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(ev.threshold_costs["threshold"], ev.threshold_costs["cost_per_row"], color="#444")
    ax.axvline(ev.threshold, color="#d62728", ls="--", label=f"chosen {ev.threshold:.3f}")
    ax.set_xlabel("decision threshold")
    ax.set_ylabel("expected cost per transaction")
    ax.set_title("Business cost by threshold (validation)")
    ax.legend(fontsize=8)
    return _png(fig)


def _residuals(ev: Evaluation) -> str | None:
    s = ev.sets.get("test")
    if s is None or not s.residuals:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(s.residuals["predicted"], s.residuals["residual"], s=6, alpha=0.5)
    ax.axhline(0, color="#888", lw=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual - predicted")
    ax.set_title("Residuals, test")
    return _png(fig)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()) or "defaults"


def render_report(
    spec: ProjectSpec,
    evaluation: Evaluation,
    *,
    data_version: str,
    splits: dict[str, int],
) -> str:
    """The report as an HTML string."""
    passed = evaluation.passed
    failed = [g for g in evaluation.gates if not g.passed]
    verdict = (
        "Passed every gate: <b>registered</b>. It becomes the champion if the model has none yet, "
        "the challenger otherwise."
        if passed
        else "<b>Rejected</b>: it is kept in the registry for the record, and can never become the champion."
        + "".join(f"<br>{html.escape(g.describe())}" for g in failed)
    )
    gates = [
        {"gate": g.name, "value": g.value if g.value is not None else "n/a", "needs": f"{g.op} {g.threshold:g}",
         "result": "PASS" if g.passed else "FAIL", "threshold from": g.source or "-"}
        for g in evaluation.gates
    ]
    gate_html = _table(gates).replace("<td class=\"\">PASS</td>", '<td class="ok">PASS</td>').replace(
        "<td class=\"\">FAIL</td>", '<td class="bad">FAIL</td>'
    )
    metric_names = sorted({m for s in evaluation.sets.values() for m in s.metrics})
    metric_rows = [{"metric": m, **{k: s.metrics.get(m, "") for k, s in evaluation.sets.items()}} for m in metric_names]
    plots = [
        _curve(evaluation, "roc", "fpr", "tpr", "ROC curve", diagonal=True),
        _curve(evaluation, "pr", "recall", "precision", "Precision-recall curve"),
        _confusion(evaluation, "test"),
        _curve(evaluation, "calibration", "predicted", "observed", "Calibration", diagonal=True),
        _threshold_costs(evaluation),
        _residuals(evaluation),
        _bars(evaluation.importance, "Permutation importance (test)", f"drop in {spec.goal.primary.metric}"),
    ]
    candidates = [
        {"algorithm": c.algorithm, f"CV {c.metric} mean": c.cv_mean, "± std": c.cv_std, "folds": c.cv_folds,
         "rows": c.cv_rows, "parameters": _params(c.params), "selected": "✓" if c.selected else ""}
        for c in evaluation.candidates
    ]
    refit, held_out, sets_note = "", "", ""
    if evaluation.fit_rows:
        refit = f" It was then refit on {evaluation.fit_rows:,} rows (training and validation)."
        held_out = ", predicted by the selected candidate fitted on the training rows only (the refit model has seen them)"
        sets_note = "<p>Validation: the selected candidate fitted on the training rows only. Test and out-of-time: the refit model.</p>"
    threshold = ""
    if evaluation.threshold is not None:
        threshold = (f"Decision threshold {evaluation.threshold:.3f}"
                     + (f": the lowest expected cost on the validation rows{held_out}." if evaluation.threshold_costs else "."))
    lat = evaluation.latency
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(spec.name)}: evaluation</title>
<style>{_CSS}</style></head><body>
<h1>{html.escape(spec.name)}: evaluation report</h1>
<p class="sub">{html.escape(spec.goal.description.strip())}</p>
<div class="verdict {'pass' if passed else 'fail'}">{verdict}</div>
<p>Selected model: <b>{html.escape(evaluation.algorithm)}</b> ({_params(evaluation.params)}).
{html.escape(evaluation.selection)}{refit}
Data version <code>{html.escape(data_version[:12])}</code>; rows:
{", ".join(f"{k} {v:,}" for k, v in splits.items())}.
{threshold}</p>
<h2>Gates</h2>{gate_html}
<h2>Candidates (cross-validation on the training rows)</h2>{_table(candidates)}
<h2>Metrics</h2>{sets_note}{_table(metric_rows)}
<h2>Plots</h2><div class="grid">{"".join(p for p in plots if p)}</div>
<h2>Serving budget</h2>{_table([
    {"measure": "p50 latency, one row (ms)", "value": lat.p50_ms},
    {"measure": "p95 latency, one row (ms)", "value": lat.p95_ms},
    {"measure": "batch throughput (rows/s)", "value": lat.batch_rows_per_s},
    {"measure": "artifact size (MB)", "value": evaluation.artifact_bytes / 1e6},
])}
</body></html>"""
