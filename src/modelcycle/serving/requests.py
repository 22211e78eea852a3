"""Prediction requests: what a request must hold, checked before the model sees it.

A request is ``{"records": [{column: value, ...}, ...]}``, or one record as a bare object.
Each record is checked against the model's `DataSchema`, the schema of the data it was
trained on, by the rules that are errors in validation: a feature column must be present,
may be null only if nullable, a numeric value must be a number (or a string that reads as
one) within the declared ``min``/``max``, a categorical value must be a scalar in the closed
category list if there is one, and a date must parse.

Bad input raises `InvalidRequest`, which says what HTTP status it means (400 for a body
that is not JSON or not records, 422 for a record that breaks a rule) and which field is to
blame. Pandera would say the same but takes milliseconds per call; `RecordChecker` compiles
the schema once into plain per-field checks that take microseconds per record.

What validation calls a warning is not an error here either: the record is answered, and
its answer says what was unusual about it, one `RecordWarning` (field and reason) per field,
with the reasons of `contract.WARNING_REASONS`: a null in a nullable field, a category that training
never saw (in an open category list), a number outside the range training saw (but within
the declared ``min``/``max``). The feature pipeline copes with each (it imputes, encodes the
category as unknown, extrapolates), but the prediction rests on less than usual, and a rise
in any of them is drift that monitoring should see. The field and the reason come from the
schema and this module, never from the request, so they are safe as metric labels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import pandas as pd

from modelcycle.serving.contract import RecordWarning, WarningReason
from modelcycle.validation import ColumnRule, DataSchema

MAX_RECORDS = 10_000
"""Records accepted in one request; more is refused (413) rather than held in memory."""


class InvalidRequest(ValueError):
    """A request the model cannot answer; `status` is the HTTP status that says why."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 422):
        super().__init__(message)
        self.field = field
        self.status = status

    def body(self, request_id: str) -> dict[str, Any]:
        return {"error": str(self), "field": self.field, "request_id": request_id}


def parse_records(body: bytes, *, bare: bool = True) -> list[dict[str, Any]]:
    """The records of a JSON body: ``{"records": [...]}``, or one bare record object if `bare`."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", status=400) from None
    if not isinstance(data, dict):
        raise InvalidRequest(f'expected a JSON object, {{"records": [...]}} or one record, found {_kind(data)}',
                             status=400)
    if "records" not in data:
        if not bare:
            raise InvalidRequest('expected {"records": [...]}: this route takes a list of records', field="records",
                                 status=400)
        return [data]
    records = data["records"]
    if not isinstance(records, list) or not records:
        raise InvalidRequest(f"records: expected a non-empty list of objects, found {_shown(records)}",
                             field="records", status=400)
    if len(records) > MAX_RECORDS:
        raise InvalidRequest(f"records: at most {MAX_RECORDS} records per request, found {len(records)}",
                             field="records", status=413)
    for row, record in enumerate(records):
        if not isinstance(record, dict):
            raise InvalidRequest(f"records[{row}]: expected an object, found {_kind(record)}", field="records",
                                 status=400)
    return records


Check = Callable[[Any], str | None]
"""A field check: the value in, None when it passes or what was expected when it fails."""
Notice = Callable[[Any], WarningReason | None]
"""A field's warning rule: a value that passed its check in, the reason to warn or None."""


