"""The statistics every table uses: t intervals, paired tests, marks against the best, and the
two-way split of a schedules x trainings table (between-training variation).

Every interval is two-sided at ``LEVEL``; a mark is ``*`` (lowest mean), ``≈`` (not
significantly worse than it, p >= 1 - LEVEL) or ``''`` (significantly worse).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping

import numpy as np
from scipy import stats

LEVEL = 0.95
BEST, TIED, WORSE = "*", "≈", ""


def t_quantile(dof, level: float = LEVEL):
    """The two-sided Student-t quantile at ``level`` (array-valued for an array of dof)."""
    return stats.t.ppf(0.5 + level / 2, dof)


def interval(values: Iterable[float | None], level: float = LEVEL) -> tuple[float, float, float, int]:
    """(mean, half-width of the t interval, sample sd, n) of independent values; missing and
    non-finite values are left out; the half-width is NaN with fewer than 2 values."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    if n == 1:
        return float(x[0]), float("nan"), float("nan"), 1
    sd = float(x.std(ddof=1))
    return float(x.mean()), float(t_quantile(n - 1, level) * sd / np.sqrt(n)), sd, n


def paired_p(a, b) -> float:
    """Two-sided paired t-test p-value of two series measured on the same units (seeds or
    trainings, in the same order). NaN with fewer than 2 pairs; a constant difference gives
    1 when it is zero, else 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2:
        return float("nan")
    d = a - b
    if np.allclose(d, d[0]):
        return 1.0 if np.allclose(a, b) else 0.0
    return float(stats.ttest_rel(a, b).pvalue)


def marks(means: Mapping[Hashable, float], p_vs: Callable[[Hashable, Hashable], float],
          level: float = LEVEL) -> tuple[Hashable, dict[Hashable, str], dict[Hashable, float]]:
    """-> (best, mark per key, p against the best per key). ``p_vs(key, best)`` is the
    two-sided p of the difference between a key and the best (lowest mean) one."""
    best = min(means, key=lambda k: means[k])
    p = {k: (float("nan") if k == best else p_vs(k, best)) for k in means}
    mark = {k: BEST if k == best else (TIED if not p[k] < 1 - level else WORSE) for k in means}
    return best, mark, p


def sd_interval(ms: float, dof: int, subtract: float = 0.0, level: float = LEVEL) -> tuple[float, float, float]:
    """(sd, low, high) of a standard deviation estimated by a mean square ``ms`` with ``dof``
    degrees of freedom, less a known variance ``subtract`` (chi-square interval; floored at 0)."""
    lo_q, hi_q = stats.chi2.ppf([1 - (1 - level) / 2, (1 - level) / 2], dof)
    return (float(np.sqrt(max(0.0, ms - subtract))), float(np.sqrt(max(0.0, ms * dof / lo_q - subtract))),
            float(np.sqrt(max(0.0, ms * dof / hi_q - subtract))))


def double_centre(m: np.ndarray) -> np.ndarray:
    """An S x k table less its row means and column means, plus the grand mean: the residual
    of the two-way (row + column) split."""
    return m - m.mean(axis=1, keepdims=True) - m.mean(axis=0, keepdims=True) + m.mean()


def stability_variances(m: np.ndarray) -> np.ndarray:
    """Per row of an S x k table (schedules x trainings, S >= 3): an unbiased estimate of the
    row's own variance between columns with each column's shared shift removed (Shukla's
    stability variance). From the double-centred residuals e: q_i = sum_r e_ir^2 / (k - 1) and
    sigma_i^2 = S / (S - 2) * (q_i - sum(q) / (S (S - 1))). Their mean is the residual mean
    square; a value may fall below 0."""
    s, k = m.shape
    q = (double_centre(m) ** 2).sum(axis=1) / (k - 1)
    return s / (s - 2) * (q - q.sum() / (s * (s - 1)))


def welch_anova_p(means: np.ndarray, se2: np.ndarray, n: np.ndarray) -> float:
    """Welch's heteroscedastic one-way ANOVA from group means, squared standard errors and
    sizes (for two groups: Welch's t-test)."""
    k, w = len(means), 1 / se2
    mw = float((w * means).sum() / w.sum())
    h = float((((1 - w / w.sum()) ** 2) / (n - 1)).sum())
    f = float((w * (means - mw) ** 2).sum() / (k - 1)) / (1 + 2 * (k - 2) / (k * k - 1) * h)
    return float(stats.f.sf(f, k - 1, (k * k - 1) / (3 * h)))


def levene_p(rows: np.ndarray) -> float:
    """Levene's test (median-centred, Brown-Forsythe) that the rows of a table vary alike;
    NaN when no row varies."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(stats.levene(*rows, center="median").pvalue)


def one_sample_p(x) -> float:
    """Two-sided one-sample t-test of mean 0; NaN when the values do not vary."""
    x = np.asarray(x, dtype=float)
    return float(stats.ttest_1samp(x, 0).pvalue) if len(x) > 1 and x.std() > 0 else float("nan")


def diff_p(mean_a: float, var_a: float, mean_b: float, var_b: float, dof: float) -> float:
    """Two-sided t-test p of the difference of two independent estimates with known
    variances and a shared number of degrees of freedom."""
    t = (mean_a - mean_b) / np.sqrt(var_a + var_b)
    return float(2 * stats.t.sf(abs(t), dof))
