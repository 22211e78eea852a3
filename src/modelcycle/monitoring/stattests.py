"""Drift tests: one interface over a family of two-sample tests, after Evidently's registry.

Each `StatTest` compares a column's reference profile (`modelcycle.monitoring.profiles`) with
a current sample of the same column and returns a score. A *p-value* test (``ks``,
``chisquare``, ``z``) returns a p-value, and a column drifts when it is *below* the
threshold (a significance level, default 0.05). A *distance* (``wasserstein``, the normed
first Wasserstein distance; ``jensenshannon``, the Jensen-Shannon distance; ``psi``, the
population stability index) drifts when it reaches its threshold (default 0.1). The
reference is the profile's quantile bins or counts, never the training rows:

- ``ks``: the largest gap between the two CDFs at the profile's bin edges (or, for a column
  with few values, at every value), with the two-sample Kolmogorov distribution of that gap
  for the reference's and the current's sizes;
- ``chisquare``: the chi-square test of homogeneity of the 2 x k table of counts (reference
  and current, per category); a category the reference never had is a column of its own;
- ``z``: the two-proportion z-test, for a column of two values;
- ``wasserstein``: the area between the two CDFs (linear within a bin, exact beyond the
  reference's range) over the reference's standard deviation (at least 0.001), as Evidently;
- ``jensenshannon`` and ``psi``: on the shares per category, per value, or per decile of the
  reference (plus a bin below its minimum and one above its maximum); PSI fills empty bins
  as Evidently does.

The default test of a column follows Evidently's rules, by type, distinct values and sample
size, with one change: the size is the *smaller* of the two samples, not the reference's.
A window of live traffic is often a few hundred rows while training had many thousands, and
a distance between a large and a small sample is mostly the small one's noise; a test knows
its sample size. So, with n = min(reference rows, current rows) and v the distinct values:

=====================  =========================  ==========================
column                 n <= 1000                  n > 1000
=====================  =========================  ==========================
numeric, v > 5         ks                         wasserstein
numeric, v <= 5        chisquare (z if v <= 2)    jensenshannon
categorical            chisquare (z if v <= 2)    jensenshannon
=====================  =========================  ==========================

The effect-size rule. With a million rows a p-value test calls a shift of a hundredth of a
standard deviation significant (evidently#50): real, and of no consequence. So a p-value
test's drift must also be *large*: the column's distance (normed Wasserstein for ``ks``,
Jensen-Shannon for ``chisquare`` and ``z``) must reach `min_effect`, by default the threshold
the large-sample default uses for the same distance (0.1). A column drifts when the test says
the shift is real *and* the distance says it is big enough to matter; on large samples the
distance decides alone, as in Evidently. `min_effect: 0` turns the rule off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import numpy as np

from modelcycle.monitoring.profiles import ColumnKind, ColumnProfile

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["STATTESTS", "CurrentSample", "StatTest", "UnknownStatTest", "default_stattest", "get_stattest",
           "ks_statistic"]

SMALL_SAMPLE = 1000
"""At or below this many rows a p-value test is the default, above it a distance (Evidently's cut)."""
FEW_VALUES = 5
"""A numeric column with at most this many distinct values is compared as categories (Evidently's cut)."""


class UnknownStatTest(ValueError):
    """A drift test name that is not registered, or a test that cannot take the column's type."""


class CurrentSample:
    """The current values of one column, measured against its reference profile; the counts
    the tests share are computed once, on first use."""

    def __init__(self, reference: ColumnProfile, values: pd.Series) -> None:
        import pandas as pd

        self.reference = reference
        self.rows = len(values)
        if reference.kind == "numeric":
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
            self.numbers = numbers[np.isfinite(numbers)]
            self.present = len(self.numbers)
        else:
            present = values.dropna()
            self.labels = present.astype(str) if present.dtype != object else present.map(str)
            self.present = len(self.labels)

    @property
    def missing(self) -> int:
        return self.rows - self.present

    @cached_property
    def category_counts(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(keys, reference counts, current counts) per category, or per value of a numeric
        column kept value by value. Categories the reference lumped into ``other`` stay there."""
        reference = self.reference
        if reference.kind == "numeric":
            assert reference.values is not None
            distinct, counts = np.unique(self.numbers, return_counts=True)
            current = {repr(float(v)): int(c) for v, c in zip(distinct, counts, strict=True)}
            known = reference.values
        else:
            current = self.labels.value_counts().to_dict()
            known = reference.categories or {}
            if reference.other:
                lumped = sum(count for key, count in current.items() if key not in known)
                current = {key: count for key, count in current.items() if key in known}
                current["\0other"] = lumped
                known = {**known, "\0other": reference.other}
        keys = list(known) + [key for key in current if key not in known]
        return (keys, np.array([known.get(k, 0) for k in keys], dtype=float),
                np.array([current.get(k, 0) for k in keys], dtype=float))

    @cached_property
    def distinct(self) -> int:
        """Distinct non-missing values in both samples together (more than `FEW_VALUES` is
        all that matters when the profile does not know them all)."""
        if self.reference.distinct is None:
            return FEW_VALUES + 1
        _, reference, current = self.category_counts
        return int(((reference + current) > 0).sum())

    @property
    def by_value(self) -> bool:
        """Whether the column is compared value by value rather than by quantile bins."""
        return self.reference.kind == "categorical" or self.reference.values is not None

    @cached_property
    def binned(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(edges, reference CDF, current CDF): both CDFs at the profile's bin edges."""
        edges = np.asarray(self.reference.edges, dtype=float)
        reference = np.asarray(self.reference.cdf, dtype=float)
        below = np.searchsorted(edges, self.numbers, side="left")  # edges strictly below each value
        current = np.cumsum(np.bincount(below, minlength=len(edges) + 1))[: len(edges)] / max(self.present, 1)
        return edges, reference, current

    @cached_property
    def tails(self) -> tuple[float, float]:
        """Mean distance of current values below the reference's minimum and above its maximum."""
        edges = self.reference.edges
        assert edges is not None
        n = max(self.present, 1)
        return (float(np.clip(edges[0] - self.numbers, 0, None).sum() / n),
                float(np.clip(self.numbers - edges[-1], 0, None).sum() / n))

    def shares(self) -> tuple[np.ndarray, np.ndarray]:
        """The reference's and the current's share per category, per value, or per bin: the
        reference's deciles, plus a bin below its minimum and one above its maximum. Ten bins,
        the usual choice for PSI: finer ones make the index mostly noise on a few hundred rows."""
        if self.by_value:
            _, reference, current = self.category_counts
        else:
            _, ref_cdf, cur_cdf = self.binned
            deciles = np.unique(np.searchsorted(ref_cdf, np.linspace(0.1, 1.0, 10) - 1e-9))
            reference = np.diff(np.concatenate([[0.0], ref_cdf[0:1], ref_cdf[deciles], [1.0]]))
            current = np.diff(np.concatenate([[0.0], cur_cdf[0:1], cur_cdf[deciles], [1.0]]))
        return reference / max(reference.sum(), 1e-12), current / max(current.sum(), 1e-12)


@dataclasses.dataclass(frozen=True)
class StatTest:
    """A drift test: `func(sample)` is its score; see the module's docstring for each one."""

    name: str
    display_name: str
    kind: Literal["p_value", "distance"]
    allowed_types: tuple[ColumnKind, ...]
    func: Callable[[CurrentSample], float]
    default_threshold: float
    effect: str | None = None
    """For a p-value test: the distance that measures the size of the shift."""

    def drifted(self, score: float, threshold: float) -> bool:
        if self.kind == "p_value":
            return score < threshold
        return score >= threshold


def _ks(sample: CurrentSample) -> float:
    from scipy.stats import kstwo

    statistic = ks_statistic(sample)
    n, m = sample.reference.present, sample.present
    if not n or not m:
        return 1.0
    return float(kstwo.sf(statistic, max(1, round(n * m / (n + m)))))


def ks_statistic(sample: CurrentSample) -> float:
    if sample.reference.values is not None:
        _, reference, current = sample.category_counts
        order = np.argsort([float(k) for k in sample.category_counts[0]])
        return float(np.abs(np.cumsum(reference[order]) / reference.sum()
                            - np.cumsum(current[order]) / max(current.sum(), 1)).max())
    _, reference, current = sample.binned
    return float(np.abs(reference - current).max())


def _chisquare(sample: CurrentSample) -> float:
    from scipy.stats import chi2_contingency

    _, reference, current = sample.category_counts
    table = np.array([reference, current])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or not reference.sum() or not current.sum():
        return 1.0
    return float(chi2_contingency(table, correction=False).pvalue)


def _z(sample: CurrentSample) -> float:
    from scipy.stats import norm

    _, reference, current = sample.category_counts
    n1, n2 = reference.sum(), current.sum()
    if not n1 or not n2 or ((reference > 0).sum() <= 1 and (current > 0).sum() <= 1
                            and np.argmax(reference) == np.argmax(current)):
        return 1.0
    p1, p2 = reference[0] / n1, current[0] / n2
    pooled = (reference[0] + current[0]) / (n1 + n2)
    spread = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if spread == 0:
        return 1.0
    return float(2 * norm.sf(abs(p1 - p2) / spread))


def _wasserstein(sample: CurrentSample) -> float:
    norm = max(sample.reference.std or 0.0, 0.001)
    if not sample.present:
        return 0.0
    if sample.reference.values is not None:
        keys, reference, current = sample.category_counts
        order = np.argsort([float(k) for k in keys])
        points = np.array([float(k) for k in keys])[order]
        gap = np.abs(np.cumsum(reference[order]) / reference.sum() - np.cumsum(current[order]) / current.sum())
        return float((gap[:-1] * np.diff(points)).sum() / norm)
    edges, reference, current = sample.binned
    a, b = (reference - current)[:-1], (reference - current)[1:]
    width = np.diff(edges)
    same_sign = a * b >= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        crossing = np.where(np.abs(a) + np.abs(b) > 0, (a * a + b * b) / (2 * (np.abs(a) + np.abs(b))), 0.0)
    area = np.where(same_sign, (np.abs(a) + np.abs(b)) / 2, crossing) * width
    below, above = sample.tails
    return float((area.sum() + below + above) / norm)


def _jensenshannon(sample: CurrentSample) -> float:
    from scipy.spatial.distance import jensenshannon

    reference, current = sample.shares()
    if not reference.sum() or not current.sum():
        return 0.0
    return float(jensenshannon(reference, current))


def _psi(sample: CurrentSample) -> float:
    reference, current = (_fill_zeros(s) for s in sample.shares())
    return float(((reference - current) * np.log(reference / current)).sum())


def _fill_zeros(shares: np.ndarray) -> np.ndarray:
    """Empty bins as Evidently fills them for PSI: a millionth of the smallest share when that
    is at most 0.0001, else 0.0001."""
    nonzero = shares[shares > 0]
    if not len(nonzero):
        return np.full_like(shares, 1.0 / max(len(shares), 1))
    smallest = nonzero.min()
    return np.where(shares > 0, shares, smallest / 1e6 if smallest <= 1e-4 else 1e-4)


STATTESTS: dict[str, StatTest] = {
    test.name: test
    for test in (
        StatTest("ks", "Kolmogorov-Smirnov p-value", "p_value", ("numeric",), _ks, 0.05, effect="wasserstein"),
        StatTest("chisquare", "chi-square p-value", "p_value", ("numeric", "categorical"), _chisquare, 0.05,
                 effect="jensenshannon"),
        StatTest("z", "Z-test p-value", "p_value", ("numeric", "categorical"), _z, 0.05, effect="jensenshannon"),
        StatTest("wasserstein", "Wasserstein distance (normed)", "distance", ("numeric",), _wasserstein, 0.1),
        StatTest("jensenshannon", "Jensen-Shannon distance", "distance", ("numeric", "categorical"),
                 _jensenshannon, 0.1),
        StatTest("psi", "PSI", "distance", ("numeric", "categorical"), _psi, 0.1),
    )
}
"""The registered drift tests, by name."""


def get_stattest(name: str, kind: ColumnKind | None = None) -> StatTest:
    """The test called `name`; raises `UnknownStatTest` listing the valid names, or saying
    which types the test takes when it cannot take `kind`."""
    test = STATTESTS.get(name)
    if test is None:
        raise UnknownStatTest(f"unknown drift test {name!r}; expected one of {', '.join(STATTESTS)}")
    if kind is not None and kind not in test.allowed_types:
        raise UnknownStatTest(f"drift test {name!r} takes {' or '.join(test.allowed_types)} columns, not {kind}")
    return test


def default_stattest(sample: CurrentSample) -> StatTest:
    """The test for a column by Evidently's rules, on the smaller sample (module docstring)."""
    small = min(sample.reference.present, sample.present) <= SMALL_SAMPLE
    few = sample.reference.kind == "categorical" or sample.distinct <= FEW_VALUES
    if not few:
        return STATTESTS["ks" if small else "wasserstein"]
    if small:
        return STATTESTS["chisquare" if sample.distinct > 2 else "z"]
    return STATTESTS["jensenshannon"]
