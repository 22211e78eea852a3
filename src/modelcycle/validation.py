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

One report names every problem. Errors and warnings are both checked, each lazily, so
every failing column and check comes back at once. A value that is not a number in a
numeric column (or not a date in a datetime column) is a type error: it is reported once,
with its rows, and then read as missing, as the feature pipeline reads it, so that the
column's other checks still run on its other values. Its row is not reported again by
those checks.

Rows. An example's `row` is the 0-based position of the record in the data: row 0 is the
first record after the header, whatever the frame's index. When the data came from a text
file with one record per line, `ValidationReport.number_lines` adds the `line` of the file
(for a CSV with a header, line = row + 2). Every report says which numbers it shows.

Missing values. A column's missing values are counted against the share it had in
training, by a one-sided binomial test: are there more than chance explains? The share it
is tested against is the training share raised to the top of its 99.8% Wilson interval
(training had finitely many rows, so its share is an estimate) and at least
`MISSING_RATE_FLOOR`, so that a column that was never missing may miss a handful of
values. The check fails when the test's p-value is below `MISSING_RATE_ALPHA`. So 4%
missing in 1,000 rows where training had none is reported (p < 1e-20), while 11% where
4,000 training rows had 10% is not. A failing check lists the missing rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors
from pydantic import BaseModel
from scipy.stats import binomtest

from modelcycle.spec import ProjectSpec

Kind = Literal["numeric", "categorical", "datetime", "target", "id"]
#: A column may show this share of missing values whatever it had in training: below 0.5%
#: a few blanks are not worth a warning, and a share of 0 would make a single one "impossible".
MISSING_RATE_FLOOR = 0.005
#: Significance of the missing-rate test: the chance that a column whose share of missing
#: values has not changed gets a warning. Small, because every column is tested every run.
MISSING_RATE_ALPHA = 0.001
#: At most this many distinct values are kept as "observed categories".
MAX_OBSERVED_CATEGORIES = 500
#: The type a value of a column kind must have: its pandas dtype, the check's name, what a person calls it.
TYPES = {"numeric": ("float64", "is_number", "a number"), "datetime": ("datetime64[ns]", "is_datetime", "a date")}
TYPE_CHECKS = {check: noun for _, check, noun in TYPES.values()}


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
    rows: int | None = None
    """Training rows the `observed_*` values were learnt from (None in schemas stored before it was)."""

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
            cols[rule.name] = _column(rule, severity, training_rows=self.rows)
        return pa.DataFrameSchema(cols, strict=False, coerce=False, name=f"{severity}s")


@dataclass(frozen=True)
class MissingRate:
    """The missing-rate test of one column (see the module's docstring)."""

    missing: int
    rows: int
    training_rate: float
    training_rows: int | None

    @property
    def reference(self) -> float:
        """The share of missing values tested against: the training share's upper bound (the share
        itself in a schema stored without its number of training rows), and at least the floor."""
        rate = self.training_rate
        if self.training_rows:
            training = binomtest(round(rate * self.training_rows), self.training_rows)
            rate = training.proportion_ci(confidence_level=1 - 2 * MISSING_RATE_ALPHA, method="wilson").high
        return min(1.0, max(rate, MISSING_RATE_FLOOR))

    @property
    def p_value(self) -> float:
        """The chance of this many missing values or more, were the share the reference."""
        if not self.rows:
            return 1.0
        return float(binomtest(self.missing, self.rows, self.reference, alternative="greater").pvalue)

    @property
    def excessive(self) -> bool:
        return self.p_value < MISSING_RATE_ALPHA

    def describe(self) -> str:
        return (f"{self.missing:,} of {self.rows:,} missing ({self.missing / max(self.rows, 1):.1%}) where training had "
                f"{self.training_rate:.1%}; chance explains up to about {self.reference:.1%} (p = {self.p_value:.1g})")


def _isin(categories: list[str], name: str) -> pa.Check:
    """Membership by string form, so a label stored as 1 matches the category "1"."""
    allowed = set(categories)
    shown = categories if len(categories) <= 8 else categories[:8] + ["..."]
    return pa.Check(lambda s: s.astype(str).isin(allowed), name=f"{name}({shown})")


def _missing_rate(rule: ColumnRule, training_rows: int | None) -> pa.Check:
    """Fails on every missing row of the column when the column misses more values than chance explains."""

    def check(values: pd.Series) -> pd.Series:
        test = MissingRate(missing=int(values.isna().sum()), rows=len(values),
                           training_rate=rule.observed_missing_rate, training_rows=training_rows)
        return values.notna() if test.excessive else pd.Series(True, index=values.index)

    return pa.Check(check, element_wise=False, ignore_na=False,
                    name=f"missing_rate(training {rule.observed_missing_rate:.1%})")


