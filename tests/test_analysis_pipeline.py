"""The analysis end to end on synthetic studies written in the results layout of analysis.schema."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.errors import AnalysisError
from analysis.io import find_studies, read_results
from analysis.pipeline import Options, analyze
from analysis.synthetic import write_study

EFFECT = {"EW": 0.0, "RLW": 0.02, "UW": -0.03, "GOOD": 0.05}


def peaked(problem, task, metric, method, seed, epoch, split):
    """Validation peaks at epoch 3; the test value there is 0.65 + effect + 0.01 seed (+0.001 on 'right')."""
    if metric == "loss":
        return 1.0 / epoch
    bump = 0.1 if epoch == 3 else 0.0
    if split == "val":
        return 0.5 + bump + EFFECT[method]
    return 0.6 + bump / 2 + EFFECT[method] + 0.01 * seed + (0.001 if task == "right" else 0.0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    storage = tmp_path_factory.mktemp("store")
    write_study(storage, "demo", methods=list(EFFECT), seeds=3, epochs=5, values=peaked,
                statuses={("UW", 2): ("diverged", 2)})
    return storage


def test_hand_computed_table(demo):
    a = analyze(find_studies(str(demo / "demo")))
    assert set(a.trials["epoch"]) == {3}                     # best validation epoch
    assert a.reference == "RLW" and a.delta_reference == {"multidigits": "EW"}
    ew = np.array([0.65 + 0.01 * s for s in range(3)])
    ref_left, ref_right = ew.mean(), ew.mean() + 0.001
    per = a.per_problem.set_index("method")
    for method in ("RLW", "GOOD"):
        left = ew + EFFECT[method]
        dm = ((left - ref_left) / ref_left + (left + 0.001 - ref_right) / ref_right) / 2 * 100
        assert per.loc[method, "delta_m_mean"] == pytest.approx(dm.mean())
        assert per.loc[method, "delta_m_std"] == pytest.approx(dm.std(ddof=1))
        assert per.loc[method, "avg_metric_mean"] == pytest.approx((left + left + 0.001).mean() / 2)
        assert per.loc[method, "n_seeds"] == 3
    assert per.loc["EW", "delta_m_mean"] == pytest.approx(0.0, abs=1e-12)
    m = a.metrics.set_index(["method", "task", "metric"])
    assert m.loc[("GOOD", "left", "accuracy"), "mean"] == pytest.approx(0.71)
    assert m.loc[("GOOD", "left", "accuracy"), "std"] == pytest.approx(0.01)
    # Metric rank (1 = best): GOOD beats RLW beats EW beats UW on both tasks.
    assert per["metric_rank"].to_dict() == {"GOOD": 1.0, "RLW": 2.0, "EW": 3.0, "UW": 4.0}


def test_incomplete_trials_counted_excluded_or_included(demo):
    a = analyze(find_studies(str(demo / "demo")))
    st = a.status.set_index(["method", "status"])["trials"]
    assert st[("UW", "diverged")] == 1 and st[("UW", "completed")] == 2
    assert len(a.trials) == 11
    assert any("1 of 12 trials are incomplete" in n and "excluded" in n for n in a.notes)
    b = analyze(find_studies(str(demo / "demo")), Options(include_incomplete=True))
    assert len(b.trials) == 12
    uw2 = b.trials[(b.trials["method"] == "UW") & (b.trials["seed"] == 2)]
    assert int(uw2["epoch"].iloc[0]) == 1    # epochs 1 and 2 tie on validation: the earliest wins
    assert any("INCLUDED" in n for n in b.notes)


def test_tests_vs_rlw_and_underpowered_note(demo):
    a = analyze(find_studies(str(demo / "demo")))
    t = a.tests[a.tests["role"] == "litmus"].set_index("method")
    assert t.loc["GOOD", "mean_diff"] > 0 and t.loc["UW", "mean_diff"] < 0
    assert t.loc["GOOD", "p"] == pytest.approx(0.25)          # exact Wilcoxon, 3 pairs all positive
    assert t["min_p"].to_dict() == {"EW": 0.25, "GOOD": 0.25, "UW": 0.5}   # UW lost a seed (diverged)
    assert not t["can_reach_alpha"].any()
    assert set(t["verdict"]) == {"indistinguishable from"}
    assert t.loc["GOOD", "prob_improvement"] == 1.0 and t.loc["UW", "prob_improvement"] == 0.0
    assert any("cannot reach alpha" in n for n in a.notes)
    assert any("Only one problem" in n for n in a.notes)
    assert a.per_problem.set_index("method").loc["RLW", "verdict"] == "reference"
    # With a t-test and 3 seeds the constant +0.03 shift is undefined, never significant.
    b = analyze(find_studies(str(demo / "demo")), Options(test="ttest"))
    tb = b.tests[b.tests["role"] == "litmus"].set_index("method")
    assert tb.loc["GOOD", "flag"] == "undefined" and tb.loc["GOOD", "verdict"] == "undefined"


def test_many_seeds_give_verdicts(tmp_path):
    write_study(tmp_path, "big", methods={"EW": 0, "RLW": 0, "BAD": -5, "SAME": 0.0}, seeds=8, epochs=3,
                noise=0.3, problems={"p1": {"a": [("acc", True)]}, "p2": {"a": [("err", False)], "b": [("acc", True)]}})
    a = analyze(find_studies(str(tmp_path / "big")))
    per = a.per_problem.set_index(["problem", "method"])
    assert per.loc[("p1", "BAD"), "verdict"] == "worse than"
    assert per.loc[("p2", "BAD"), "verdict"] == "worse than"
    ov = a.overall.set_index("method")
    assert ov.loc["BAD", "verdict"] == "worse than" and ov.loc["BAD", "problems_worse"] == 2
    assert ov.loc["RLW", "verdict"] == "reference"
    assert a.friedman["problems"].n_blocks == 2 and a.friedman["tasks"].n_blocks == 3
    assert set(a.overall["avg_rank_problems"].dropna()) and ov.loc["BAD", "avg_rank_problems"] == 4.0


def test_reference_fallback_and_explicit_errors(tmp_path):
    write_study(tmp_path, "norlw", methods=["EW", "RLW-dirichlet(alpha=1)", "UW"], seeds=2, epochs=2)
    a = analyze(find_studies(str(tmp_path / "norlw")))
    assert a.reference == "RLW-dirichlet(alpha=1)"
    assert any("default litmus reference RLW is not in the results" in n for n in a.notes)
    with pytest.raises(AnalysisError, match="--reference 'RLW': no such method"):
        analyze(find_studies(str(tmp_path / "norlw")), Options(reference="RLW"))
    with pytest.raises(AnalysisError, match="--delta-reference 'STL'"):
        analyze(find_studies(str(tmp_path / "norlw")), Options(delta_reference="STL"))
    b = analyze(find_studies(str(tmp_path / "norlw")), Options(reference="uw", delta_reference="uw"))
    assert b.reference == "UW" and b.delta_reference == {"multidigits": "UW"}   # case-insensitive


def test_no_validation_split_selects_on_test_and_says_so(tmp_path):
    write_study(tmp_path, "noval", methods=["EW", "RLW"], seeds=2, epochs=3, splits=("train", "test"))
    a = analyze(find_studies(str(tmp_path / "noval")))
    assert a.selected_on == {"multidigits": "test"}
    assert any("SELECTED ON TEST DATA" in n for n in a.notes)


def test_paths_storage_folder_and_filters(tmp_path):
    write_study(tmp_path, "one", methods=["EW", "RLW"], seeds=2, epochs=2)
    write_study(tmp_path, "two", methods=["EW", "RLW", "UW"], seeds=2, epochs=2)
    studies = find_studies(str(tmp_path))
    assert [s.name for s in studies] == ["one", "two"]
    a = analyze(studies)
    assert len(a.trials) == 10 and set(a.trials["study"]) == {"one", "two"}
    rows = read_results(studies, methods=["UW"], splits=["test"])
    assert set(rows["method"]) == {"UW"} and set(rows["split"]) == {"test"}
    b = analyze(studies, Options(methods=["EW", "RLW"]))
    assert set(b.trials["method"]) == {"EW", "RLW"}
    with pytest.raises(AnalysisError, match="no study found"):
        find_studies(str(tmp_path / "one" / "results"))
    with pytest.raises(AnalysisError, match="does not exist"):
        find_studies(str(tmp_path / "nope"))


def test_zero_reference_value_is_an_error(tmp_path):
    def zero(problem, task, metric, method, seed, epoch, split):
        return 0.0 if method == "EW" and metric != "loss" else 0.5

    write_study(tmp_path, "z", methods=["EW", "RLW"], seeds=2, epochs=2, values=zero)
    with pytest.raises(AnalysisError, match="reference value is 0"):
        analyze(find_studies(str(tmp_path / "z")), Options(select="last"))


def test_all_metrics_convention_flips_sign_not_verdicts(demo):
    a = analyze(find_studies(str(demo / "demo")))
    b = analyze(find_studies(str(demo / "demo")), Options(convention="all-metrics"))
    pa_ = a.per_problem.set_index("method")["delta_m_mean"]
    pb = b.per_problem.set_index("method")["delta_m_mean"]
    assert np.allclose(pb.to_numpy(), -pa_.to_numpy())     # two tasks, one metric each: same magnitude
    assert a.overall.set_index("method")["avg_rank_problems"].equals(b.overall.set_index("method")["avg_rank_problems"])


def test_trial_without_status_row_is_read_and_counted(tmp_path):
    root = write_study(tmp_path, "live", methods=["EW", "RLW"], seeds=2, epochs=2, status="running")
    (tmp_path / "live" / "trials" / "00004.parquet").unlink()      # RLW seed 1: still running, no status row
    a = analyze(find_studies(root))
    st = a.status.set_index(["method", "status"])["trials"]
    assert st[("RLW", "running")] == 1 and len(a.trials) == 3
    b = analyze(find_studies(root), Options(include_incomplete=True))
    assert len(b.trials) == 4


def test_several_architectures_become_separate_problems(tmp_path):
    write_study(tmp_path, "hps", methods=["EW", "RLW"], seeds=2, epochs=2, architecture="hps")
    write_study(tmp_path, "mtan", methods=["EW", "RLW"], seeds=2, epochs=2, architecture="mtan")
    a = analyze(find_studies(str(tmp_path)))
    assert a.problems == ["multidigits/hps", "multidigits/mtan"]
    assert a.delta_reference == {"multidigits/hps": "EW", "multidigits/mtan": "EW"}


def test_study_without_results_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "study.json").write_text('{"name": "empty", "status": "running"}')
    with pytest.raises(AnalysisError, match="no result files"):
        analyze(find_studies(str(tmp_path / "empty")))
    write_study(tmp_path, "s", methods=["EW"], seeds=1, epochs=1)
    with pytest.raises(AnalysisError, match="no results match the filters"):
        analyze(find_studies(str(tmp_path / "s")), Options(problems=["nyuv2"]))


def test_uri_paths_go_through_pyarrow_filesystems(tmp_path):
    write_study(tmp_path, "u", methods=["EW", "RLW"], seeds=2, epochs=2)
    studies = find_studies(f"file://{tmp_path}/u")
    assert [s.name for s in studies] == ["u"]
    assert len(analyze(studies).trials) == 4


def test_selection_uses_validation_never_test(tmp_path):
    """Validation peaks at epoch 2, test at epoch 4: every criterion reads validation rows only."""

    def split_disagree(problem, task, metric, method, seed, epoch, split):
        if metric == "loss":
            return {1: 0.9, 2: 0.5, 3: 0.7, 4: 0.8}[epoch] if split == "val" else {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.1}[epoch]
        peak = 2 if split == "val" else 4
        return 0.5 + (0.2 if epoch == peak else 0.0) + 0.01 * seed + (0.03 if method == "RLW" else 0.0)

    write_study(tmp_path, "sd", methods=["EW", "RLW"], seeds=2, epochs=4, values=split_disagree)
    for crit, epoch in (("delta_m", 2), ("metric:accuracy", 2), ("metric:left/accuracy", 2), ("metric:loss", 2),
                        ("last", 4)):
        a = analyze(find_studies(str(tmp_path / "sd")), Options(select=crit))
        assert set(a.trials["epoch"]) == {epoch}, crit
        assert a.selected_on == {"multidigits": "val"}
        assert not any("TEST DATA" in n for n in a.notes)
        # Test metrics are reported at that epoch: 0.5 + seed/100 (+0.03 RLW) at epoch 2, +0.2 at epoch 4.
        tm = a.trial_metrics.set_index(["method", "seed", "task", "metric"])["value"]
        assert tm[("RLW", 1, "left", "accuracy")] == pytest.approx(0.54 + (0.2 if epoch == 4 else 0.0))


def test_nyuv2_check_case_end_to_end(tmp_path):
    """The issue's check case through the whole pipeline: only mIoU moves from 0.3830 to 0.400."""
    from analysis.synthetic import NYUV2, NYUV2_BASE

    order = [(t, m) for t, ms in NYUV2["nyuv2"].items() for m, _ in ms]

    def values(problem, task, metric, method, seed, epoch, split):
        if metric == "loss":
            return 1.0
        v = NYUV2_BASE[order.index((task, metric))]
        return 0.400 if (method == "X" and metric == "mIoU") else v

    write_study(tmp_path, "nyu", problems=NYUV2, methods=["EW", "RLW", "X"], seeds=2, epochs=2, values=values)
    a = analyze(find_studies(str(tmp_path / "nyu")))
    per = a.per_problem.set_index("method")
    assert round(per.loc["X", "delta_m_mean"], 3) == 0.740
    assert per.loc["RLW", "delta_m_mean"] == 0.0
    b = analyze(find_studies(str(tmp_path / "nyu")), Options(convention="all-metrics"))
    assert round(b.per_problem.set_index("method").loc["X", "delta_m_mean"], 3) == -0.493
    assert set(a.per_problem["delta_m_convention"]) == {"per-task"}
    assert set(b.per_problem["delta_m_convention"]) == {"all-metrics"}
    assert set(b.trials["delta_m_convention"]) == {"all-metrics"} and set(b.overall["delta_m_convention"]) == {"all-metrics"}
    assert set(a.per_problem["delta_m_reference"]) == {"EW"} and set(a.trials["delta_m_reference"]) == {"EW"}
    # Mixed metric types: no "average metric" column for NYUv2.
    assert per["avg_metric_mean"].isna().all()


