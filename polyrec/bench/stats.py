"""Statistics over seeds: mean ± sample std, and paired tests between two rows.

Pairing: seed k of row A and seed k of row B saw the same split and the same initialisation seed, so the
per-seed difference A_k - B_k removes the split-to-split variation both rows share. The main test is
the paired two-sided t-test (scipy.stats.ttest_rel); it assumes the differences are roughly normal and
the seeds independent. The Wilcoxon signed-rank test (exact, two-sided) drops the normality assumption
but, with n seeds, can never give p below 2 / 2**n (0.0625 for 5 seeds): it cannot reach 0.05 before 6.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ALPHA = 0.05


def finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def mean_std(values: Iterable[Any]) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; NaN for one value) and count of the finite values."""
    xs = finite(values)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(np.mean(xs))
    std = float(np.std(xs, ddof=1)) if n > 1 else math.nan
    return mean, std, n


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided exact Wilcoxon signed-rank p with n non-zero, untied differences."""
    return 2.0 / 2 ** n if n >= 1 else math.nan


@dataclass
class PairedTest:
    n: int  # seeds both rows have (finite values)
    mean_diff: float  # mean of a - b over those seeds
    t_stat: float
    t_p: float  # paired two-sided t-test
    wilcoxon_p: float  # exact two-sided signed-rank test
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired(a: Mapping[Any, Any], b: Mapping[Any, Any]) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Seeds present (and finite) in both, with the two value arrays in seed order."""
    keys = []
    for k in a:
        if k in b and finite([a[k]]) and finite([b[k]]):
            keys.append(k)
    keys.sort(key=lambda k: (str(type(k)), k))
    return keys, np.array([float(a[k]) for k in keys]), np.array([float(b[k]) for k in keys])


def paired_test(a: Mapping[Any, Any], b: Mapping[Any, Any]) -> PairedTest:
    """Paired tests of per-seed values a[seed] vs b[seed] over the seeds both have. Never raises:

    * fewer than 2 pairs: p = NaN;
    * every difference exactly 0: p = 1 (nothing to see);
    * differences all equal but not 0 (zero variance): t-test undefined, p = NaN.
    """
    from scipy import stats

    keys, x, y = paired(a, b)
    n = len(keys)
    if n == 0:
        return PairedTest(0, math.nan, math.nan, math.nan, math.nan, "no seeds in common")
    d = x - y
    mean_diff = float(np.mean(d))
    if n < 2:
        return PairedTest(n, mean_diff, math.nan, math.nan, math.nan, "fewer than 2 paired seeds")
    if np.all(d == 0):
        return PairedTest(n, 0.0, 0.0, 1.0, 1.0, "identical values on every seed")
    note = ""
    scale = max(float(np.max(np.abs(d))), 1e-300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if float(np.max(d) - np.min(d)) <= 1e-12 * scale:
            t_stat, t_p, note = math.nan, math.nan, "differences have zero variance: t-test undefined"
        else:
            try:
                res = stats.ttest_rel(x, y)
                t_stat, t_p = float(res.statistic), float(res.pvalue)
            except Exception as exc:  # pragma: no cover - defensive
                t_stat, t_p, note = math.nan, math.nan, f"t-test failed: {exc}"
        try:
            w_p = float(stats.wilcoxon(x, y, method="exact").pvalue)
        except Exception as exc:  # e.g. too many zero differences for the exact method
            w_p = math.nan
            note = (note + "; " if note else "") + f"Wilcoxon not computed: {exc}"
    return PairedTest(n, mean_diff, t_stat, t_p, w_p, note)


def significant(test: PairedTest, lower_is_better: bool, alpha: float = ALPHA) -> bool:
    """Whether `a` (the first argument of paired_test) beats `b` at level alpha (t-test, two-sided)."""
    if not (test.n >= 2 and math.isfinite(test.t_p) and test.t_p < alpha):
        return False
    return test.mean_diff < 0 if lower_is_better else test.mean_diff > 0