def _column(rule: ColumnRule, severity: str, *, training_rows: int | None = None) -> pa.Column:
    checks: list[pa.Check] = []
    dtype = TYPES[rule.kind][0] if rule.kind in TYPES else None
    if severity == "error":
        if rule.min is not None:
            checks.append(pa.Check.ge(rule.min))
        if rule.max is not None:
            checks.append(pa.Check.le(rule.max))
        if rule.categories is not None:
            checks.append(_isin(rule.categories, "isin"))
        return pa.Column(dtype, checks=checks, nullable=rule.nullable, required=True, coerce=dtype is not None)
    if rule.observed_min is not None and rule.observed_max is not None:
        checks.append(pa.Check.in_range(rule.observed_min, rule.observed_max, name="observed_range"))
    if rule.observed_categories is not None and rule.categories is None:
        checks.append(_isin(rule.observed_categories, "seen_in_training"))
    if rule.nullable and rule.observed_missing_rate < 1.0:  # a column that may not miss values fails as an error
        checks.append(_missing_rate(rule, training_rows))
    return pa.Column(dtype, checks=checks, nullable=True, required=False, coerce=dtype is not None)


def _missing_share(values: pd.Series) -> float:
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
                observed_missing_rate=_missing_share(values),
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
                observed_missing_rate=_missing_share(values),
            )
        )
    for name in spec.features.datetime:
        values = frame[name] if name in frame else pd.Series(dtype=object)
        rules.append(
            ColumnRule(name=name, kind="datetime", observed_missing_rate=_missing_share(values))
        )
    target = spec.data.target
    classes = _as_strings(frame[target]) if spec.is_classification and target in frame else None
    rules.append(ColumnRule(name=target, kind="target", nullable=False, categories=classes))
    if spec.data.id_column:
        rules.append(ColumnRule(name=spec.data.id_column, kind="id", nullable=False))
    return DataSchema(columns=rules, target=target, task=spec.task, classes=classes, rows=len(frame))


class Example(BaseModel):
    row: int | None
    """0-based position of the record in the data; None for a check of the column as a whole."""
    line: int | None = None
    """The record's line in the file it was read from, when known (see `ValidationReport.number_lines`)."""
    id: str | None = None
    value: str | None


class ValidationIssue(BaseModel):
    column: str | None
    check: str
    severity: Literal["error", "warning"]
    count: int
    """Rows that fail the check; every row for a check of the column as a whole."""
    examples: list[Example]
    detail: str | None = None
    """What was expected and found, where the check's name does not say it all."""

    def describe(self) -> str:
        where = f"column {self.column!r}" if self.column else "table"
        if self.check == "required_column":
            return f"{self.severity}: {where} is missing: the schema requires it"
        detail = f" ({self.detail})" if self.detail else ""
        if not self.examples or self.examples[0].row is None:
            return f"{self.severity}: {where}: check {self.check} failed for the column as a whole{detail}"
        rows = f"{self.count:,} row{'s' if self.count != 1 else ''}"
        return f"{self.severity}: {where}: check {self.check} failed on {rows}{detail}, e.g. {self.shown()}"

    def shown(self, sep: str = ", ") -> str:
        """The examples as a person reads them: `row 7 (line 9, id tx-7) = abc`, joined by `sep`."""
        out = []
        for e in self.examples:
            where = [f"line {e.line}"] if e.line is not None else []
            where += [f"id {e.id}"] if e.id is not None else []
            out.append(("the column" if e.row is None else f"row {e.row}") + (f" ({', '.join(where)})" if where else "")
                       + (f" = {e.value}" if e.value is not None else ""))
        return sep.join(out)


