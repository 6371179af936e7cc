"""Tuned ranges, the cell-wise Optuna searcher and schedulers (issue 7's cases)."""

from __future__ import annotations

import json

import optuna
import pyarrow.dataset as ds
import pytest

from study.search import Param, make_searcher, parse_param, parse_tune
from study.spec import parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)
PROBLEM = {"name": "multidigits", "n_train": 256, "n_val": 64, "n_test": 64, "width": 8}


def draws(param: Param, n: int = 400) -> list:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        t = study.ask()
        out.append(param.suggest(t))
        study.tell(t, 0.0)
    return out


def test_int_ranges_include_both_bounds_as_documented():
    values = draws(parse_param("train.batch_size", {"type": "int", "low": 1, "high": 3}))
    assert set(values) == {1, 2, 3}
    values = draws(parse_param("train.epochs", {"type": "int", "low": 2, "high": 8, "step": 3}))
    assert set(values) == {2, 5, 8}


def test_quantised_log_range_draws_multiples_of_the_step_within_bounds():
    p = parse_param("train.lr", {"type": "float", "low": 0.001, "high": 0.1, "log": True, "step": 0.001})
    values = draws(p)
    assert all(0.001 <= v <= 0.1 for v in values)
    assert all(abs(v / 0.001 - round(v / 0.001)) < 1e-6 for v in values)
    assert min(values) < 0.005 < max(values) > 0.05  # log-uniform: both ends are reached


def test_categorical_and_conditions():
    p = parse_param("method.alpha", {"type": "float", "low": 0.1, "high": 2.0, "when": {"distribution": "dirichlet"}})
    spec = parse_spec({"problem": PROBLEM, "methods": ["ew", {"name": "rlw", "distribution": "dirichlet"}]})
    cells = spec.trial_configs()
    assert [p.applies(c) for c in cells] == [False, True]
    assert set(draws(parse_param("train.optimizer", {"choices": ["adam", "sgd"]}), 50)) == {"adam", "sgd"}


def _spec(**tune):
    return parse_spec({
        "problem": PROBLEM, "seeds": [0], "train": {"epochs": 3},
        "methods": ["ew", {"name": "rlw", "distribution": "dirichlet"}],
        "tune": {"num_samples": 3, "sampler": {"name": "tpe", "seed": 1},
                 "points_to_evaluate": [{"train.lr": 0.003}],
                 "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                           "method.alpha": {"type": "float", "low": 0.1, "high": 10.0, "log": True,
                                            "when": {"distribution": "dirichlet"}}}, **tune},
    })


def test_searcher_equal_budget_points_first_and_conditional_keys():
    spec = _spec()
    s = make_searcher(spec.tune, spec.trial_configs())
    suggestions = []
    while True:
        out = s.suggest(f"t{len(suggestions)}")
        if out == "FINISHED":
            break
        suggestions.append(out["trial"])
    assert len(suggestions) == 6 and [c["cell"] for c in suggestions] == [0, 1, 0, 1, 0, 1]
    first = {c["cell"]: c for c in reversed(suggestions)}
    assert first[0]["train"]["lr"] == 0.003 and first[1]["train"]["lr"] == 0.003  # points_to_evaluate first
    assert all("method.alpha" not in c["tuned"] for c in suggestions if c["cell"] == 0)
    assert all(c["method"]["weighting"]["alpha"] == c["tuned"]["method.alpha"] for c in suggestions if c["cell"] == 1)
    assert len({json.dumps(c["tuned"], sort_keys=True) for c in suggestions}) == 6


