"""Every spec in search_spaces/ loads (without its data) and matches the table in search_spaces/README.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from study.spec import load_spec

SPECS = Path(__file__).resolve().parent.parent / "search_spaces"
FILES = sorted(p.name for p in SPECS.glob("*.yaml"))


def readme_table() -> dict[str, dict[str, str]]:
    """The shipped-specs table: file -> {column: cell}."""
    rows = [ln for ln in (SPECS / "README.md").read_text().splitlines() if ln.startswith("|")]
    header_at = next(i for i, ln in enumerate(rows) if ln.startswith("| File |"))
    header = [c.strip() for c in rows[header_at].strip("|").split("|")]
    table = {}
    for ln in rows[header_at + 2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        m = re.fullmatch(r"`([\w.-]+\.yaml)`", cells[0])
        if not m:
            break
        table[m.group(1)] = dict(zip(header, cells))
    return table


TABLE = readme_table()


def test_every_spec_is_in_the_table_and_back():
    assert FILES and sorted(TABLE) == FILES


@pytest.mark.parametrize("name", FILES)
def test_spec_loads_and_matches_the_table(name):
    spec = load_spec(SPECS / name, check_data=False)
    row = TABLE[name]
    cells = spec.trial_configs()
    trials = len(cells) * (spec.tune["num_samples"] if spec.tune else 1)
    assert int(row["Cells"]) == len(cells)
    assert int(row["Trials"]) == trials
    assert row["Samples per cell"] == (str(spec.tune["num_samples"]) if spec.tune else "-")
    assert row["Methods x seeds"] == f"{len(spec.methods)} x {len(spec.seeds)}"
    assert row["Problem"] == ", ".join(p["name"] for p in spec.problems)
    assert row["Architecture"] == ", ".join(a["name"] for a in spec.architectures)
    assert spec.description, f"{name} has no description"


def test_study_names_are_distinct():
    # studies share a storage folder by name: two shipped specs must never write into the same study
    names = [load_spec(SPECS / f, check_data=False).name for f in FILES]
    assert len(set(names)) == len(names)


def test_distribution_studies_cover_every_distribution_and_sweep_it():
    from study.weighting.distributions import DISTRIBUTIONS

    for name, ks in (("distribution_nyuv2.yaml", [1, 2]), ("distribution_celeba.yaml", [1, 5, 10, 20])):
        spec = load_spec(SPECS / name, check_data=False)
        rlw = [m["weighting"] for m in spec.methods if m["weighting"] and m["weighting"]["name"] == "rlw"]
        assert {w["distribution"] for w in rlw} == set(DISTRIBUTIONS.names())
        sweep = lambda dist, key: sorted(w[key] for w in rlw if w["distribution"] == dist)  # noqa: E731
        assert sweep("normal", "sigma") == [0.25, 0.5, 1.0, 2.0, 4.0]
        assert sweep("dirichlet", "alpha") == [0.1, 0.3, 1.0, 3.0, 10.0]
        assert sweep("bernoulli", "p") == [0.25, 0.5, 0.75]
        assert sweep("constrained_bernoulli", "k") == ks
        assert "EW" in [m["label"] for m in spec.methods] and spec.tune is None and len(spec.seeds) >= 3


def test_combination_study_pairs_every_gradient_method_with_rlw():
    spec = load_spec(SPECS / "rlw_combinations.yaml", check_data=False)
    alone = {m["aggregator"]["name"] for m in spec.methods if m["aggregator"] and not m["weighting"]}
    paired = {m["aggregator"]["name"] for m in spec.methods if m["aggregator"] and m["weighting"]
              and m["weighting"]["name"] == "rlw"}
    assert alone == paired == {"mgda", "pcgrad", "graddrop", "gradvac", "imtl_g", "cagrad", "rotograd"}
    assert {"EW", "RLW"} <= {m["label"] for m in spec.methods}


def test_tune_baselines_gives_every_method_the_same_budget_and_its_own_ranges():
    spec = load_spec(SPECS / "tune_baselines.yaml", check_data=False)
    cells = spec.trial_configs()
    assert len(spec.seeds) == 1 and len(cells) == len(spec.methods) and spec.tune["sampler"] == "tpe"
    tuned = {c["method"]["label"]: {p.key for p in spec.tune["params"] if p.applies(c)} for c in cells}
    assert all("train.lr" in keys for keys in tuned.values())
    assert tuned["CAGRAD"] == {"train.lr", "aggregator.c"}
    assert tuned["RLW"] == {"train.lr", "weighting.sigma"}
    assert tuned["GRADNORM"] == {"train.lr", "weighting.alpha"}
    assert tuned["EW"] == {"train.lr"}