class ValidationReport(BaseModel):
    rows: int
    issues: list[ValidationIssue]
    lines_in: str | None = None
    """The file the examples' `line` numbers are lines of; None when the report has rows only."""

    @property
    def errors(self) -> list[ValidationIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[ValidationIssue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def numbering(self) -> str:
        """What the row numbers of the examples are."""
        rows = "rows are 0-based data rows (row 0 is the first record, after any header)"
        return f"{rows}; lines are lines of {self.lines_in}" if self.lines_in else rows

    def number_lines(self, *, source: str, first_line: int) -> ValidationReport:
        """This report with each example's line in `source`, a file whose data row 0 is on `first_line`
        and which has one record per line."""
        issues = [
            issue.model_copy(update={"examples": [
                e.model_copy(update={"line": None if e.row is None else e.row + first_line}) for e in issue.examples
            ]})
            for issue in self.issues
        ]
        return self.model_copy(update={"issues": issues, "lines_in": source})

    def summary(self) -> str:
        head = f"{self.rows:,} rows: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        if any(e.row is not None for i in self.issues for e in i.examples):
            head += f"; {self.numbering}"
        return "\n".join([head] + [f"  {i.describe()}" for i in self.issues])


class DataValidationError(ValueError):
    def __init__(self, report: ValidationReport, *, context: str | None = None):
        self.report = report
        super().__init__(f"data validation failed{f': {context}' if context else ''}\n{report.summary()}")


def _read_values(frame: pd.DataFrame, schema: DataSchema) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The frame with numeric and datetime columns converted, values that do not convert
    read as missing; and those values, as failure cases in pandera's layout."""
    frame = frame.copy()
    failures = []
    for rule in schema.columns:
        if rule.kind not in TYPES or rule.name not in frame:
            continue
        values = frame[rule.name]
        check = TYPES[rule.kind][1]
        if rule.kind == "numeric":
            if pd.api.types.is_numeric_dtype(values):
                continue
            converted = pd.to_numeric(values, errors="coerce")
        else:
            if pd.api.types.is_datetime64_any_dtype(values):
                continue
            try:
                converted = pd.to_datetime(values, errors="coerce", format="mixed")
            except ValueError:  # dates with and without a time zone: compare them all in UTC
                converted = pd.to_datetime(values, errors="coerce", format="mixed", utc=True)
        bad = values.notna() & converted.isna()
        frame[rule.name] = converted
        if bad.any():
            failures.append(pd.DataFrame({
                "column": rule.name, "check": check, "failure_case": values[bad].astype(str),
                "index": values.index[bad], "severity": "error",
            }))
    empty = pd.DataFrame(columns=["column", "check", "failure_case", "index", "severity"])
    return frame, pd.concat(failures, ignore_index=True) if failures else empty


def _issues(failures: pd.DataFrame, frame: pd.DataFrame, schema: DataSchema, id_column: str | None,
            n_examples: int) -> list[ValidationIssue]:
    rules = {rule.name: rule for rule in schema.columns}
    out: list[ValidationIssue] = []
    for (severity, column, check), group in failures.groupby(["severity", "column", "check"], dropna=False, sort=False):
        column = None if column is None or (isinstance(column, float) and np.isnan(column)) else str(column)
        detail = None
        if check == "column_in_dataframe":
            column, check = str(group["failure_case"].iloc[0]), "required_column"
        elif check in TYPE_CHECKS:
            detail = f"expected {TYPE_CHECKS[check]}"
        elif str(check).startswith("missing_rate") and column in rules:
            detail = MissingRate(missing=int(frame[column].isna().sum()), rows=len(frame),
                                 training_rate=rules[column].observed_missing_rate, training_rows=schema.rows).describe()
            if unreadable := int((failures["column"].eq(column) & failures["check"].isin(TYPE_CHECKS)).sum()):
                detail += f"; {unreadable:,} of these are values of the wrong type, reported as such"
        rows = group[group["index"].notna()].sort_values("index", key=lambda s: s.astype(int))
        examples = []
        for _, fail in rows.head(n_examples).iterrows():
            row = int(fail["index"])
            ident = str(frame[id_column].iloc[row]) if id_column and id_column in frame else None
            value = None if pd.isna(fail["failure_case"]) else str(fail["failure_case"])
            examples.append(Example(row=row, id=ident, value=value))
        if rows.empty and check != "required_column":
            examples = [Example(row=None, value=None if pd.isna(v) else str(v)) for v in group["failure_case"].head(1)]
        out.append(ValidationIssue(
            column=column, check=str(check), severity=severity, detail=detail, examples=examples,
            count=int(rows["index"].nunique()) if not rows.empty else len(frame),
        ))
    return out


def validate(
    frame: pd.DataFrame,
    schema: DataSchema,
    *,
    include_target: bool = True,
    id_column: str | None = None,
    n_examples: int = 3,
) -> ValidationReport:
    """Check `frame` against `schema`; never raises for bad data, the report names every problem."""
    frame = frame.reset_index(drop=True)
    frame, unreadable = _read_values(frame, schema)
    failures = [unreadable]
    for severity in ("error", "warning"):
        try:
            schema.to_pandera(severity=severity, include_target=include_target).validate(frame, lazy=True)
        except SchemaErrors as exc:
            failures.append(exc.failure_cases.assign(severity=severity)[list(unreadable.columns)])
    failures = pd.concat(failures, ignore_index=True)
    # A value that is not of its column's type is reported once, as such: the column's
    # other checks saw a missing value in its place.
    cells = pd.MultiIndex.from_frame(failures[["column", "index"]])
    again = cells.isin(pd.MultiIndex.from_frame(unreadable[["column", "index"]])) & ~failures["check"].isin(TYPE_CHECKS)
    failures = failures[~again]
    return ValidationReport(rows=len(frame), issues=_issues(failures, frame, schema, id_column, n_examples))
