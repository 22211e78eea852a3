"""The project spec: one `modelcycle.yaml` says what the model is for and how to build it.

The spec is the contract between the business and the pipeline. It names the task, the
KPI thresholds a model must clear to be registered rather than rejected (each may say
where its number came from), where the data comes from, which columns are features and
how they are prepared, how data is split, which algorithms compete and with which search
spaces, and the resource budget a model must fit into to be served.

Every phase reads the spec and nothing else for its configuration, so a run is
reproducible from the spec, the data version and the code version. `spec_hash` is the
digest recorded in the registry's lineage.

Validation is strict: an unknown key or a wrong type is an error that names the path
in the YAML, what was expected and what was found (`SpecError`).
"""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import urlsplit
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PosInt = Annotated[int, Field(gt=0)]

TaskType = Literal["binary_classification", "multiclass_classification", "regression"]

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss", "brier")
REGRESSION_METRICS = ("mse", "rmse", "mae", "r2")
#: Metrics where smaller is better; gates on them use `max`, not `min`.
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "mse", "rmse", "mae"})


class SpecError(ValueError):
    """The spec is invalid. `problems` holds one line per problem, each naming its YAML path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid spec\n" + "\n".join(f"  - {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricThreshold(_Strict):
    """A KPI the model must reach. Give `min` for metrics where higher is better, `max` otherwise."""

    metric: str
    min: float | None = None
    max: float | None = None
    note: str | None = Field(
        default=None, description="Where the threshold comes from; shown next to the gate's result, and with a rejection"
    )

    @model_validator(mode="after")
    def _one_bound(self) -> MetricThreshold:
        if (self.min is None) == (self.max is None):
            raise ValueError(f"metric {self.metric!r}: give exactly one of 'min' or 'max'")
        return self


class Gate(BaseModel):
    """One threshold of the spec's goal or budget, checked against a measured value."""

    name: str
    metric: str
    op: Literal[">=", "<="]
    threshold: float
    value: float | None
    passed: bool
    source: str = ""
    """Where the threshold came from: the spec's key, and the note the spec gives for it."""

    def describe(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        source = f", set by {self.source}" if self.source else ""
        return (f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.metric} = {value} "
                f"(needs {self.op} {self.threshold:g}{source})")


class CandidateScore(BaseModel):
    """One competing candidate as the selection saw it: its best cross-validated score on the
    training rows. Kept with the evaluation and the registered version, so that what won, and
    against what, stays on record."""

    algorithm: str
    params: dict[str, Any]
    metric: str
    cv_mean: float
    cv_std: float
    """The standard deviation of the fold scores (not of their mean)."""
    cv_folds: int
    cv_rows: int
    """Rows the cross-validation ran on: the training rows, or a sample of them."""
    selected: bool = False


class CostMatrix(_Strict):
    """Business cost of each error kind; chooses the decision threshold of a binary classifier."""

    false_positive: Annotated[float, Field(ge=0)]
    false_negative: Annotated[float, Field(ge=0)]


class Goal(_Strict):
    description: str = ""
    primary: MetricThreshold
    secondary: list[MetricThreshold] = []
    cost: CostMatrix | None = None


class SqlSource(_Strict):
    """A SQL query through SQLAlchemy. The password never sits in the spec: the spec travels
    into lineage, manifests, Kubeflow's run parameters and logs. `password_env` names the
    environment variable that holds it (on Kubernetes, set from a Secret)."""

    url: str = Field(description="SQLAlchemy URL without a password, e.g. postgresql+psycopg://reader@db:5432/sales")
    query: str
    password_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The environment variable holding the database password (from a Kubernetes Secret in a pod)")

    @model_validator(mode="after")
    def _no_password_in_url(self) -> SqlSource:
        try:
            password = urlsplit(self.url).password
        except ValueError:
            password = None
        if password:
            raise ValueError("the URL holds a password, which would be copied into lineage, manifests and logs; "
                             "remove it from the URL, put it in an environment variable (a Secret on Kubernetes) "
                             "and name that variable in data.source.password_env")
        return self


