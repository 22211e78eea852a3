"""The fast path: a bento answers through ONNX Runtime when it can do so faithfully.

A one-record request spends almost all its time in pandas and in scikit-learn's per-call
checks, not in arithmetic. At start the bento converts its verified model to ONNX in
memory (`modelcycle.export.to_onnx`, the conversion `modelcycle export` writes and checks),
and runs both on `PROBE_RECORDS` records drawn from the model's data schema: every
category it knows, one it does not, nulls where a field may be null, numbers across and a
little beyond the observed range, dates as text. When the largest probability difference
(for a regression, relative to the predictions' spread) is within the export's tolerance,
requests are answered by the ONNX session; otherwise, or when a step cannot be converted,
the scikit-learn pipeline answers, as before, and the log says why.

Requests are checked before either path sees them, exactly as before (`RecordChecker`).
`/metrics` says which path serves: ``modelcycle_serving_path{path="onnx"|"sklearn"}`` is 1
for the one in use, and ``modelcycle_fast_path_parity_max_difference`` holds the check's
figure. ``MODELCYCLE_FAST_PATH=0`` turns the fast path off.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import pandas as pd

from modelcycle.embedded import EmbeddedModel
from modelcycle.export import PARITY_TOLERANCE, ExportRefused, check_parity, to_onnx
from modelcycle.training import TrainedModel
from modelcycle.validation import DataSchema

logger = logging.getLogger(__name__)

PROBE_RECORDS = 512
"""Records the start-up parity check runs: enough to visit every category of the example."""
PATHS = ("onnx", "sklearn")


class FastPath:
    """What answers a bento's checked records: the ONNX session, or None for scikit-learn."""

    def __init__(self, model: TrainedModel, embedded: EmbeddedModel | None, *, reason: str,
                 max_difference: float | None):
        self.model = model
        self.embedded = embedded
        self.reason = reason
        self.max_difference = max_difference
        self.classes = [str(c) for c in model.classes] if model.classes is not None else None

    @property
    def path(self) -> str:
        return "onnx" if self.embedded is not None else "sklearn"

    @classmethod
    def start(cls, model: TrainedModel, *, what: str) -> FastPath:
        """Convert and check `model`; the fast path when parity holds, the scikit-learn one otherwise."""
        if os.environ.get("MODELCYCLE_FAST_PATH", "1") == "0":
            return cls(model, None, reason="turned off by MODELCYCLE_FAST_PATH=0", max_difference=None)
        try:
            embedded = EmbeddedModel(to_onnx(model))
        except ExportRefused as exc:
            logger.warning("%s: serving through scikit-learn, the ONNX conversion was refused: %s", what, exc)
            return cls(model, None, reason=f"conversion refused: {exc}", max_difference=None)
        parity = check_parity(model, embedded, probe_records(model.schema, n=PROBE_RECORDS))
        if not parity.passed:
            logger.warning("%s: serving through scikit-learn, ONNX parity failed on %d probe records: largest "
                           "difference %.3g > %g", what, parity.rows, parity.max_difference, PARITY_TOLERANCE)
            return cls(model, None, reason=f"parity failed ({parity.max_difference:.3g})",
                       max_difference=parity.max_difference)
        logger.info("%s: serving through ONNX Runtime (parity on %d probe records: largest difference %.3g)",
                    what, parity.rows, parity.max_difference)
        return cls(model, embedded, reason="parity passed", max_difference=parity.max_difference)

    def predict(self, records: list[dict[str, Any]], frame: Any = None
                ) -> tuple[list[Any], list[dict[str, float]] | None]:
        """Predictions and per-class probabilities of checked records. `frame` builds the
        scikit-learn path's DataFrame when the fast path is off."""
        if self.embedded is not None:
            predictions, proba = self.embedded.predict_records(records)
        else:
            data = frame(records)
            if self.classes is None:
                return np.asarray(self.model.predict(data)).tolist(), None
            proba = self.model.predict_proba(data)
            predictions = self.model.decide(proba).tolist()
        if proba is None:
            return predictions, None
        return predictions, [dict(zip(self.classes, row)) for row in proba.tolist()]

    def publish(self) -> None:
        """Say on `/metrics` which path serves; call after BentoML set up its metrics."""
        from prometheus_client import Gauge

        path = Gauge("modelcycle_serving_path", "1 for the path that answers predictions: onnx (the fast "
                     "path) or sklearn.", ["path"], multiprocess_mode="max")
        for name in PATHS:
            path.labels(name).set(1 if name == self.path else 0)
        if self.max_difference is not None:
            Gauge("modelcycle_fast_path_parity_max_difference", "The largest difference between the ONNX and "
                  "scikit-learn outputs on the start-up probe records.", multiprocess_mode="max",
                  ).set(self.max_difference)


def probe_records(schema: DataSchema, *, n: int, seed: int = 0) -> pd.DataFrame:
    """`n` records a client could send, drawn from what the schema allows, as JSON would carry them."""
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {}
    for rule in schema.feature_rules():
        if rule.kind == "numeric":
            low = rule.observed_min if rule.observed_min is not None else (rule.min if rule.min is not None else 0.0)
            high = rule.observed_max if rule.observed_max is not None else (rule.max if rule.max is not None else 1.0)
            span = high - low
            values = rng.uniform(low - 0.1 * span, high + 0.1 * span, n)
            if rule.min is not None:
                values = np.maximum(values, rule.min)
            if rule.max is not None:
                values = np.minimum(values, rule.max)
            column: list = values.round(3).tolist()
        elif rule.kind == "categorical":
            known = rule.categories or rule.observed_categories or ["a"]
            pool = [*known, *([] if rule.categories else ["never-seen-in-training"])]
            column = [pool[i] for i in rng.integers(0, len(pool), n)]
        else:
            seconds = rng.integers(1_600_000_000, 1_900_000_000, n)
            column = [np.datetime64(int(s), "s").astype(str) for s in seconds]
        if rule.nullable:
            column = [None if missing else v for v, missing in zip(column, rng.random(n) < 0.05)]
        columns[rule.name] = column
    return pd.DataFrame(columns)
