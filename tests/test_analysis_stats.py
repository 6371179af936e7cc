"""Statistics of the analysis: published check values and the degenerate cases other packages got wrong."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import stats

FRIEDMAN_X = np.array([[31, 27, 24], [31, 28, 31], [45, 29, 46], [21, 18, 48], [42, 36, 46], [32, 17, 40]], float)


def test_friedman_check_values_tie_corrected():
    r = stats.friedman(FRIEDMAN_X)
    assert r.statistic == pytest.approx(6.8696, abs=1e-4)
    assert r.p == pytest.approx(0.0322, abs=1e-4)
    assert (round(r.statistic, 4), round(r.p, 4)) == (6.8696, 0.0322)      # to the stated decimals
    assert r.flag == ""
    # Most extreme ranking of 6 blocks x 3 methods: chi2 = N (k - 1) = 12.
    assert r.min_p == pytest.approx(math.exp(-12 / 2), rel=1e-9)


def test_nemenyi_check_values():
    p = stats.nemenyi(FRIEDMAN_X, ["a", "b", "c"])
    assert p.loc["a", "b"] == pytest.approx(0.1455, abs=1e-4)
    assert p.loc["a", "c"] == pytest.approx(0.8322, abs=1e-4)
    assert p.loc["b", "c"] == pytest.approx(0.0376, abs=1e-4)
    assert p.loc["c", "b"] == p.loc["b", "c"]
    assert [round(p.loc[i, j], 4) for i, j in (("a", "b"), ("a", "c"), ("b", "c"))] == [0.1455, 0.8322, 0.0376]


def test_critical_difference_k4_n14():
    q, cd = stats.critical_difference(4, 14, 0.05)
    assert q == pytest.approx(2.569, abs=5e-4)
    assert cd == pytest.approx(1.2536, abs=5e-5)
    assert (round(q, 3), round(cd, 4)) == (2.569, 1.2536)
    assert cd == pytest.approx(q * math.sqrt(4 * 5 / (6 * 14)), rel=1e-12)


# 14 blocks x 4 methods (higher = better). By hand: A is ranked 1st in 10 blocks, 2nd in 3, 3rd in 1
# -> 19/14; B 26/14; C 41/14; D 54/14. With CD = 1.2536: A-B 0.50, B-C 1.07, C-D 0.93 are within CD,
# A-C 1.57 and B-D 2.00 are not, so the diagram draws three bars: (A, B), (B, C), (C, D).
CD_BLOCKS = np.array([[4, 3, 2, 1]] * 6 + [[3, 4, 2, 1]] * 3 + [[4, 2, 3, 1]] * 2 + [[4, 3, 1, 2]] * 2
                     + [[2, 4, 3, 1]], float)


def test_cd_groups_k4_n14_independent_of_method_order():
    import itertools

    from analysis import plots

    base = pd.DataFrame(CD_BLOCKS, columns=list("ABCD"))
    q, cd = stats.critical_difference(4, 14, 0.05)
    expected_ranks = {"A": 19 / 14, "B": 26 / 14, "C": 41 / 14, "D": 54 / 14}
    expected = [("A", "B"), ("B", "C"), ("C", "D")]
    pngs = set()
    for perm in itertools.permutations("ABCD"):
        m = base[list(perm)]
        ranks = stats.average_ranks(m, higher_is_better=True)
        assert ranks.to_dict() == pytest.approx(expected_ranks)
        assert stats.cd_groups(ranks.to_dict(), cd) == expected
        if perm in (("A", "B", "C", "D"), ("D", "B", "A", "C"), ("C", "A", "D", "B")):
            pngs.add(plots.cd_diagram(ranks.to_dict(), cd, stats.cd_groups(ranks.to_dict(), cd), "t"))
    assert len(pngs) == 1          # the drawn diagram is byte-identical whatever the column order


def test_friedman_undefined_cases():
    assert stats.friedman(FRIEDMAN_X[:1]).flag.startswith("needs")
    assert stats.friedman(FRIEDMAN_X[:, :2]).flag.startswith("needs")
    const = stats.friedman(np.ones((4, 3)))
    assert const.flag == "constant data" and math.isnan(const.p)


def test_cd_groups_hand_example():
    ranks = {"A": 1.0, "B": 1.5, "C": 2.9, "D": 3.2}
    assert stats.cd_groups(ranks, 1.25) == [("A", "B"), ("C", "D")]
    assert stats.cd_groups(ranks, 1.5) == [("A", "B"), ("B", "C"), ("C", "D")]
    assert stats.cd_groups(ranks, 10) == [("A", "B", "C", "D")]
    assert stats.cd_groups(ranks, 0.1) == []
    # Exactly CD apart is a significant difference (Demšar: "differ by at least CD").
    assert stats.cd_groups({"A": 1.0, "B": 2.0}, 1.0) == []


@pytest.mark.parametrize("case", range(60))
def test_cd_groups_do_not_depend_on_method_order(case):
    rng = np.random.default_rng(case)
    k = int(rng.integers(2, 8))
    values = rng.choice([1.0, 1.5, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0], size=k)  # ties on purpose
    cd = float(rng.uniform(0.3, 3.0))
    ranks = {f"m{i}": float(v) for i, v in enumerate(values)}
    expected = stats.cd_groups(ranks, cd)
    for _ in range(5):
        order = rng.permutation(k)
        items = list(ranks.items())
        assert stats.cd_groups({items[i][0]: items[i][1] for i in order}, cd) == expected
    for g in expected:
        rs = [ranks[m] for m in g]
        assert max(rs) - min(rs) < cd
    # Maximal: no method outside a group could join it.
    for g in expected:
        rs = [ranks[m] for m in g]
        for m, r in ranks.items():
            if m not in g:
                assert max(rs + [r]) - min(rs + [r]) >= cd or any(set(g) | {m} <= set(h) for h in expected)


@pytest.mark.parametrize("test", stats.TESTS)
@pytest.mark.parametrize("n", [2, 5, 20, 60])
def test_identical_series_are_never_significant(test, n):
    x = np.linspace(0.5, 1.1, n)
    r = stats.paired_test(x, x.copy(), test)
    assert r.p == 1.0 and r.flag == "no difference" and r.mean_diff == 0.0
    assert math.isnan(r.effect) and r.effect_label == "undefined"
    assert stats.verdict(stats.holm([r.p])[0], r.mean_diff, 0.05) == "indistinguishable from"
    pw = stats.pairwise_wilcoxon(pd.DataFrame({"a": x, "b": x, "c": x + 1.0}), test)
    same = pw[(pw["method_a"] == "a") & (pw["method_b"] == "b")].iloc[0]
    assert same["p"] == 1.0 and same["p_holm"] == 1.0 and same["flag"] == "no difference"


def test_reported_min_p_is_honest_with_ties_and_zeros():
    """The report says "cannot reach alpha" from min_p; no series, ties and zeros included, beats it."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(2, 12))
        d = rng.integers(-1, 4, size=n).astype(float)
        r = stats.paired_test(d, np.zeros(n))
        if np.isfinite(r.p):
            assert r.p >= r.min_p - 1e-12, (d, r)
    # Wilcoxon with N = 5 blocks can never reach 0.05, even when all five go one way with ties.
    r = stats.paired_test([1, 1, 2, 3, 4], [0] * 5)
    assert r.p == pytest.approx(0.0625) and stats.verdict(r.p, r.mean_diff, 0.05) == "indistinguishable from"