class DataSpec(_Strict):
    source: str | SqlSource = Field(description="A path or fsspec URL (CSV, Parquet, JSON lines), or a SQL source")
    format: Literal["auto", "csv", "parquet", "jsonl"] = "auto"
    target: str
    id_column: str | None = None
    time_column: str | None = None


class NumericFeature(_Strict):
    name: str
    min: float | None = Field(default=None, description="Values below are validation errors")
    max: float | None = Field(default=None, description="Values above are validation errors")
    nullable: bool = True


class CategoricalFeature(_Strict):
    name: str
    categories: list[str] | None = Field(
        default=None, description="If given, other values are validation errors; if not, unseen values are warnings"
    )
    nullable: bool = True


DerivedOp = Literal["log1p", "ratio", "difference", "product", "sum", "abs"]


class DerivedFeature(_Strict):
    """A numeric feature computed from others, inside the fitted pipeline, so serving computes it too."""

    name: str
    op: DerivedOp
    inputs: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _arity(self) -> DerivedFeature:
        want = {"log1p": 1, "abs": 1, "ratio": 2, "difference": 2}.get(self.op)
        if want is not None and len(self.inputs) != want:
            raise ValueError(f"derived feature {self.name!r}: op {self.op!r} takes {want} input(s), got {len(self.inputs)}")
        return self


def _named(items: list[Any]) -> list[Any]:
    return [{"name": i} if isinstance(i, str) else i for i in items]


class FeaturesSpec(_Strict):
    numeric: list[NumericFeature] = []
    categorical: list[CategoricalFeature] = []
    datetime: list[str] = Field(default=[], description="Columns expanded into hour, day of week, day, month")
    derived: list[DerivedFeature] = []

    @model_validator(mode="before")
    @classmethod
    def _allow_bare_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for key in ("numeric", "categorical"):
                if isinstance(data.get(key), list):
                    data[key] = _named(data[key])
        return data

    @property
    def input_columns(self) -> list[str]:
        """The raw columns a request must carry."""
        return [f.name for f in self.numeric] + [f.name for f in self.categorical] + list(self.datetime)


class SplitSpec(_Strict):
    strategy: Literal["stratified", "random", "out_of_time"] = "stratified"
    test_size: Annotated[float, Field(gt=0, lt=0.5)] = 0.2
    validation_size: Annotated[float, Field(gt=0, lt=0.5)] = Field(
        default=0.15, description="Share used to choose the decision threshold; the selected model is then refit on it too"
    )
    out_of_time_size: Annotated[float, Field(ge=0, lt=0.5)] = Field(
        default=0.0, description="Latest share of rows by the time column, kept apart as the out-of-time set"
    )
    seed: int = 42


Algorithm = Literal[
    "logistic_regression", "linear_regression", "ridge", "random_forest", "hist_gradient_boosting"
]


class Candidate(_Strict):
    algorithm: Algorithm
    params: dict[str, Any] = Field(default={}, description="Fixed hyperparameters")
    search_space: dict[str, Any] = Field(
        default={},
        description="Per parameter: a list of choices, or {uniform|loguniform|randint: [low, high]}",
    )


class TrainingSpec(_Strict):
    candidates: list[Candidate] = Field(min_length=1)
    cv_folds: Annotated[int, Field(ge=2, le=20)] = 3
    search_iterations: PosInt = Field(default=8, description="Random-search draws per candidate")
    search_max_rows: PosInt = Field(
        default=200_000, description="The search runs on a stratified sample of at most this many rows; the selected "
        "candidate is refit on every training and validation row"
    )
    n_jobs: int = Field(default=-1, description="Processes for the search; -1 uses every core")


class BudgetSpec(_Strict):
    max_latency_ms_p95: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="Largest p95 predict latency for one row, in milliseconds"
    )
    max_artifact_mb: Annotated[float, Field(gt=0)] | None = None


StatTestName = Literal["ks", "chisquare", "z", "wasserstein", "jensenshannon", "psi"]
"""The drift tests of `modelcycle.monitoring.stattests`, by name."""
NUMERIC_ONLY_STATTESTS = frozenset({"ks", "wasserstein"})
"""Tests that need an ordered scale; the others also take a numeric column with few values."""


