"""Data quality of live traffic: what the model is asked about that it was not trained for.

Per input column, against the reference profile:

- **missing-rate growth**: more missing values than the reference's share explains. A
  one-sided binomial test against the reference share, significant at `MISSING_ALPHA`, and
  an increase of at least `MIN_MISSING_GROWTH` (the effect-size rule again: on a large
  window, 0.1 point more is significant and harmless);
- **unseen categories**: the share of values of a categorical column in no category the
  reference had (unknown when the reference lumped rare categories together as ``other``);
- **out-of-range values**: the share of values of a numeric column below the reference's
  minimum or above its maximum.

A column is flagged when its missing values grew, or when unseen or out-of-range values
reach `MAX_UNUSUAL_SHARE`. Requests the model server refused (422, a field that breaks the
schema) are counted from the prediction log by `modelcycle.monitoring.monitors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from modelcycle.monitoring.profiles import ColumnProfile, ReferenceProfile

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ColumnQuality", "DataQuality", "MAX_UNUSUAL_SHARE", "check_quality"]

MISSING_ALPHA = 0.001
"""Significance of the missing-rate test; small, since every column is tested at every check."""
MIN_MISSING_GROWTH = 0.01
"""Smallest rise of the missing share (one point) worth a flag."""
MAX_UNUSUAL_SHARE = 0.01
"""Share of unseen categories or out-of-range values above which a column is flagged."""


class ColumnQuality(BaseModel):
    column: str
    rows: int
    missing_rate: float
    reference_missing_rate: float
    missing_p_value: float
    missing_grew: bool
    unseen: int | None = None
    """Categorical: values in no reference category (None when the reference cannot tell)."""
    unseen_examples: list[str] = []
    out_of_range: int | None = None
    """Numeric: values below the reference's minimum or above its maximum."""
    flagged: bool
    reasons: list[str]


class DataQuality(BaseModel):
    rows: int
    columns: list[ColumnQuality]
    flagged_columns: list[str]
    refused_requests: int | None = None
    """Requests the model server answered with 422 (a field breaks the schema)."""
    requests: int | None = None


def _column_quality(reference: ColumnProfile, values: pd.Series) -> ColumnQuality:
    import pandas as pd
    from scipy.stats import binomtest

    rows = len(values)
    if reference.kind == "numeric":
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        present = numbers[np.isfinite(numbers)]
    else:
        present = values.dropna()
    missing = rows - len(present)
    rate = missing / rows if rows else 0.0
    p_value = float(binomtest(missing, rows, reference.missing_rate, alternative="greater").pvalue) if rows and \
        reference.missing_rate < 1 else 1.0
    grew = p_value < MISSING_ALPHA and rate - reference.missing_rate >= MIN_MISSING_GROWTH
    result = ColumnQuality(column=reference.name, rows=rows, missing_rate=rate,
                           reference_missing_rate=reference.missing_rate, missing_p_value=p_value,
                           missing_grew=grew, flagged=grew, reasons=[])
    if grew:
        result.reasons.append(f"{rate:.1%} missing where the reference had {reference.missing_rate:.1%} "
                              f"(p = {p_value:.2g})")
    share = 0.0
    if reference.kind == "categorical" and not reference.other:
        labels = present.astype(str)
        unseen = labels[~labels.isin(list(reference.categories or {}))]
        result.unseen = len(unseen)
        result.unseen_examples = unseen.value_counts().index[:5].tolist()
        share = len(unseen) / max(len(labels), 1)
        what = f"unseen categories ({', '.join(map(repr, result.unseen_examples))})"
    elif reference.kind == "numeric" and reference.edges:
        result.out_of_range = int(((present < reference.edges[0]) | (present > reference.edges[-1])).sum())
        share = result.out_of_range / max(len(present), 1)
        what = f"values outside the reference's range [{reference.edges[0]:g}, {reference.edges[-1]:g}]"
    if share >= MAX_UNUSUAL_SHARE:
        result.flagged = True
        result.reasons.append(f"{share:.1%} {what}")
    return result


def check_quality(profile: ReferenceProfile, current: pd.DataFrame) -> DataQuality:
    """The data quality of every profiled input column of `current`."""
    columns = [_column_quality(reference, current[reference.name]) for reference in profile.columns
               if reference.name in current.columns]
    return DataQuality(rows=len(current), columns=columns, flagged_columns=[c.column for c in columns if c.flagged])