def test_early_stopped_and_failed_trials_are_told_to_optuna(tmp_path):
    spec = _spec()
    s = make_searcher(spec.tune, spec.trial_configs())
    for i in range(4):
        s.suggest(f"t{i}")
    s.on_trial_result("t0", {"val_score": 0.5, "training_iteration": 1, "epoch": 1})
    s.on_trial_complete("t0", {"val_score": 0.5, "training_iteration": 1, "epoch": 1})     # stopped by ASHA
    s.on_trial_complete("t1", {"val_score": 0.7, "training_iteration": 3, "epoch": 3})     # finished
    s.on_trial_complete("t2", None, error=True)                                            # crashed
    s.on_trial_complete("t3", {"litmus_event": "diverged", "epoch": 2})                    # diverged
    states = [[t.state for t in st.get_trials(deepcopy=False)] for st in s.optuna_studies()]
    T = optuna.trial.TrialState
    assert states[0] == [T.PRUNED, T.FAIL]
    assert states[1] == [T.COMPLETE, T.PRUNED]
    assert s.optuna_studies()[1].get_trials()[0].value == 0.7
    # the state survives save/restore, as on --resume
    s.save(str(tmp_path / "s.pkl"))
    r = make_searcher(spec.tune, spec.trial_configs())
    r.restore(str(tmp_path / "s.pkl"))
    assert r.count == [2, 2] and r.trial_cell == s.trial_cell
    assert [[t.state for t in st.get_trials(deepcopy=False)] for st in r.optuna_studies()] == states


def test_tune_section_checks():
    spec = _spec()
    assert spec.tune["num_samples"] == 3 and spec.tune["metric"] == "val_score" and spec.tune["mode"] == "max"
    from study.errors import SpecError

    with pytest.raises(SpecError, match=r"tune.points_to_evaluate\[0\].train.momentum: not a tuned key"):
        parse_tune({"space": {"train.lr": {"low": 0.1, "high": 1.0}}, "points_to_evaluate": [{"train.momentum": 1}]},
                   spec.trial_configs())
    with pytest.raises(SpecError, match="tune.num_samples: expected a positive integer"):
        parse_tune({"num_samples": 0, "space": {"train.lr": {"low": 0.1, "high": 1.0}}}, spec.trial_configs())
    with pytest.raises(SpecError, match="pbt needs a population"):
        parse_spec({"problem": PROBLEM, "methods": ["ew"], "scheduler": "pbt",
                    "tune": {"num_samples": 1, "space": {"train.lr": {"low": 0.001, "high": 0.1}}}})


@pytest.mark.slow
def test_asha_study_through_ray_records_early_stops_in_results_and_optuna(ray_session, tmp_path):
    from study.driver import run_study

    spec = _spec()
    raw = dict(spec.raw, name="asha", scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2})
    spec = parse_spec(raw)
    run_study(spec, str(tmp_path))
    st = ds.dataset(tmp_path / "asha" / "trials", format="parquet").to_table().to_pandas()
    assert len(st) == 6 and set(st.status) <= {"completed", "early_stopped"}
    assert (st.status == "early_stopped").any()
    assert ((st.status == "early_stopped") == (st.epochs_done < 3)).all()
    import ray.cloudpickle

    ckpt = sorted((tmp_path / "asha" / "tune").glob("searcher-state-*.pkl"))[-1]
    state = ray.cloudpickle.loads(ckpt.read_bytes())
    T = optuna.trial.TrialState
    cells = [json.loads(c)["cell"] for c in st.config]
    for i, s in enumerate(state["searchers"]):
        trials = s["_ot_study"].get_trials(deepcopy=False)
        assert len(trials) == 3  # every trial of the cell, early-stopped ones included
        early = sum(1 for status, c in zip(st.status, cells) if status == "early_stopped" and c == i)
        assert sum(t.state == T.PRUNED for t in trials) == early
        assert trials[0].params["train.lr"] == 0.003  # points_to_evaluate ran first


