"""Validation: new data must look like the data the model learned from.

`infer_schema` reads the training data and the spec and writes down what a column may
hold: its type, whether it may be missing, its range, its categories. Rules the spec
declares (a `min`, a `max`, a closed category list, `nullable: false`) and rules no data
may break (a missing column, a value of the wrong type) are **errors**: the pipeline stops
before training and the registry is untouched. Rules learnt from the data (the observed
range, the categories seen, the usual share of missing values) are **warnings**: new data
may go beyond them, and the feature pipeline copes, but a person should know.

The schema is stored with the data version as JSON (`DataSchema`), and turned into
pandera schemas to check a frame. `ValidationReport` lists every failing column and
check with its count and example rows.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors
from pydantic import BaseModel

from modelcycle.spec import ProjectSpec

Kind = Literal["numeric", "categorical", "datetime", "target", "id"]
#: Observed missing share may grow this much (absolute) before it is worth a warning.
MISSING_RATE_SLACK = 0.10
#: At most this many distinct values are kept as "observed categories".
MAX_OBSERVED_CATEGORIES = 500


class ColumnRule(BaseModel):
    name: str
    kind: Kind
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    observed_min: float | None = None
    observed_max: float | None = None
    observed_categories: list[str] | None = None
    observed_missing_rate: float = 0.0


class DataSchema(BaseModel):
    """What each column may hold; serialisable, stored next to the data version."""

    columns: list[ColumnRule]
    target: str
    task: str
    classes: list[str] | None = None

    def schema_hash(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def feature_rules(self) -> list[ColumnRule]:
        return [c for c in self.columns if c.kind in ("numeric", "categorical", "datetime")]

    def to_pandera(self, *, severity: Literal["error", "warning"], include_target: bool = True) -> pa.DataFrameSchema:
        cols = {}
        for rule in self.columns:
            if rule.kind == "target" and not include_target:
                continue
            if rule.kind == "id":
                continue
            cols[rule.name] = _column(rule, severity)
        return pa.DataFrameSchema(cols, strict=False, coerce=False, name=f"{severity}s")


def _isin(categories: list[str], name: str) -> pa.Check:
    """Membership by string form, so a label stored as 1 matches the category "1"."""
    allowed = set(categories)
    shown = categories if len(categories) <= 8 else categories[:8] + ["..."]
    return pa.Check(lambda s: s.astype(str).isin(allowed), name=f"{name}({shown})")


def _column(rule: ColumnRule, severity: str) -> pa.Column:
    checks: list[pa.Check] = []
    if severity == "error":
        if rule.min is not None:
            checks.append(pa.Check.ge(rule.min))
        if rule.max is not None:
            checks.append(pa.Check.le(rule.max))
        if rule.categories is not None:
            checks.append(_isin(rule.categories, "isin"))
        dtype = {"numeric": "float64", "datetime": "datetime64[ns]"}.get(rule.kind)
        return pa.Column(dtype, checks=checks, nullable=rule.nullable, required=True, coerce=dtype is not None)
    if rule.observed_min is not None and rule.observed_max is not None:
        checks.append(pa.Check.in_range(rule.observed_min, rule.observed_max, name="observed_range"))
    if rule.observed_categories is not None and rule.categories is None:
        checks.append(_isin(rule.observed_categories, "seen_in_training"))
    limit = min(1.0, rule.observed_missing_rate + MISSING_RATE_SLACK)
    if limit < 1.0:
        checks.append(
            pa.Check(
                lambda s, limit=limit: s.isna().mean() <= limit,
                element_wise=False,
                ignore_na=False,
                name=f"missing_rate<={limit:.2f}",
            )
        )
    coerce = {"numeric": "float64", "datetime": "datetime64[ns]"}.get(rule.kind)
    # Type problems are errors; the warning pass coerces quietly so its checks can run.
    return pa.Column(coerce, checks=checks, nullable=True, required=False, coerce=coerce is not None)


def _missing_rate(values: pd.Series) -> float:
    return float(values.isna().mean()) if len(values) else 0.0


def _as_strings(series: pd.Series) -> list[str]:
    return sorted(str(v) for v in series.dropna().unique())


def infer_schema(frame: pd.DataFrame, spec: ProjectSpec) -> DataSchema:
    """Learn column rules from the training data, on top of what the spec declares."""
    rules: list[ColumnRule] = []
    for feat in spec.features.numeric:
        values = pd.to_numeric(frame[feat.name], errors="coerce") if feat.name in frame else pd.Series(dtype=float)
        rules.append(
            ColumnRule(
                name=feat.name,
                kind="numeric",
                nullable=feat.nullable,
                min=feat.min,
                max=feat.max,
                observed_min=float(values.min()) if values.notna().any() else None,
                observed_max=float(values.max()) if values.notna().any() else None,
                observed_missing_rate=_missing_rate(values),
            )
        )
    for feat in spec.features.categorical:
        values = frame[feat.name] if feat.name in frame else pd.Series(dtype=object)
        seen = _as_strings(values)
        rules.append(
            ColumnRule(
                name=feat.name,
                kind="categorical",
                nullable=feat.nullable,
                categories=feat.categories,
                observed_categories=seen if len(seen) <= MAX_OBSERVED_CATEGORIES else None,
                observed_missing_rate=_missing_rate(values),
            )
        )
    for name in spec.features.datetime:
        values = frame[name] if name in frame else pd.Series(dtype=object)
        rules.append(
            ColumnRule(name=name, kind="datetime", observed_missing_rate=_missing_rate(values))
        )
    target = spec.data.target
    classes = _as_strings(frame[target]) if spec.is_classification and target in frame else None
    rules.append(ColumnRule(name=target, kind="target", nullable=False, categories=classes))
    if spec.data.id_column:
        rules.append(ColumnRule(name=spec.data.id_column, kind="id", nullable=False))
    return DataSchema(columns=rules, target=target, task=spec.task, classes=classes)


class Example(BaseModel):
    row: int | None
    id: str | None = None
    value: str | None


class ValidationIssue(BaseModel):
    column: str | None
    check: str
    severity: Literal["error", "warning"]
    count: int
    examples: list[Example]

    def describe(self) -> str:
        where = f"column {self.column!r}" if self.column else "table"
        if self.check == "required_column":
            return f"{self.severity}: {where} is missing: the schema requires it"
        if not self.examples or self.examples[0].row is None:
            return f"{self.severity}: {where}: check {self.check} failed for the column as a whole"
        shown = ", ".join(
            f"row {e.row}" + (f" ({e.id})" if e.id else "") + (f" = {e.value}" if e.value is not None else "")
            for e in self.examples
        )
        rows = f"{self.count} row{'s' if self.count != 1 else ''}"
        return f"{self.severity}: {where}: check {self.check} failed on {rows}, e.g. {shown}"


class ValidationReport(BaseModel):
    rows: int
    issues: list[ValidationIssue]

    @property
    def errors(self) -> list[ValidationIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[ValidationIssue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        head = f"{self.rows:,} rows: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        return "\n".join([head] + [f"  {i.describe()}" for i in self.issues])


class DataValidationError(ValueError):
    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__("data validation failed\n" + report.summary())


def _issues(failures: pd.DataFrame, severity: str, frame: pd.DataFrame, id_column: str | None, n_examples: int) -> list[ValidationIssue]:
    out: list[ValidationIssue] = []
    failures = failures.copy()
    failures["column"] = failures["column"].astype(object).where(failures["column"].notna(), None)
    for (column, check), group in failures.groupby(["column", "check"], dropna=False, sort=False):
        column = None if column is None or (isinstance(column, float) and np.isnan(column)) else str(column)
        if check == "column_in_dataframe":
            column, check = str(group["failure_case"].iloc[0]), "required_column"
        examples = []
        for _, fail in group.head(n_examples).iterrows():
            index = fail["index"]
            row = int(index) if index is not None and not pd.isna(index) else None
            ident = str(frame[id_column].iloc[row]) if id_column and row is not None and id_column in frame else None
            value = None if pd.isna(fail["failure_case"]) else str(fail["failure_case"])
            if check == "required_column":
                value = None
            examples.append(Example(row=row, id=ident, value=value))
        has_rows = group["index"].notna().any()
        out.append(
            ValidationIssue(
                column=column, check=str(check), severity=severity,
                count=int(group["index"].nunique()) if has_rows else 1, examples=examples,
            )
        )
    coerce_failed = {i.column for i in out if i.check.startswith("coerce_dtype")}
    # After a failed type coercion pandera also reports the dtype and every value check of
    # the column failing on the raw values; the coercion failure alone says it all.
    return [
        i for i in out
        if i.column not in coerce_failed or i.check.startswith("coerce_dtype") or i.check == "not_nullable"
    ]


def validate(
    frame: pd.DataFrame,
    schema: DataSchema,
    *,
    include_target: bool = True,
    id_column: str | None = None,
    n_examples: int = 3,
) -> ValidationReport:
    """Check `frame` against `schema`; never raises for bad data, the report says what is wrong."""
    frame = frame.reset_index(drop=True)
    issues: list[ValidationIssue] = []
    for severity in ("error", "warning"):
        try:
            schema.to_pandera(severity=severity, include_target=include_target).validate(frame, lazy=True)
        except SchemaErrors as exc:
            issues += _issues(exc.failure_cases, severity, frame, id_column, n_examples)
        if severity == "error" and issues:
            break  # type errors would repeat as warnings
    return ValidationReport(rows=len(frame), issues=issues)
