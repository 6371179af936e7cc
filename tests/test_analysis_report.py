"""`litmus analyze` as the CLI runs it: files written, self-contained HTML, errors with exit code 2."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from analysis import cli
from analysis.errors import AnalysisError
from analysis.synthetic import write_study

DEMO_METHODS = {"EW": 0.0, "RLW": 0.3, "RLW-dirichlet(alpha=1)": 0.1, "UW": -0.5}
DEMO_PARAMS = {"RLW": {"weighting": {"name": "rlw", "distribution": "normal"}},
               "RLW-dirichlet(alpha=1)": {"weighting": {"name": "rlw", "distribution": "dirichlet", "alpha": 1.0}}}


def parse(argv):
    p = argparse.ArgumentParser(prog="litmus analyze")
    cli.configure_parser(p)
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    study = write_study(root, "demo", methods=DEMO_METHODS, seeds=3, epochs=4, method_params=DEMO_PARAMS)
    out = root / "out"
    assert cli.run(parse([study, "--out", str(out), "--bootstrap", "500"])) == 0
    return out


def test_outputs_written(demo_report):
    for name in ("report.md", "report.html", "tables/per_problem.parquet", "tables/per_problem.csv",
                 "tables/tests.parquet", "tables/overall.csv", "tables/trials.parquet", "tables/cost.csv"):
        assert (demo_report / name).is_file(), name
    per = pd.read_parquet(demo_report / "tables" / "per_problem.parquet")
    assert set(per["method"]) == set(DEMO_METHODS) and (per["n_seeds"] == 3).all()
    figs = os.listdir(demo_report / "figures")
    assert {"problem_multidigits.png", "pareto_multidigits.png", "distributions.png"} <= set(figs)


def test_markdown_states_convention_limits_and_verdicts(demo_report):
    md = (demo_report / "report.md").read_text()
    assert "positive = better than the reference" in md                    # convention named
    assert md.count("Δm (%) = mean over tasks") >= 2                        # ... in the tables too
    assert "cannot reach alpha" in md                                       # 3 seeds
    assert "Only one problem" in md                                         # no Friedman across problems
    assert "Litmus verdict" in md and "indistinguishable from" in md
    verdict = md.split("## Litmus verdict", 1)[1].split("\n\n", 2)[1]      # the verdict table
    cells = [c.strip() for row in verdict.splitlines()[2:] for c in row.strip("|").split("|")[1:]]
    assert cells and all(c in ("reference", "–") or c.endswith(" RLW") for c in cells), cells
    assert "| EW |" in md and "RLW (ref)" in md
    assert re.search(r"\d\.\d{4} ± \d\.\d{4}", md)                          # mean ± std of accuracies
    assert "GPU-hours" in md and "median s/epoch" in md


def test_html_is_self_contained(demo_report):
    html = (demo_report / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') >= 3
    # Nothing fetched from anywhere: no external src/href, no @import, no scripts.
    assert not re.search(r'(src|href)\s*=\s*"(?!data:)', html)
    assert "@import" not in html and "<script" not in html and "<link" not in html
    assert "<table>" in html and "Litmus verdict" in html


def test_html_is_well_formed(demo_report):
    from html.parser import HTMLParser

    class Balance(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack, self.errors = [], []

        def handle_starttag(self, tag, attrs):
            if tag not in ("meta", "img", "br"):
                self.stack.append(tag)

        def handle_endtag(self, tag):
            if not self.stack or self.stack.pop() != tag:
                self.errors.append(tag)

    p = Balance()
    p.feed((demo_report / "report.html").read_text())
    assert p.errors == [] and p.stack == []


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert cli.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("litmus: error: no study found at") and "\n" not in err
    study = write_study(tmp_path, "s", methods=["EW", "RLW"], seeds=2, epochs=2)
    assert cli.main([study, "--reference", "PCGrad"]) == 2
    assert "--reference 'PCGrad': no such method" in capsys.readouterr().err
    assert cli.main([study, "--alpha", "1.5"]) == 2
    assert cli.main([study, "--select", "best"]) == 2
    assert AnalysisError("a\nb").exit_code == 2 and str(AnalysisError("a\n  b")) == "a b"


def test_default_out_and_options(tmp_path):
    study = write_study(tmp_path, "s", methods=["EW", "RLW", "UW"], seeds=2, epochs=2)
    args = parse([study, "--select", "metric:accuracy", "--test", "ttest", "--include-incomplete",
                  "--problem", "multidigits", "--method", "EW", "--method", "RLW", "--bootstrap", "200",
                  "--study", "s"])
    opts = cli.options_from_args(args)
    assert opts.studies == ["s"]
    assert opts.select == "metric:accuracy" and opts.test == "ttest" and opts.include_incomplete
    assert opts.methods == ["EW", "RLW"] and opts.problems == ["multidigits"]
    assert cli.run(args) == 0
    assert (tmp_path / "s" / "report" / "report.html").is_file()
    per = pd.read_csv(tmp_path / "s" / "report" / "tables" / "per_problem.csv")
    assert set(per["method"]) == {"EW", "RLW"}


def test_package_imports_neither_torch_nor_ray():
    code = ("import sys, analysis.cli, analysis.pipeline, analysis.report, analysis.synthetic, analysis.plots; "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


MULTI = {"p1": {"a": [("acc", True)]}, "p2": {"a": [("err", False)], "b": [("acc", True)]},
         "p3": {"a": [("acc", True)], "b": [("acc", True)]}}


@pytest.fixture(scope="module")
def multi_report(tmp_path_factory):
    """Three problems, eight seeds: verdicts reach significance; BAD is 5% worse, GOOD 3% better."""
    root = tmp_path_factory.mktemp("multi")
    study = write_study(root, "m", methods={"EW": 0, "RLW": 0, "BAD": -5, "GOOD": 3}, seeds=8, epochs=3,
                        noise=0.3, gpus=0.5, problems=MULTI)
    out = root / "out"
    assert cli.run(parse([study, "--out", str(out), "--bootstrap", "300"])) == 0
    out_w = root / "out_w"
    assert cli.run(parse([study, "--out", str(out_w), "--bootstrap", "300", "--convention", "all-metrics"])) == 0
    return out, out_w


def _md_tables(md: str) -> list[list[str]]:
    """Each Markdown table as its lines."""
    tables, cur = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            tables.append(cur)
            cur = []
    return tables + ([cur] if cur else [])


def test_multi_problem_figures_and_tables(multi_report):
    out, _ = multi_report
    figs = set(os.listdir(out / "figures"))
    assert {"cd_problems.png", "cd_tasks.png", "iqm.png", "problem_p1.png", "problem_p2.png", "problem_p3.png",
            "pareto_p2.png", "pareto_p3.png"} <= figs
    assert "pareto_p1.png" not in figs                    # one task: no trade-off to draw
    md = (out / "report.md").read_text()
    assert "Friedman test across problems (3 blocks, 4 methods)" in md
    assert "Nemenyi post-hoc p-values across problems" in md and "Pairwise tests across problems" in md
    # Three problems: Wilcoxon across problems can never reach 0.05 (min p = 2/2^3), and the report says so.
    assert "with 3 problems no pair can reach alpha = 0.05 (smallest attainable p = 0.25)" in md
    for name in ("per_problem", "tests", "overall", "pairwise", "cost", "trials", "metric_tests"):
        assert (out / "tables" / f"{name}.parquet").is_file() and (out / "tables" / f"{name}.csv").is_file()
    ov = pd.read_parquet(out / "tables" / "overall.parquet").set_index("method")
    assert ov.loc["BAD", "verdict"] == "worse than" and ov.loc["GOOD", "verdict"] == "better than"
    assert ov.loc["BAD", "problems_worse"] == 3 and ov.loc["GOOD", "problems_better"] == 3
    cost = pd.read_csv(out / "tables" / "cost.csv").set_index("method")
    assert cost.loc["EW", "gpu_hours"] == pytest.approx(3 * 8 * 3 * 2.0 * 0.5 / 3600)


def test_paper_tables_mean_std_and_significance_markers(multi_report):
    out, _ = multi_report
    md = (out / "report.md").read_text()
    paper = [t for t in _md_tables(md) if "seeds |" in t[0] and "95% CI" in t[0]]
    assert len(paper) == 3                                   # one per problem
    # Average metric for single-type problems (p1, p3: accuracy only), none for mixed p2 (err + acc).
    assert ["avg acc ↑" in t[0] for t in paper] == [True, False, True]
    for t in paper:
        rows = {r.split("|")[1].strip(): r for r in t[2:]}
        assert "▼" in rows["BAD"] and "▲" not in rows["BAD"]
        assert "▲" in rows["GOOD"] and "▼" not in rows["GOOD"]
        assert "▲" not in rows["RLW (ref)"] and "▼" not in rows["RLW (ref)"]
        assert re.search(r"\d\.\d{4} ± \d\.\d{4}", rows["GOOD"])       # metric mean ± std
        assert re.search(r"-\d\.\d{2} ± \d\.\d{2} ▼", rows["BAD"])      # Delta_m mean ± std, marker
    html = (out / "report.html").read_text()
    assert '<td class="worse">' in html and '<td class="better">' in html


@pytest.mark.parametrize("which,tag", [(0, "[per-task mean, + = better]"), (1, "[mean of all metrics, + = worse]")])
def test_every_delta_m_table_names_the_convention(multi_report, which, tag):
    md = (multi_report[which] / "report.md").read_text()
    tables = _md_tables(md)
    with_dm = [t for t in tables if "Δm" in t[0]]
    assert len(with_dm) >= 3 + 3 + 3                          # paper + tests per problem, overall, pairwise, cost
    conv = "per-task" if which == 0 else "all-metrics"
    for t in with_dm:
        assert tag in t[0] or f"[{conv}, + =" in t[0], t[0]
    per = pd.read_csv(multi_report[which] / "tables" / "per_problem.csv")
    assert set(per["delta_m_convention"]) == {conv}
    # Same ranks and verdicts either way; only the sign of Delta_m flips.
    a = pd.read_csv(multi_report[0] / "tables" / "per_problem.csv").set_index(["problem", "method"])
    b = pd.read_csv(multi_report[1] / "tables" / "per_problem.csv").set_index(["problem", "method"])
    assert (a["verdict"] == b["verdict"]).all()
    assert ((a["delta_m_mean"] > 0) == (b["delta_m_mean"] < 0))[a["delta_m_mean"].abs() > 1e-9].all()


def test_html_has_no_external_url(multi_report):
    for out in multi_report:
        html = (out / "report.html").read_text()
        assert "http://" not in html and "https://" not in html and "url(" not in html
        assert not re.search(r'(src|href)\s*=\s*"(?!data:)', html)
        assert "<script" not in html and "<link" not in html and "@import" not in html
        imgs = re.findall(r'<img [^>]*src="([^"]+)"', html)
        assert len(imgs) >= 8 and all(s.startswith("data:image/png;base64,") for s in imgs)


def test_undefined_results_are_shown_as_undefined(tmp_path):
    """A t-test on a constant shift: p, effect size and verdict are 'undefined' in the report, never significant."""

    def shift(problem, task, metric, method, seed, epoch, split):
        return 1.0 if metric == "loss" else 0.6 + 0.01 * seed + (0.02 if method == "UW" else 0.0)

    study = write_study(tmp_path, "u", methods=["EW", "RLW", "UW"], seeds=6, epochs=2, values=shift)
    out = tmp_path / "out"
    assert cli.run(parse([study, "--out", str(out), "--test", "ttest", "--bootstrap", "200"])) == 0
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| UW | RLW |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[4] == "undefined" and cells[5] == "undefined"            # p, p (Holm)
    assert cells[8] == "undefined" and cells[10] == "undefined"           # effect label, verdict
    assert "large" not in row and "better than" not in row


def test_report_without_the_litmus_reference_names_no_none(tmp_path):
    study = write_study(tmp_path, "demo", methods=DEMO_METHODS, seeds=3, epochs=2, method_params=DEMO_PARAMS)
    out = tmp_path / "out"
    keep = ["UW", "EW"]  # no random weighting at all: no litmus reference
    args = [study, "--out", str(out), "--bootstrap", "200"] + [x for m in keep for x in ("--method", m)]
    assert cli.run(parse(args)) == 0
    md = (out / "report.md").read_text()
    assert "None" not in md and "no significance markers" in md