@pytest.mark.slow
def test_one_failing_trial_does_not_stop_the_others_and_the_study_stays_resumable(ray_session, tmp_path, capsys):
    from study.driver import run_study

    spec = parse_spec({"name": "failing", "problem": PROBLEM, "seeds": [0, 1], "train": {"epochs": 1},
                       "methods": ["ew", {"name": "tests.faults:RaiseAt", "step": 2, "label": "Crash"}],
                       "run": {"max_failures": 0}})
    meta = run_study(spec, str(tmp_path))
    assert meta["status"] == "finished" and meta["errored_trials"] == 2
    st = ds.dataset(tmp_path / "failing" / "trials", format="parquet").to_table().to_pandas()
    assert sorted(st[st.method == "EW"].status) == ["completed", "completed"]
    crashed = st[st.method == "Crash"]
    assert (crashed.status == "errored").all()
    assert crashed.reason.str.contains("RuntimeError: injected failure at step 2").all()
    # resumable: --resume --retry-errored restarts the errored trials (they fail again, deterministically)
    meta = run_study(spec, str(tmp_path), resume=True, retry_errored=True)
    assert meta["status"] == "finished"
    st = ds.dataset(tmp_path / "failing" / "trials", format="parquet").to_table().to_pandas()
    assert len(st) == 4 and sorted(st[st.method == "EW"].status) == ["completed", "completed"]
    # the first attempts left the dataset but were kept
    kept = sorted(p.name for p in (tmp_path / "failing" / "trials" / "_superseded").glob("*.parquet"))
    assert kept == sorted(f"{t}.parquet" for t in crashed.trial_id)


def test_each_trial_requests_its_own_problems_resources():
    from study.driver import ProblemResources

    spec = parse_spec({"problems": [PROBLEM, "celeba"], "methods": ["ew"],
                       "resources": {"gpu": 0.5, "memory_gb": 2}}, check_data=False)
    req = ProblemResources(spec)
    got = {c["problem"]: req({"trial": c}).required_resources for c in spec.trial_configs()}
    # the problem's defaults (multidigits 1 CPU, CelebA 8) under the spec's resources: half a GPU, 2 GiB
    assert got == {"multidigits": {"CPU": 1.0, "GPU": 0.5, "memory": 2.0 * 2**30},
                   "celeba": {"CPU": 8.0, "GPU": 0.5, "memory": 2.0 * 2**30}}
    alone = ProblemResources(parse_spec({"problem": PROBLEM, "methods": ["ew"]}))
    assert alone({"trial": spec.trial_configs()[0]}).required_resources == {"CPU": 1.0}


def test_schedulers_from_the_spec():
    from ray.tune.schedulers import AsyncHyperBandScheduler, HyperBandScheduler

    from study.errors import SpecError
    from study.search import make_scheduler

    base = {"problem": PROBLEM, "methods": ["ew"], "train": {"epochs": 9},
            "tune": {"num_samples": 2, "space": {"train.lr": {"low": 0.001, "high": 0.1}}}}
    hb = parse_spec({**base, "scheduler": {"name": "hyperband", "reduction_factor": 3}})
    s = make_scheduler(hb.scheduler, 9, "val_score", "max", hb.tune)
    assert isinstance(s, HyperBandScheduler) and s._eta == 3 and s._max_t_attr == 9 and s._time_attr == "training_iteration"
    asha = parse_spec({**base, "scheduler": {"name": "asha", "grace_period": 2, "reduction_factor": 3}})
    s = make_scheduler(asha.scheduler, 9, "val_score", "max", asha.tune)
    assert isinstance(s, AsyncHyperBandScheduler)
    assert [m for m, _ in s._brackets[0]._rungs] == [6, 2]  # rungs from grace 2 by x3 below max_t 9
    with pytest.raises(SpecError, match="scheduler.reduction_factor: must be > 1"):
        parse_spec({**base, "scheduler": {"name": "hyperband", "reduction_factor": 1}})
    with pytest.raises(SpecError, match="scheduler.grace: unknown setting for asha"):
        parse_spec({**base, "scheduler": {"name": "asha", "grace": 1}})