class ColumnMonitoring(_Strict):
    """How one column's drift is judged; a key left out uses the default for the column."""

    stattest: StatTestName | None = Field(
        default=None, description="The drift test; by default chosen from the column's type, distinct values and "
        "sample size, as Evidently does")
    threshold: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="Significance level for a p-value test (ks, chisquare, z), distance for the others")
    min_effect: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="Smallest distance (normed Wasserstein, or Jensen-Shannon) a p-value test's drift "
        "must also show; 0 turns the effect-size rule off")


DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(s|m|h|d))+$"


def duration_seconds(text: str) -> float:
    """Seconds in a duration such as 30s, 90m, 1h30m, 24h or 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * units[u] for n, _, u in re.findall(r"([0-9]+(\.[0-9]+)?)(s|m|h|d)", text))


class RetrainSpec(_Strict):
    """When a breach found on live traffic retrains the model with no human (`modelcycle loop`),
    and the guard rails around it. One retraining runs at a time: a new version serving as
    shadow counts as running until its verdict."""

    triggers: list[Literal["drift", "performance"]] = Field(
        default=["drift", "performance"], description="The verdicts that start a retraining: dataset drift, and the "
        "live metric under the goal")
    cooldown: Annotated[str, Field(pattern=DURATION_PATTERN)] = Field(
        default="6h", description="The least time between the starts of two retrainings, such as 30m or 6h")
    max_per_day: Annotated[int, Field(ge=1)] = Field(
        default=3, description="The most retrainings started in any 24 hours")
    min_rows: Annotated[int, Field(ge=1)] = Field(
        default=500, description="Live rows the window must hold before its drift can start a retraining")

    @property
    def cooldown_seconds(self) -> float:
        return duration_seconds(self.cooldown)


class MonitoringSpec(_Strict):
    """What counts as drift on live traffic, and over which window."""

    drift_share: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.5, description="Share of input columns that must drift for the data set to count as drifted")
    correction: Literal["fdr", "bonferroni", "none"] = Field(
        default="fdr", description="Multiple-testing correction of the p-value tests across columns: Benjamini-"
        "Hochberg (fdr), Bonferroni, or none")
    window: Annotated[str, Field(pattern=DURATION_PATTERN)] = Field(
        default="24h", description="Span of recent traffic compared with the reference, such as 1h, 24h or 7d")
    confidence: Annotated[float, Field(ge=0.5, lt=1)] = Field(
        default=0.95, description="Confidence level of the live metric's interval")
    columns: dict[str, ColumnMonitoring] = Field(default={}, description="Per input column: test and thresholds")
    prediction: ColumnMonitoring = Field(
        default=ColumnMonitoring(), description="Test and thresholds for the prediction-score distribution")
    retrain: RetrainSpec = Field(default=RetrainSpec(), description="When a breach retrains the model, and its "
                                 "guard rails (`modelcycle loop`)")

    @property
    def window_seconds(self) -> float:
        return duration_seconds(self.window)


class ProjectSpec(_Strict):
    """The whole `modelcycle.yaml`."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    task: TaskType
    goal: Goal
    data: DataSpec
    features: FeaturesSpec
    split: SplitSpec = SplitSpec()
    training: TrainingSpec
    budget: BudgetSpec = BudgetSpec()
    monitoring: MonitoringSpec = MonitoringSpec()

    #: The folder relative data paths are read from: the spec file's folder.
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @model_validator(mode="after")
    def _consistent(self) -> ProjectSpec:
        problems: list[str] = []
        allowed = REGRESSION_METRICS if self.task == "regression" else CLASSIFICATION_METRICS
        for where, t in [("goal.primary", self.goal.primary)] + [
            (f"goal.secondary[{i}]", t) for i, t in enumerate(self.goal.secondary)
        ]:
            if t.metric not in allowed:
                problems.append(f"{where}.metric: expected one of {', '.join(allowed)} for task {self.task}, found {t.metric!r}")
        if self.goal.cost is not None and self.task != "binary_classification":
            problems.append(f"goal.cost: a cost matrix needs task binary_classification, found {self.task}")
        if self.split.strategy == "out_of_time" or self.split.out_of_time_size > 0:
            if not self.data.time_column:
                problems.append("data.time_column: the out-of-time split needs a time column, found none")
        if self.split.strategy == "stratified" and self.task == "regression":
            problems.append("split.strategy: 'stratified' needs a classification task; use 'random' for regression")
        names = self.features.input_columns + [d.name for d in self.features.derived]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"features: each column may be declared once, found {', '.join(dupes)} more than once")
        if self.data.target in names:
            problems.append(f"features: the target {self.data.target!r} cannot also be a feature")
        known = set(self.features.input_columns)
        for i, d in enumerate(self.features.derived):
            for col in d.inputs:
                if col not in known:
                    problems.append(f"features.derived[{i}].inputs: {col!r} is not a declared numeric column")
            known.add(d.name)
        regression_only = {"linear_regression", "ridge"}
        for i, c in enumerate(self.training.candidates):
            if self.task == "regression" and c.algorithm == "logistic_regression":
                problems.append(f"training.candidates[{i}].algorithm: logistic_regression cannot do regression")
            if self.task != "regression" and c.algorithm in regression_only:
                problems.append(f"training.candidates[{i}].algorithm: {c.algorithm} cannot do {self.task}")
        problems += self._monitoring_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _monitoring_problems(self) -> list[str]:
        categorical = {f.name for f in self.features.categorical}
        numeric = {f.name for f in self.features.numeric}
        problems = []
        for name, column in self.monitoring.columns.items():
            where = f"monitoring.columns.{name}"
            if name not in categorical | numeric:
                problems.append(f"{where}: expected a numeric or categorical input column "
                                f"({', '.join(sorted(categorical | numeric))}), found {name!r}")
            elif name in categorical and column.stattest in NUMERIC_ONLY_STATTESTS:
                problems.append(f"{where}.stattest: {column.stattest} needs a numeric column, {name!r} is categorical")
        return problems

    @property
    def is_classification(self) -> bool:
        return self.task != "regression"

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def spec_hash(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*:)[^@\s'\"]+@")


def _describe(value: Any) -> str:
    """What was found, for an error line: shortened, and with any password in a URL masked,
    since error lines end up in logs."""
    text = _URL_PASSWORD.sub(r"\1***@", repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _yaml_path(loc: tuple[Any, ...]) -> str:
    """`training.candidates[1].search_space`; a key that is not a plain name is quoted,
    `goal['a: b']`, so that the path stays one line and cannot be mistaken for another."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part).startswith("function-"):
            continue
        elif _PLAIN_KEY.fullmatch(str(part)):
            path += f".{part}" if path else str(part)
        else:
            path += f"[{str(part)!r}]"
    return path or "(top level)"


def _format_error(err: dict[str, Any]) -> str:
    path = _yaml_path(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{path}: unknown key (found {_describe(err['input'])})"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind == "value_error":
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
        return "\n".join(f"{path}: {line}" if path != "(top level)" else line for line in msg.splitlines())
    if kind == "string_pattern_mismatch":
        return f"{path}: expected a lowercase DNS label (a-z, 0-9, '-', at most 63), found {_describe(err['input'])}"
    return f"{path}: expected {err['msg'].lower().removeprefix('input should be ')}, found {_describe(err['input'])}"


def parse_spec(data: Any, *, source: str = "<spec>") -> ProjectSpec:
    """Validate a parsed YAML document; raise `SpecError` listing every problem with its path."""
    if not isinstance(data, dict):
        raise SpecError(source, [f"(top level): expected a mapping, found {type(data).__name__}"])
    try:
        return ProjectSpec.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        for err in exc.errors():
            for line in _format_error(err).split("\n"):
                if line not in problems:
                    problems.append(line)
        raise SpecError(source, problems) from None


def spec_from_text(text: str, *, base_dir: str | Path | None = None, source: str = "<spec>") -> ProjectSpec:
    """Parse spec YAML text (as Kubeflow passes it between components)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(source, [f"not valid YAML: {exc}"]) from None
    spec = parse_spec(data, source=source)
    if base_dir is not None:
        spec._base_dir = Path(base_dir).resolve()
    return spec


def load_spec(path: str | Path) -> ProjectSpec:
    """Read and validate `modelcycle.yaml`. Relative data paths are read from the spec's folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), ["file not found"]) from None
    return spec_from_text(text, base_dir=path.resolve().parent, source=str(path))