class RecordChecker:
    """The schema's rules for each feature column, compiled once, applied per record."""

    possible_warnings: list[RecordWarning]
    """Every warning this schema can give: the label sets of a counter of them."""

    def __init__(self, schema: DataSchema):
        self.schema = schema
        self.columns = [rule.name for rule in schema.feature_rules()]
        self._checks: list[tuple[str, bool, Check, Notice | None]] = []
        self.possible_warnings = []
        for rule in schema.feature_rules():
            reason, notice = _notice(rule) or (None, None)
            self._checks.append((rule.name, rule.nullable, _compile(rule), notice))
            if rule.nullable:
                self.possible_warnings.append(RecordWarning(field=rule.name, reason="null"))
            if reason is not None:
                self.possible_warnings.append(RecordWarning(field=rule.name, reason=reason))

    def check(self, records: list[dict[str, Any]]) -> list[list[RecordWarning]]:
        """Raise `InvalidRequest` for the first field that breaks a rule; else each record's warnings."""
        many = len(records) > 1
        warnings: list[list[RecordWarning]] = []
        for row, record in enumerate(records):
            found: list[RecordWarning] = []
            for name, nullable, check, notice in self._checks:
                where = f"records[{row}].{name}" if many else name
                try:
                    value = record[name]
                except KeyError:
                    raise InvalidRequest(f"{where}: required field is missing", field=name) from None
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    if not nullable:
                        raise InvalidRequest(f"{where}: may not be null", field=name)
                    found.append(RecordWarning(field=name, reason="null"))
                    continue
                if expected := check(value):
                    raise InvalidRequest(f"{where}: expected {expected}, found {_shown(value)}", field=name)
                if notice is not None and (reason := notice(value)):
                    found.append(RecordWarning(field=name, reason=reason))
            warnings.append(found)
        return warnings

    def warnings(self, records: list[dict[str, Any]]) -> list[list[RecordWarning]]:
        """Each record's warnings, for records that passed `check` already."""
        warnings: list[list[RecordWarning]] = []
        for record in records:
            found: list[RecordWarning] = []
            for name, _, _, notice in self._checks:
                value = record[name]
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    found.append(RecordWarning(field=name, reason="null"))
                elif notice is not None and (reason := notice(value)):
                    found.append(RecordWarning(field=name, reason=reason))
            warnings.append(found)
        return warnings

    def frame(self, records: list[dict[str, Any]]) -> pd.DataFrame:
        """The checked records as a DataFrame of the feature columns, built column by column
        (several times faster than from a list of dicts)."""
        return pd.DataFrame({name: [record[name] for record in records] for name in self.columns})


def _compile(rule: ColumnRule) -> Check:
    if rule.kind == "numeric":
        return _numeric(rule.min, rule.max)
    if rule.kind == "categorical":
        return _categorical(rule.categories)
    return _datetime


def _notice(rule: ColumnRule) -> tuple[WarningReason, Notice] | None:
    """The warning rule of a column besides null, as validation's warning pass has it: the
    observed range of a number, the observed categories of an open category list (kept only
    when there are not too many). None when the column has none."""
    if rule.kind == "numeric" and rule.observed_min is not None and rule.observed_max is not None:
        low, high = rule.observed_min, rule.observed_max
        return "outside_observed_range", lambda v: None if low <= float(v) <= high else "outside_observed_range"
    if rule.kind == "categorical" and rule.categories is None and rule.observed_categories is not None:
        seen = frozenset(rule.observed_categories)
        return "unseen_category", lambda v: None if (v if isinstance(v, str) else str(v)) in seen else "unseen_category"
    return None


def _numeric(low: float | None, high: float | None) -> Check:
    bounds = " and ".join(part for part in (f">= {low:g}" if low is not None else "",
                                            f"<= {high:g}" if high is not None else "") if part)

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return "a number"
        try:
            value = float(value)
        except ValueError:
            return "a number"
        except OverflowError:  # an integer beyond float range
            return "a finite number"
        if math.isinf(value):
            return "a finite number"
        if (low is not None and not value >= low) or (high is not None and not value <= high):
            return f"a number {bounds}"
        return None

    return check


def _categorical(categories: list[str] | None) -> Check:
    allowed = frozenset(categories) if categories is not None else None
    shown = ", ".join(repr(c) for c in (categories or [])[:12]) + (", ..." if len(categories or []) > 12 else "")

    def check(value: Any) -> str | None:
        if not isinstance(value, str | int | float | bool):
            return "a category (a string)"
        if allowed is not None and (value if isinstance(value, str) else str(value)) not in allowed:
            return f"one of {shown}"
        return None

    return check


def _datetime(value: Any) -> str | None:
    if isinstance(value, datetime | date):
        return None
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
            return None
        except ValueError:
            pass
        try:
            pd.Timestamp(value)
            return None
        except (ValueError, TypeError, OverflowError):
            pass
    return "a date and time, such as 2026-01-31T13:45:00"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