def test_tests_against_rlw_and_ew(demo):
    a = analyze(find_studies(str(demo / "demo")))
    roles = a.tests.groupby("role")
    lit, dlt = roles.get_group("litmus"), roles.get_group("delta")
    assert set(lit["reference"]) == {"RLW"} and set(lit["method"]) == {"EW", "UW", "GOOD"}
    assert set(dlt["reference"]) == {"EW"} and set(dlt["method"]) == {"RLW", "UW", "GOOD"}
    # EW's mean Delta_m is 0, so the mean paired difference vs EW is the method's own mean Delta_m.
    per = a.per_problem.set_index("method")["delta_m_mean"]
    d = dlt.set_index("method")
    assert d.loc["GOOD", "mean_diff"] == pytest.approx(per["GOOD"])
    # Every seed moves GOOD and EW alike: constant differences, so the effect size is undefined, not "large".
    assert np.isnan(d.loc["GOOD", "effect_dz"]) and d.loc["GOOD", "effect"] == "undefined"
    # Holm across the three methods within each reference.
    from statsmodels.stats.multitest import multipletests

    assert np.allclose(lit["p_holm"], multipletests(lit["p"], method="holm")[1])


def test_cost_columns_hand_computed(tmp_path):
    # 3 seeds x 5 epochs x 2.0 s at 0.5 GPU; UW seed 2 diverged after 2 epochs (its cost still counts).
    write_study(tmp_path, "c", methods=["EW", "RLW", "UW"], seeds=3, epochs=5, gpus=0.5, time_epoch_s=2.0,
                statuses={("UW", 2): ("diverged", 2)})
    a = analyze(find_studies(str(tmp_path / "c")))
    c = a.cost.set_index("method")
    assert c.loc["EW", "median_epoch_s"] == 2.0 and c.loc["EW", "median_step_s"] == pytest.approx(0.02)
    assert c.loc["EW", "trials"] == 3 and c.loc["UW", "trials"] == 3
    assert c.loc["EW", "gpu_hours"] == pytest.approx(3 * 5 * 2.0 * 0.5 / 3600)
    assert c.loc["EW", "wall_hours"] == pytest.approx(3 * 5 * 2.0 / 3600)
    assert c.loc["UW", "gpu_hours"] == pytest.approx((2 * 5 + 2) * 2.0 * 0.5 / 3600)


