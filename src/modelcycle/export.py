"""Export: a model version as one ONNX file that runs without scikit-learn or pandas.

The fitted feature pipeline is split in two. Its first three steps (`CoerceTypes`,
`DerivedFeatures`, `DateParts`) are the project's own transformers, which no converter
knows; they are stateless, so instead of writing ONNX converters for them the export
describes them as data: a small JSON of operations stored in the file's metadata, which
`modelcycle.embedded` applies in numpy. The fitted rest, the `ColumnTransformer` (median
imputation with missing-value indicators and scaling of numbers; constant imputation and
one-hot encoding with an infrequent bucket of categories) is written here as plain ONNX
operators from the fitted statistics, because skl2onnx's converters drop the imputer's
indicators and do not know the infrequent bucket. The estimator is converted by skl2onnx
and appended to that graph.

Nothing is trusted: every export is run on the version's test split next to the
scikit-learn pipeline, and the largest difference in probability (or, for a regression,
in the predicted value relative to its scale) must stay within `PARITY_TOLERANCE`. A step
that cannot be converted, or a parity that fails, is refused with the reason
(`ExportRefused`), and nothing is written. A passing export writes the ONNX file, its
sha256, the data schema, and the loader (the source of `modelcycle.embedded`), and
records the file's sha256 and the parity on the model version.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline

from modelcycle import artifacts, embedded
from modelcycle.data import DataError, DataStore
from modelcycle.features import CoerceTypes, DateParts, DerivedFeatures
from modelcycle.registry import Registry
from modelcycle.spec import ProjectSpec
from modelcycle.training import TrainedModel, split_data

PARITY_TOLERANCE = 1e-4
"""The largest difference allowed between the export's and scikit-learn's probabilities (for
a regression: between predictions, relative to the larger of 1 and the target's spread)."""
OPSET = {"": 17, "ai.onnx.ml": 3}
ANNOTATION_PREFIX = "export.onnx."


class ExportRefused(ValueError):
    """The version cannot be exported faithfully; the message says why."""


@dataclass(frozen=True)
class Parity:
    rows: int
    max_difference: float
    tolerance: float = PARITY_TOLERANCE

    @property
    def passed(self) -> bool:
        return self.max_difference <= self.tolerance


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    sha256: str
    size_bytes: int
    parity: Parity
    loader: Path
    schema: Path


def to_onnx(model: TrainedModel, *, name: str = "model", version: str = "") -> bytes:
    """The ONNX bytes of `model`, pre-step metadata included; `ExportRefused` if a step cannot be converted."""
    import onnx
    from onnx import TensorProto, helper

    features, estimator = _parts(model)
    coerce, derive, dates, encode = (step for _, step in features.steps)
    prestep = {
        "format": embedded.FORMAT, "model": name, "version": str(version), "task": model.task,
        "classes": list(model.classes) if model.classes is not None else None, "threshold": float(model.threshold),
        "numeric": list(coerce.numeric), "categorical": list(coerce.categorical), "datetime": list(coerce.datetime),
        "derived": [dict(d) for d in derive.derived], "numeric_features": [], "categorical_features": [],
        "missing_category": "",
    }
    nodes, inits, inputs, blocks = [], [], [], []
    for kind, transformer, columns in encode.transformers_:
        if kind == "remainder" or transformer == "drop" or not len(columns):
            continue
        if kind == "numeric":
            prestep["numeric_features"] = list(columns)
            inputs.append(helper.make_tensor_value_info("numeric", TensorProto.DOUBLE, [None, len(columns)]))
            blocks.append(_numeric_block(transformer, nodes, inits))
        elif kind == "categorical":
            prestep["categorical_features"] = list(columns)
            inputs.append(helper.make_tensor_value_info("categorical", TensorProto.STRING, [None, len(columns)]))
            impute, encoder = transformer.named_steps["impute"], transformer.named_steps["encode"]
            prestep["missing_category"] = str(impute.fill_value)
            blocks.append(_categorical_block(encoder, nodes, inits))
        else:
            raise ExportRefused(f"feature step {kind!r} is not one modelcycle knows how to export")
    double = _is_linear(estimator)
    nodes.append(helper.make_node("Concat", blocks, ["encoded"], axis=1))
    nodes.append(helper.make_node("Cast", ["encoded"], ["features"], to=TensorProto.DOUBLE if double else TensorProto.FLOAT))
    width = len(encode.get_feature_names_out())

    head = _convert_estimator(estimator, width, is_classifier=model.task != "regression", double=double)
    graph = head.graph
    (estimator_input,) = [i.name for i in graph.input]
    for node in graph.node:
        node.input[:] = ["features" if i == estimator_input else i for i in node.input]
    merged = helper.make_graph([*nodes, *graph.node], f"modelcycle_{name}", inputs, list(graph.output),
                               initializer=[*inits, *graph.initializer])
    opsets = {o.domain: o.version for o in head.opset_import}
    for domain, least in OPSET.items():
        opsets[domain] = max(opsets.get(domain, 0), least)
    result = helper.make_model(merged, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                               producer_name="modelcycle")
    result.ir_version = head.ir_version
    helper.set_model_props(result, {embedded.PRESTEP_KEY: json.dumps(prestep, separators=(",", ":"))})
    onnx.checker.check_model(result)
    return result.SerializeToString()


def check_parity(model: TrainedModel, exported: embedded.EmbeddedModel, frame: pd.DataFrame) -> Parity:
    """The largest difference between the export's and the pipeline's outputs on `frame`."""
    columns = {c: frame[c].to_numpy() for c in exported.input_columns}
    scores, proba = exported.run(columns)
    if proba is None:
        expected = np.asarray(model.predict(frame), dtype=np.float64)
        scale = max(1.0, float(np.nanstd(expected)))
        diff = np.abs(scores - expected) / scale
    else:
        diff = np.abs(proba - model.predict_proba(frame))
    return Parity(rows=len(frame), max_difference=float(np.nanmax(diff)) if diff.size else 0.0)


def export_onnx(registry: Registry, name: str, ref: str | int, *, test: pd.DataFrame, out_dir: Path,
                tolerance: float = PARITY_TOLERANCE) -> OnnxExport:
    """Export a registered version to `out_dir` after checking parity on `test` (its test split),
    and record the export on the version. Raises `ExportRefused` with the reason."""
    version = registry.get(name, ref)
    model = registry.load(name, version.version)
    if not isinstance(model, TrainedModel):
        raise ExportRefused(f"model {name} version {version.version} is not a modelcycle TrainedModel")
    if len(test) == 0:
        raise ExportRefused("the test split is empty: parity cannot be checked")
    data = to_onnx(model, name=name, version=str(version.version))
    parity = check_parity(model, embedded.EmbeddedModel(data), test)
    parity = Parity(rows=parity.rows, max_difference=parity.max_difference, tolerance=tolerance)
    if not parity.passed:
        raise ExportRefused(f"parity failed on {parity.rows} test rows: the largest difference is "
                            f"{parity.max_difference:.3g}, above the tolerance {tolerance:g}")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{version.version}"
    path = out_dir / f"{stem}.onnx"
    sha256 = hashlib.sha256(data).hexdigest()
    artifacts.write_atomic(path, data)
    artifacts.write_atomic(out_dir / f"{stem}.onnx.sha256", f"{sha256}  {path.name}\n".encode())
    schema = out_dir / f"{stem}.schema.json"
    artifacts.write_atomic(schema, (model.schema.model_dump_json(indent=2) if model.schema else "null").encode())
    loader = out_dir / "modelcycle_embedded.py"
    shutil.copyfile(embedded.__file__, loader)
    registry.annotate(name, version.version, **{
        f"{ANNOTATION_PREFIX}path": str(path.resolve()),
        f"{ANNOTATION_PREFIX}sha256": sha256,
        f"{ANNOTATION_PREFIX}parity_max_difference": f"{parity.max_difference:.3g}",
        f"{ANNOTATION_PREFIX}parity_rows": str(parity.rows),
        f"{ANNOTATION_PREFIX}exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    return OnnxExport(path=path, sha256=sha256, size_bytes=len(data), parity=parity, loader=loader, schema=schema)


def test_split(registry: Registry, name: str, ref: str | int, *, spec: ProjectSpec, store: DataStore) -> pd.DataFrame:
    """The version's test split: its data version (from its lineage) split again by the spec it was
    trained with. Refused when the spec is another one, or the data version is not in `store`."""
    version = registry.get(name, ref)
    lineage = version.lineage
    if lineage.spec_hash and lineage.spec_hash != spec.spec_hash():
        raise ExportRefused(f"the spec given is not the one {name} version {version.version} was trained with "
                            f"(spec hash {spec.spec_hash()[:12]}, the version's {lineage.spec_hash[:12]}): "
                            "its test split cannot be rebuilt")
    if not lineage.data_version:
        raise ExportRefused(f"{name} version {version.version} records no data version: pass the test rows with --data")
    try:
        frame = store.load(lineage.data_version)
    except (DataError, KeyError, FileNotFoundError) as exc:
        raise ExportRefused(f"the data version {lineage.data_version[:12]} of {name} version {version.version} "
                            f"cannot be read from {store!r}: {exc}") from None
    return split_data(frame, spec).test.drop(columns=[spec.data.target], errors="ignore")


def recorded_export(registry: Registry, name: str, ref: str | int) -> embedded.EmbeddedModel | None:
    """The version's recorded ONNX export, verified against its recorded sha256; None when it has none."""
    version = registry.get(name, ref)
    path = version.annotations.get(f"{ANNOTATION_PREFIX}path")
    if path is None:
        return None
    return embedded.EmbeddedModel.load(path, sha256=version.annotations[f"{ANNOTATION_PREFIX}sha256"])


def _parts(model: TrainedModel) -> tuple[Pipeline, object]:
    pipeline = model.pipeline
    if not isinstance(pipeline, Pipeline) or [n for n, _ in pipeline.steps] != ["features", "model"]:
        raise ExportRefused("the model is not a features + model Pipeline")
    features = pipeline.named_steps["features"]
    kinds = [type(step) for _, step in features.steps]
    if kinds != [CoerceTypes, DerivedFeatures, DateParts, ColumnTransformer]:
        raise ExportRefused(f"the feature pipeline's steps {[k.__name__ for k in kinds]} are not the ones "
                            "modelcycle knows how to export")
    return features, pipeline.named_steps["model"]


def _numeric_block(transformer: Pipeline, nodes: list, inits: list) -> str:
    """Median imputation, missing-value indicators and standard scaling, from the fitted statistics."""
    from onnx import TensorProto, helper, numpy_helper

    impute, scale = transformer.named_steps["impute"], transformer.named_steps["scale"]
    if [n for n, _ in transformer.steps] != ["impute", "scale"] or impute.strategy not in ("median", "mean"):
        raise ExportRefused(f"numeric step {transformer!r} is not imputation then scaling")
    inits.append(numpy_helper.from_array(impute.statistics_.astype(np.float64), "num_fill"))
    nodes.append(helper.make_node("IsNaN", ["numeric"], ["num_missing"]))
    nodes.append(helper.make_node("Where", ["num_missing", "num_fill", "numeric"], ["num_filled"]))
    parts = ["num_filled"]
    if impute.add_indicator and impute.indicator_ is not None and len(impute.indicator_.features_):
        inits.append(numpy_helper.from_array(np.asarray(impute.indicator_.features_, dtype=np.int64), "num_flagged"))
        nodes.append(helper.make_node("Cast", ["num_missing"], ["num_missing_f"], to=TensorProto.DOUBLE))
        nodes.append(helper.make_node("Gather", ["num_missing_f", "num_flagged"], ["num_indicators"], axis=1))
        parts.append("num_indicators")
    nodes.append(helper.make_node("Concat", parts, ["num_imputed"], axis=1))
    width = len(impute.statistics_) + (len(parts) - 1) * len(getattr(impute.indicator_, "features_", []))
    mean = scale.mean_ if scale.with_mean else np.zeros(width)
    std = scale.scale_ if scale.with_std else np.ones(width)
    inits.append(numpy_helper.from_array(np.asarray(mean, dtype=np.float64), "num_mean"))
    inits.append(numpy_helper.from_array(np.asarray(std, dtype=np.float64), "num_scale"))
    nodes.append(helper.make_node("Sub", ["num_imputed", "num_mean"], ["num_centred"]))
    nodes.append(helper.make_node("Div", ["num_centred", "num_scale"], ["num_scaled"]))
    return "num_scaled"


def _categorical_block(encoder, nodes: list, inits: list) -> str:
    """One-hot encoding with sklearn's layout: a column per frequent category in order, then the
    infrequent bucket (where it exists), which also takes categories training never saw."""
    from onnx import TensorProto, helper, numpy_helper

    if encoder.drop is not None:
        raise ExportRefused("one-hot encoding with dropped categories is not supported by the export")
    outputs = []
    infrequent = getattr(encoder, "infrequent_categories_", None) or [None] * len(encoder.categories_)
    for j, (categories, rare) in enumerate(zip(encoder.categories_, infrequent)):
        rare = set() if rare is None else {str(c) for c in rare}
        frequent = [str(c) for c in categories if str(c) not in rare]
        position = {c: i for i, c in enumerate(frequent)}
        width = len(frequent) + (1 if rare else 0)
        unknown = len(frequent) if rare else width  # the bucket, or one past the end: all zeros
        keys = [str(c) for c in categories]
        values = [position.get(c, len(frequent)) for c in keys]
        inits.append(numpy_helper.from_array(np.asarray([j], dtype=np.int64), f"cat_{j}_index"))
        inits.append(numpy_helper.from_array(np.arange(width, dtype=np.int64).reshape(1, -1), f"cat_{j}_range"))
        nodes.append(helper.make_node("Gather", ["categorical", f"cat_{j}_index"], [f"cat_{j}_raw"], axis=1))
        nodes.append(helper.make_node("LabelEncoder", [f"cat_{j}_raw"], [f"cat_{j}_code"], domain="ai.onnx.ml",
                                      keys_strings=keys, values_int64s=values, default_int64=unknown))
        nodes.append(helper.make_node("Equal", [f"cat_{j}_code", f"cat_{j}_range"], [f"cat_{j}_hot"]))
        nodes.append(helper.make_node("Cast", [f"cat_{j}_hot"], [f"cat_{j}_onehot"], to=TensorProto.DOUBLE))
        outputs.append(f"cat_{j}_onehot")
    nodes.append(helper.make_node("Concat", outputs, ["cat_encoded"], axis=1))
    return "cat_encoded"


def _is_linear(estimator) -> bool:
    """Linear models convert to plain matrix products, which ONNX Runtime computes in double
    exactly as scikit-learn does; tree ensembles run in float, as scikit-learn's trees do."""
    from sklearn.linear_model._base import LinearModel, LinearClassifierMixin

    return isinstance(estimator, LinearModel | LinearClassifierMixin)


def _convert_estimator(estimator, width: int, *, is_classifier: bool, double: bool):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    options = {id(estimator): {"zipmap": False}} if is_classifier else None
    _cast_missing_tracks()
    try:
        return convert_sklearn(estimator, initial_types=[("features", (DoubleTensorType if double else FloatTensorType)([None, width]))],
                               options=options, target_opset=OPSET)
    except Exception as exc:  # skl2onnx raises many kinds; each means the same: this step does not convert
        raise ExportRefused(f"the estimator {type(estimator).__name__} cannot be converted by skl2onnx: "
                            f"{type(exc).__name__}: {exc}") from None


def _cast_missing_tracks() -> None:
    """skl2onnx 1.20 passes scikit-learn's boolean `missing_go_to_left` of a histogram gradient
    boosting tree straight into the ONNX attribute `nodes_missing_value_tracks_true`, a list of
    ints; protobuf warns about the booleans now and refuses them in newer releases (the
    TypeError "Expected an int, got a boolean"). This wraps skl2onnx's `add_node` once so the
    value arrives as the int it stands for; the parity check still decides."""
    from skl2onnx.common import tree_ensemble

    if getattr(tree_ensemble.add_node, "modelcycle_cast", False):
        return
    original = tree_ensemble.add_node

    def add_node(*args, nodes_missing_value_tracks_true=0, **kwargs):
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    add_node.modelcycle_cast = True
    tree_ensemble.add_node = add_node