def test_constant_data_is_undefined_never_significant_or_large():
    const = np.full(6, 3.0)
    assert math.isnan(stats.effect_size_dz(const - const))
    shift = stats.paired_test(const + 1.0, const, "ttest")
    assert shift.flag == "undefined" and math.isnan(shift.p) and shift.effect_label == "undefined"
    assert stats.verdict(stats.holm([shift.p])[0], shift.mean_diff, 0.05) == "undefined"
    w = stats.paired_test(const + 1.0, const, "wilcoxon")
    assert w.effect_label == "undefined"                      # never "large" for zero variance
    fr = stats.friedman(np.tile([1.0, 1.0, 1.0], (5, 1)))
    assert fr.flag == "constant data" and math.isnan(fr.p) and math.isnan(fr.statistic)
    assert stats.verdict(math.nan, 1.0, 0.05) == "undefined"
    assert stats.bootstrap_ci(const) == (3.0, 3.0)
    assert stats.prob_improvement(const, const) == 0.5


def test_wilcoxon_min_p_and_underpowered():
    assert stats.min_attainable_p("wilcoxon", 5) == pytest.approx(0.0625)
    assert stats.min_attainable_p("wilcoxon", 6) == pytest.approx(0.03125)
    # Five pairs all in one direction: the most extreme outcome, still p = 0.0625 > 0.05.
    r = stats.paired_test([2, 3, 4, 5, 6], [1, 1, 1, 1, 1])
    assert r.p == pytest.approx(0.0625)
    assert r.min_p == pytest.approx(0.0625)
    assert stats.verdict(r.p, r.mean_diff, 0.05) == "indistinguishable from"
    r6 = stats.paired_test([2, 3, 4, 5, 6, 7], [1] * 6)
    assert r6.p == pytest.approx(0.03125)
    assert stats.verdict(r6.p, r6.mean_diff, 0.05) == "better than"
    assert stats.verdict(r6.p, -r6.mean_diff, 0.05) == "worse than"


