"""Statistics over seeds and over problems, with every degenerate case made explicit.

Library calls do the work: :func:`scipy.stats.wilcoxon`, :func:`scipy.stats.ttest_rel`,
:func:`scipy.stats.bootstrap`, :func:`scipy.stats.friedmanchisquare`,
:func:`scikit_posthocs.posthoc_nemenyi_friedman` and the studentized range distribution. Written
here: Holm's step-down correction (see :func:`holm`), the guards around the tests (identical series,
constant data, too few blocks to ever reach alpha), the paired effect size, the probability of
improvement (Agarwal et al., NeurIPS 2021), the stratified-bootstrap IQM and the CD-diagram groups
(Demšar, JMLR 2006).

Conventions: a p-value that cannot be computed is NaN and its result is flagged, never significant;
an effect size of zero-variance differences is undefined (NaN, label "undefined"), never "large".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scikit_posthocs as sp
from scipy import stats

TESTS = ("wilcoxon", "ttest")


# ----------------------------------------------------------------------------------------- descriptive
def bootstrap_ci(x: Sequence[float], confidence: float = 0.95, n_resamples: int = 9999,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; (nan, nan) with fewer than two finite values.

    Constant data gives the degenerate interval (c, c).
    """
    a = np.asarray(x, dtype=float)
    a = a[np.isfinite(a)]
    if a.size < 2:
        return (math.nan, math.nan)
    if np.ptp(a) == 0:
        return (float(a[0]), float(a[0]))
    res = stats.bootstrap((a,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                          method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def iqm(x: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (scipy's 25% two-sided trimmed mean)."""
    a = np.asarray(x, dtype=float)
    a = a[np.isfinite(a)]
    return float(stats.trim_mean(a, 0.25)) if a.size else math.nan


def stratified_bootstrap_iqm(values: Sequence[float], strata: Sequence, confidence: float = 0.95,
                             n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """IQM of ``values`` and its percentile CI, resampling runs with replacement within each stratum
    (a problem), as in Agarwal et al. (NeurIPS 2021) "Deep RL at the edge of the statistical precipice"."""
    v = np.asarray(values, dtype=float)
    s = np.asarray(strata)
    keep = np.isfinite(v)
    v, s = v[keep], s[keep]
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    point = iqm(v)
    if v.size < 2:
        return (point, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    cols = []
    for key in pd.unique(s):
        group = v[s == key]
        cols.append(group[rng.integers(0, group.size, size=(n_resamples, group.size))])
    samples = np.concatenate(cols, axis=1)
    boot = stats.trim_mean(samples, 0.25, axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return (point, float(lo), float(hi))


# --------------------------------------------------------------------------------------- paired tests
def min_attainable_p(test: str, n: int) -> float:
    """The smallest two-sided p-value ``test`` can give with ``n`` pairs (non-zero differences).

    Wilcoxon's exact null puts probability 2 / 2^n on the most extreme outcome; a paired t-test can
    reach any level with n >= 2 (unless the differences are constant).
    """
    if n < 1:
        return 1.0
    if test == "wilcoxon":
        return min(1.0, 2.0 / 2.0 ** n)
    if test == "ttest":
        return 0.0 if n >= 2 else 1.0
    raise ValueError(f"test must be one of {TESTS}, got {test!r}")


def effect_size_dz(diffs: Sequence[float]) -> float:
    """Cohen's d_z of paired differences: mean / sample std. NaN when n < 2 or the std is 0."""
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return math.nan
    sd = float(np.std(d, ddof=1))
    if not np.isfinite(sd) or sd <= 1e-12 * max(1.0, float(np.max(np.abs(d)))):
        return math.nan
    return float(np.mean(d) / sd)


def effect_label(d: float) -> str:
    """Cohen's thresholds on |d|: negligible < 0.2 <= small < 0.5 <= medium < 0.8 <= large."""
    if d is None or not np.isfinite(d):
        return "undefined"
    a = abs(d)
    return "negligible" if a < 0.2 else "small" if a < 0.5 else "medium" if a < 0.8 else "large"


def prob_improvement(x: Sequence[float], y: Sequence[float]) -> float:
    """P(X > Y) + P(X = Y) / 2 over all pairs of runs (Agarwal et al. 2021); NaN if either is empty."""
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return math.nan
    gt = (a[:, None] > b[None, :]).mean()
    eq = (a[:, None] == b[None, :]).mean()
    return float(gt + 0.5 * eq)


@dataclass(frozen=True)
class PairedResult:
    """A paired two-sided test of x against y over matched blocks (x - y > 0: x is better)."""

    n: int                  # matched pairs with finite values
    mean_diff: float
    statistic: float
    p: float                # NaN when undefined
    min_p: float            # smallest p this test could give with these pairs
    effect: float           # Cohen's d_z, NaN when undefined
    flag: str               # "" | "no difference" | "too few pairs" | "undefined"

    @property
    def effect_label(self) -> str:
        return effect_label(self.effect)


def paired_test(x: Sequence[float], y: Sequence[float], test: str = "wilcoxon") -> PairedResult:
    """Two-sided paired test of ``x`` against ``y`` (aligned: block i of x pairs with block i of y).

    All-zero differences give p = 1 with flag "no difference" (never significant); fewer than two
    pairs, or a t-test on constant non-zero differences, give p = NaN with a flag.
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    n = int(d.size)
    mean_diff = float(d.mean()) if n else math.nan
    if n < 2:
        return PairedResult(n, mean_diff, math.nan, math.nan, 1.0, math.nan, "too few pairs")
    nonzero = int(np.count_nonzero(d))
    eff = effect_size_dz(d)
    if nonzero == 0:
        return PairedResult(n, 0.0, 0.0, 1.0, 1.0, math.nan, "no difference")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if test == "wilcoxon":
            res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
            min_p = min_attainable_p("wilcoxon", nonzero)
        else:
            if not np.isfinite(eff):
                return PairedResult(n, mean_diff, math.nan, math.nan, 0.0, math.nan, "undefined")
            res = stats.ttest_rel(a[ok], b[ok])
            min_p = min_attainable_p("ttest", n)
    p = float(res.pvalue)
    stat = float(res.statistic)
    if not np.isfinite(p):
        return PairedResult(n, mean_diff, stat, math.nan, min_p, eff, "undefined")
    return PairedResult(n, mean_diff, stat, p, min_p, eff, "")


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (Holm 1979); NaN entries stay NaN and do not count as hypotheses.

    Same values as ``statsmodels.stats.multitest.multipletests(p, method="holm")[1]`` (checked in the
    tests), computed here because that function runs a full ``gc.collect()`` per call (0.1 s), and a
    report makes hundreds of calls.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size:
        order = ok[np.argsort(p[ok], kind="stable")]
        m = order.size
        adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
        out[order] = np.minimum(adj, 1.0)
    return out


def verdict(p_adjusted: float, mean_diff: float, alpha: float) -> str:
    """'better than' / 'worse than' when the adjusted p < alpha, else 'indistinguishable from';
    'undefined' when there is no p-value."""
    if p_adjusted is None or not np.isfinite(p_adjusted):
        return "undefined"
    if p_adjusted < alpha and np.isfinite(mean_diff) and mean_diff != 0:
        return "better than" if mean_diff > 0 else "worse than"
    return "indistinguishable from"


# ------------------------------------------------------------------------------- across problems
@dataclass(frozen=True)
class FriedmanResult:
    n_blocks: int
    k: int
    statistic: float
    p: float
    min_p: float
    flag: str


def friedman(matrix: np.ndarray) -> FriedmanResult:
    """Friedman's test (tie-corrected) over blocks (rows) x methods (columns).

    Needs at least 2 blocks and 3 methods; all-tied blocks give p = NaN, flag "constant data".
    ``min_p`` is the chi-square p of the most extreme possible ranking (every block ranks alike).
    """
    m = np.asarray(matrix, dtype=float)
    n, k = m.shape if m.ndim == 2 else (0, 0)
    if n < 2 or k < 3:
        return FriedmanResult(n, k, math.nan, math.nan, 1.0, "needs at least 2 blocks and 3 methods")
    min_p = float(stats.chi2.sf(n * (k - 1), k - 1))
    if np.all(np.ptp(m, axis=1) == 0):
        return FriedmanResult(n, k, math.nan, math.nan, min_p, "constant data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.friedmanchisquare(*m.T)
    p = float(res.pvalue)
    return FriedmanResult(n, k, float(res.statistic), p if np.isfinite(p) else math.nan, min_p,
                          "" if np.isfinite(p) else "undefined")


def nemenyi(matrix: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Nemenyi post-hoc p-values after Friedman (scikit-posthocs), labelled by method."""
    m = np.asarray(matrix, dtype=float)
    out = sp.posthoc_nemenyi_friedman(m)
    out.index = list(names)
    out.columns = list(names)
    return out


def critical_difference(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Nemenyi critical difference (Demšar 2006): q_alpha = studentized range quantile / sqrt(2),
    CD = q_alpha sqrt(k (k + 1) / (6 n)). Returns (q_alpha, CD)."""
    if k < 2 or n < 1:
        return (math.nan, math.nan)
    q = float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))
    return q, q * math.sqrt(k * (k + 1) / (6.0 * n))


def average_ranks(matrix: pd.DataFrame, higher_is_better: bool = True) -> pd.Series:
    """Mean rank of each column over rows (rank 1 = best; ties share the average rank)."""
    ranks = matrix.rank(axis=1, ascending=not higher_is_better, method="average")
    return ranks.mean(axis=0)


def cd_groups(avg_ranks: Mapping[str, float], cd: float) -> list[tuple[str, ...]]:
    """Maximal groups of methods whose average ranks differ by less than ``cd`` (the bars of a CD diagram).

    Methods are ordered by (rank, name), so the groups never depend on the order methods are given in.
    Groups contained in another group are dropped; single methods are not groups.
    """
    items = sorted(((float(r), str(m)) for m, r in avg_ranks.items()), key=lambda t: (t[0], t[1]))
    if not np.isfinite(cd):
        return []
    groups: list[tuple[int, int]] = []
    for i in range(len(items)):
        j = i
        while j + 1 < len(items) and items[j + 1][0] - items[i][0] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in groups):
            groups.append((i, j))
    return [tuple(items[t][1] for t in range(a, b + 1)) for a, b in groups]


def pairwise_wilcoxon(matrix: pd.DataFrame, test: str = "wilcoxon") -> pd.DataFrame:
    """Every pair of columns tested over the rows (blocks), Holm-corrected over all pairs."""
    cols = list(matrix.columns)
    rows = []
    for i in range(len(cols)):
        for j in range(i + 1, len(cols)):
            r = paired_test(matrix[cols[i]].to_numpy(), matrix[cols[j]].to_numpy(), test)
            rows.append({"method_a": cols[i], "method_b": cols[j], "n": r.n, "mean_diff": r.mean_diff,
                         "p": r.p, "min_p": r.min_p, "effect_dz": r.effect, "flag": r.flag})
    out = pd.DataFrame(rows, columns=["method_a", "method_b", "n", "mean_diff", "p", "min_p", "effect_dz", "flag"])
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else []
    return out
