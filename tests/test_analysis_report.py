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
                  "--problem", "multidigits", "--method", "EW", "--method", "RLW", "--bootstrap", "200"])
    opts = cli.options_from_args(args)
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