def test_study_filter_before_reading(tmp_path):
    write_study(tmp_path, "one", methods=["EW", "RLW"], seeds=2, epochs=2)
    write_study(tmp_path, "two", methods=["EW", "RLW", "UW"], seeds=2, epochs=2)
    # A study that cannot be read at all: filtered out by name, its files are never opened.
    (tmp_path / "broken" / "results").mkdir(parents=True)
    (tmp_path / "broken" / "study.json").write_text('{"name": "broken"}')
    (tmp_path / "broken" / "results" / "part-x.parquet").write_text("not parquet")
    studies = find_studies(str(tmp_path))
    a = analyze(studies, Options(studies=["two"]))
    assert set(a.trials["study"]) == {"two"} and len(a.trials) == 6
    b = analyze(studies, Options(studies=["one", "two"]))
    assert set(b.trials["study"]) == {"one", "two"} and len(b.trials) == 10
    with pytest.raises(AnalysisError, match="--study 'three': no such study.*studies: broken, one, two"):
        analyze(studies, Options(studies=["three"]))
    # Without the filter the unreadable file is a one-line error naming it, not a traceback.
    with pytest.raises(AnalysisError, match="cannot read result file .*broken/results/part-x.parquet"):
        analyze(studies)


def test_five_seeds_wilcoxon_is_stated_underpowered(tmp_path):
    write_study(tmp_path, "five", methods={"EW": 0, "RLW": 0, "BAD": -5}, seeds=5, epochs=2, noise=0.3)
    a = analyze(find_studies(str(tmp_path / "five")))
    assert any("with 5 matched seeds the wilcoxon test cannot reach alpha = 0.05 (smallest attainable p = 0.0625)"
               in n and "Run more seeds (6+)" in n for n in a.notes)
    t = a.tests[a.tests["role"] == "litmus"].set_index("method")
    assert t.loc["BAD", "p"] == pytest.approx(0.0625) and t.loc["BAD", "verdict"] == "indistinguishable from"
    assert not t["can_reach_alpha"].any()
    # The paired t-test can reach alpha with 5 seeds: no such note, and BAD is found worse.
    b = analyze(find_studies(str(tmp_path / "five")), Options(test="ttest"))
    assert not any("cannot reach alpha" in n and "matched seeds" in n for n in b.notes)
    assert b.per_problem.set_index("method").loc["BAD", "verdict"] == "worse than"