def test_constant_differences_effect_size_undefined():
    r = stats.paired_test([2, 3, 4], [1, 2, 3])  # every difference is exactly 1
    assert math.isnan(r.effect) and r.effect_label == "undefined"
    t = stats.paired_test([2, 3, 4], [1, 2, 3], test="ttest")
    assert math.isnan(t.p) and t.flag == "undefined"
    assert stats.verdict(t.p, t.mean_diff, 0.05) == "undefined"


def test_effect_size_dz_hand_value():
    d = np.array([1.0, 2.0, 3.0])
    assert stats.effect_size_dz(d) == pytest.approx(2.0 / 1.0)
    assert stats.effect_label(0.1) == "negligible" and stats.effect_label(-0.6) == "medium"
    assert stats.effect_label(math.nan) == "undefined"


def test_paired_ttest_matches_formula():
    x = np.array([1.0, 2.5, 2.0, 4.0])
    y = np.array([0.5, 1.0, 2.2, 3.0])
    d = x - y
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    r = stats.paired_test(x, y, "ttest")
    assert r.statistic == pytest.approx(t)
    assert r.min_p == 0.0


def test_too_few_pairs_and_nan_pairs():
    r = stats.paired_test([1.0, math.nan, 3.0], [2.0, 1.0, math.nan])
    assert r.n == 1 and math.isnan(r.p) and r.flag == "too few pairs"


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(3)
    for n in (1, 2, 5, 17):
        p = rng.uniform(0, 0.2, n)
        p[rng.integers(0, n)] = p[0]            # a tie
        assert np.allclose(stats.holm(p), multipletests(p, method="holm")[1])


def test_holm_ignores_nan():
    p = stats.holm([0.01, math.nan, 0.04, 0.03])
    assert math.isnan(p[1])
    assert p[0] == pytest.approx(0.03) and p[3] == pytest.approx(0.06) and p[2] == pytest.approx(0.06)


def test_probability_of_improvement():
    assert stats.prob_improvement([3, 4], [1, 2]) == 1.0
    assert stats.prob_improvement([1, 2], [1, 2]) == 0.5
    assert stats.prob_improvement([2], [1, 2, 3]) == pytest.approx((1 + 0.5) / 3)
    assert math.isnan(stats.prob_improvement([], [1]))


def test_bootstrap_ci():
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 1.0, 30)
    lo, hi = stats.bootstrap_ci(x)
    assert lo < x.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * x.std(ddof=1) / math.sqrt(30), rel=0.25)
    assert stats.bootstrap_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([1.0]))


def test_iqm_and_stratified_bootstrap():
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(np.mean([3, 4, 5, 6]))
    v = np.r_[np.zeros(10), np.ones(10) * 10]
    s = np.r_[["a"] * 10, ["b"] * 10]
    point, lo, hi = stats.stratified_bootstrap_iqm(v, s)
    # Within-stratum resampling keeps 10 zeros and 10 tens: the IQM cannot move.
    assert point == lo == hi == pytest.approx(5.0)


def test_pairwise_holm_and_average_ranks():
    m = pd.DataFrame(FRIEDMAN_X, columns=["a", "b", "c"])
    pw = stats.pairwise_wilcoxon(m)
    assert len(pw) == 3 and (pw["p_holm"] >= pw["p"]).all()
    r = stats.average_ranks(m, higher_is_better=True)
    # Per block ranks (1 = highest): c is best in 5 of 6 blocks.
    assert r["c"] == pytest.approx((3 + 1.5 + 1 + 1 + 1 + 1) / 6)
    assert r.sum() == pytest.approx(6.0)
