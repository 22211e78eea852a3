"""Embedded prediction: an exported model run with onnxruntime and numpy, nothing else.

`modelcycle export --format onnx` writes one ONNX file per model version. The file holds
the whole prediction: imputation, missing-value indicators, scaling, one-hot encoding and
the estimator are ONNX operators, and what is cheaper to say in numpy than in ONNX (reading
raw values as their declared types, the spec's derived features, the parts of a date) is
described in the file's metadata as a short list of operations (`PRESTEP_KEY`, JSON) that
`EmbeddedModel` applies before the session runs. So the file needs no custom ONNX operator,
and this module is the only code a consumer needs.

This module imports only the standard library, numpy and onnxruntime: the export copies its
source next to the ONNX file as the loader, and the bento's fast path imports it as it is.

    model = EmbeddedModel.load("fraud-3.onnx")
    labels, probabilities = model.predict({"amount": [40.19], "channel": ["online"], ...})
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

PRESTEP_KEY = "modelcycle.prestep"
"""The ONNX metadata key of the pre-step: the JSON description of what runs before the graph."""
FORMAT = 1
DATE_PARTS = ("hour", "day_of_week", "day", "month")


class EmbeddedModel:
    """An exported model version: its ONNX session and the numpy pre-step the file describes."""

    def __init__(self, data: bytes, *, sha256: str | None = None, threads: int = 1):
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and digest != sha256:
            raise ValueError(f"the ONNX file's sha256 is {digest}, expected {sha256}: refusing to load it")
        self.sha256 = digest
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if PRESTEP_KEY not in meta:
            raise ValueError(f"the ONNX file has no {PRESTEP_KEY!r} metadata: it was not written by modelcycle export")
        self.prestep: dict[str, Any] = json.loads(meta[PRESTEP_KEY])
        if self.prestep.get("format") != FORMAT:
            raise ValueError(f"pre-step format {self.prestep.get('format')!r} is not supported (expected {FORMAT})")
        self.task: str = self.prestep["task"]
        self.classes: list[Any] | None = self.prestep["classes"]
        self.threshold: float = self.prestep["threshold"]
        self.input_columns: list[str] = [*self.prestep["numeric"], *self.prestep["categorical"],
                                         *self.prestep["datetime"]]
        self._outputs = [o.name for o in self.session.get_outputs()]

    @classmethod
    def load(cls, path: str, *, sha256: str | None = None, threads: int = 1) -> EmbeddedModel:
        with open(path, "rb") as fh:
            return cls(fh.read(), sha256=sha256, threads=threads)

    def features(self, columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The graph's inputs from raw columns (name -> sequence or array of raw values)."""
        step = self.prestep
        values: dict[str, np.ndarray] = {name: as_numbers(columns[name]) for name in step["numeric"]}
        for d in step["derived"]:
            values[d["name"]] = derive(d["op"], [values[c] for c in d["inputs"]])
        for name in step["datetime"]:
            values.update({f"{name}_{part}": v for part, v in date_parts(as_datetimes(columns[name])).items()})
        feeds: dict[str, np.ndarray] = {}
        if step["numeric_features"]:
            feeds["numeric"] = np.column_stack([values[c] for c in step["numeric_features"]]).astype(np.float64)
        if step["categorical_features"]:
            feeds["categorical"] = np.column_stack(
                [as_categories(columns[c], step["missing_category"]) for c in step["categorical_features"]])
        return feeds

    def run(self, columns: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """(scores, probabilities): the regression's values or the classes' probabilities."""
        out = self.session.run(self._outputs, self.features(columns))
        if self.task == "regression":
            return np.asarray(out[0], dtype=np.float64).reshape(-1), None
        proba = np.asarray(out[1], dtype=np.float64)
        return proba, proba

    def predict(self, columns: Mapping[str, Any]) -> tuple[list[Any], np.ndarray | None]:
        """(predictions, probabilities) as the registered model gives them: the binary decision at
        the version's threshold, the most probable class, or the regression's value."""
        scores, proba = self.run(columns)
        return self.decide(scores if proba is None else proba), proba

    def decide(self, scores: np.ndarray) -> list[Any]:
        if self.task == "regression":
            return scores.tolist()
        classes = np.asarray(self.classes, dtype=object)
        if self.task == "binary_classification":
            return np.where(scores[:, 1] >= self.threshold, classes[1], classes[0]).tolist()
        return classes[scores.argmax(axis=1)].tolist()

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> tuple[list[Any], np.ndarray | None]:
        """`predict` for records (dicts), as a JSON request holds them."""
        return self.predict({name: [r.get(name) for r in records] for name in self.input_columns})


def as_numbers(values: Any) -> np.ndarray:
    """Raw values as float64; what does not read as a number becomes NaN (as the pipeline's coercion)."""
    array = np.asarray(values)
    if array.dtype.kind in "fiub":
        return array.astype(np.float64)
    out = np.empty(len(array), dtype=np.float64)
    for i, v in enumerate(array.tolist()):
        try:
            out[i] = float(v) if v is not None and not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            out[i] = math.nan
    return out


def as_categories(values: Any, missing: str) -> np.ndarray:
    """Raw values as strings (as `str()` writes them), a missing one as the imputer's token."""
    array = np.asarray(values, dtype=object)
    out = np.empty(len(array), dtype=object)
    for i, v in enumerate(array.tolist()):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out[i] = missing
        else:
            out[i] = v if isinstance(v, str) else str(v)
    return out


def as_datetimes(values: Any) -> np.ndarray:
    """Raw values as datetime64[us]; what does not parse (or is missing) becomes NaT."""
    array = np.asarray(values)
    if array.dtype.kind == "M":
        return array.astype("datetime64[us]")
    out = np.empty(len(array), dtype="datetime64[us]")
    for i, v in enumerate(array.tolist()):
        try:
            if isinstance(v, str):
                v = v.strip().removesuffix("Z").replace(" ", "T", 1)
            out[i] = np.datetime64(v, "us") if v is not None else np.datetime64("NaT")
        except (TypeError, ValueError):
            out[i] = np.datetime64("NaT")
    return out


def date_parts(dt: np.ndarray) -> dict[str, np.ndarray]:
    """Hour, day of week (Monday is 0), day of month and month of each time; NaN for NaT."""
    missing = np.isnat(dt)
    days = dt.astype("datetime64[D]")
    months = dt.astype("datetime64[M]")
    with np.errstate(invalid="ignore"):  # NaT: its parts are NaN, set below
        parts = {
            "hour": ((dt - days) // np.timedelta64(1, "h")).astype(np.float64),
            "day_of_week": ((days.astype(np.int64) + 3) % 7).astype(np.float64),  # 1970-01-01 was a Thursday
            "day": ((days - months.astype("datetime64[D]")).astype(np.int64) + 1).astype(np.float64),
            "month": (months.astype(np.int64) % 12 + 1).astype(np.float64),
        }
    for v in parts.values():
        v[missing] = np.nan
    return parts


def derive(op: str, cols: list[np.ndarray]) -> np.ndarray:
    """One derived feature, as `modelcycle.features.DerivedFeatures` computes it."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if op == "log1p":
            value = np.log1p(np.clip(cols[0], 0, None))
        elif op == "abs":
            value = np.abs(cols[0])
        elif op == "ratio":
            value = cols[0] / np.where(cols[1] != 0, cols[1], np.nan)
        elif op == "difference":
            value = cols[0] - cols[1]
        elif op == "product":
            value = np.prod(np.column_stack(cols), axis=1)
        elif op == "sum":
            value = np.sum(np.column_stack(cols), axis=1)
        else:
            raise ValueError(f"unknown derived feature op {op!r}")
    return np.where(np.isinf(value), np.nan, value)
