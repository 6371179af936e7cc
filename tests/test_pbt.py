"""Cell-wise synchronous PBT: the seeded population, exploit within a cell only, clipped perturbations,
the driver wiring, restored clocks on --resume, and a tiny PBT study through Ray (issue 7)."""

from __future__ import annotations

import json
import random

import optuna
import pyarrow.dataset as ds
import pytest
import torch

from study.search import make_pbt, next_sync, pbt_population
from study.spec import parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)
PROBLEM = {"name": "multidigits", "n_train": 128, "n_val": 64, "n_test": 64, "width": 8}
SPACE = {
    "train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
    "train.batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},      # 16, 32, 48, 64
    "train.grad_clip": {"type": "float", "low": 0.5, "high": 2.0, "step": 0.5},
    "train.weight_decay": {"type": "float", "low": 0.0, "high": 1e-3},            # tuned, not mutable
    "method.alpha": {"type": "float", "low": 0.1, "high": 10.0, "log": True, "when": {"distribution": "dirichlet"}},
}


def _spec(num_samples=4, epochs=3, seed=5, points=None, space=None, name="pbt", **extra):
    tune = {"num_samples": num_samples, "sampler": {"name": "tpe", "seed": seed}, "space": space or SPACE}
    if points:
        tune["points_to_evaluate"] = points
    return parse_spec({"name": name, "problem": PROBLEM, "seeds": [0], "train": {"epochs": epochs},
                       "methods": ["ew", {"name": "rlw", "distribution": "dirichlet"}], "tune": tune,
                       "scheduler": {"name": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.25,
                                     "resample_probability": 0.25}, **extra})


# -- the initial population ----------------------------------------------------------------------
def test_population_is_seeded_per_cell_and_points_come_first():
    spec = _spec(num_samples=6, points=[{"train.lr": 0.05, "train.batch_size": 32}, {"method.alpha": 2.0}])
    cells = spec.trial_configs()
    pop = pbt_population(spec.tune, cells)
    assert pop == pbt_population(spec.tune, cells)                     # the same members on every run
    assert [m["cell"] for m in pop] == [0] * 6 + [1] * 6
    other = pbt_population(dict(spec.tune, seed=6), cells)
    assert [m["tuned"] for m in other] != [m["tuned"] for m in pop]    # the seed matters
    # cell 0 (EW) has no method.alpha: only the first point applies; cell 1 gets both, in order
    assert pop[0]["train"]["lr"] == 0.05 and pop[0]["train"]["batch_size"] == 32
    assert pop[1]["train"]["lr"] != 0.05
    assert pop[6]["train"]["lr"] == 0.05 and pop[6]["train"]["batch_size"] == 32
    assert pop[7]["method"]["weighting"]["alpha"] == 2.0 and pop[7]["tuned"]["method.alpha"] == 2.0
    assert all("method.alpha" not in m["tuned"] for m in pop[:6])
    for m in pop:  # tuned values are what the member's config runs with
        for k, v in m["tuned"].items():
            section, _, name = k.partition(".")
            got = m["train"][name] if section == "train" else m["method"]["weighting"][name]
            assert got == v


def test_population_respects_ranges_int_bounds_and_steps():
    spec = _spec(num_samples=60)
    pop = pbt_population(spec.tune, spec.trial_configs())
    bs = [m["train"]["batch_size"] for m in pop]
    assert set(bs) == {16, 32, 48, 64} and all(isinstance(b, int) for b in bs)   # both int bounds included
    clip = [m["train"]["grad_clip"] for m in pop]
    assert set(clip) == {0.5, 1.0, 1.5, 2.0}
    lr = [m["train"]["lr"] for m in pop]
    assert all(1e-3 <= v <= 1e-1 for v in lr) and min(lr) < 3e-3 and max(lr) > 3e-2  # log scale reaches both ends
    assert all(0.0 <= m["train"]["weight_decay"] <= 1e-3 for m in pop)


# -- the scheduler ----------------------------------------------------------------------------------
class FakeTrial:
    """What PBT's bookkeeping reads of a Ray trial."""

    PAUSED = "PAUSED"

    def __init__(self, name, config, score):
        self.trial_id = name
        self.experiment_tag = name
        self.config = {"trial": config}
        self.status = "PAUSED"
        self.checkpoint = f"ckpt-{name}"
        self.score = score
        self.last_result = {}
        self.temporary_state = type("S", (), {"saving_to": None})()

    def is_finished(self):
        return False

    def __repr__(self):
        return self.trial_id


def _population_scheduler(spec, scores):
    pop = pbt_population(spec.tune, spec.trial_configs())
    sched = make_pbt(spec.scheduler, "val_score", "max", spec.tune, spec.trial_configs())
    trials = [FakeTrial(f"c{m['cell']}m{i}", m, s) for i, (m, s) in enumerate(zip(pop, scores))]
    from ray.tune.schedulers.pbt import _PBTTrialState

    for t in trials:
        st = _PBTTrialState(t)
        st.last_score = t.score
        st.last_result = {"val_score": t.score, "training_iteration": 1}
        st.last_train_time = 1
        sched._trial_state[t] = st
    return sched, trials


def test_lower_quantile_clones_only_its_own_cell():
    spec = _spec(num_samples=4)
    # every member of cell 1 beats every member of cell 0: Ray's global ranking would put all of cell 0
    # in the lower quantile and have them clone cell-1 (RLW) members
    scores = [0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.7, 0.6]
    sched, trials = _population_scheduler(spec, scores)
    from ray.tune.schedulers import PopulationBasedTraining

    g_lower, g_upper = PopulationBasedTraining._quantiles(sched)
    assert {t.config["trial"]["cell"] for t in g_lower} == {0} and {t.config["trial"]["cell"] for t in g_upper} == {1}
    lower, upper = sched._quantiles()
    assert sorted(map(str, lower)) == ["c0m0", "c1m7"] and sorted(map(str, upper)) == ["c0m3", "c1m4"]
    exploits = []
    sched._exploit = lambda controller, trial, clone: exploits.append((str(trial), str(clone)))
    for _ in range(20):
        random.seed(_)
        for t in upper + lower:
            sched._checkpoint_or_exploit(t, None, upper, lower)
    assert set(exploits) == {("c0m0", "c0m3"), ("c1m7", "c1m4")}


def test_new_config_changes_only_mutable_keys_clipped_into_their_ranges():
    spec = _spec(num_samples=4)
    sched, trials = _population_scheduler(spec, [0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.7, 0.6])
    clone = trials[5]  # an RLW (Dirichlet) member: its method.alpha and weight_decay must travel unchanged
    # put it at the edges so that x1.2 / x0.8 leaves the ranges unless clipped
    c = clone.config["trial"]
    c["train"].update(lr=0.1, batch_size=64, grad_clip=0.5)
    c["tuned"].update({"train.lr": 0.1, "train.batch_size": 64, "train.grad_clip": 0.5})
    seen = {"lr": set(), "batch_size": set(), "grad_clip": set()}
    for i in range(300):
        random.seed(i)
        new, _ = sched._get_new_config(trials[6], clone)
        n = new["trial"]
        assert 1e-3 <= n["train"]["lr"] <= 0.1
        assert n["train"]["batch_size"] in (16, 32, 48, 64) and isinstance(n["train"]["batch_size"], int)
        assert n["train"]["grad_clip"] in (0.5, 1.0, 1.5, 2.0)
        for k in seen:
            seen[k].add(n["train"][k])
            assert n["tuned"][f"train.{k}"] == n["train"][k]
        strip = lambda cfg: {**cfg, "train": {k: v for k, v in cfg["train"].items() if k not in seen},  # noqa: E731
                             "tuned": {k: v for k, v in cfg["tuned"].items() if k.split(".")[1] not in seen}}
        assert strip(n) == strip(c)  # cell, method (alpha), weight_decay, seed: the clone's, unchanged
    assert 0.1 in seen["lr"] and 0.08 in {round(v, 12) for v in seen["lr"]}  # x1.2 clipped to high; x0.8
    assert seen["batch_size"] >= {64, 48} and len(seen["grad_clip"]) > 1


def test_next_sync_after_restore():
    assert next_sync([0, 0], 1) == 1
    assert next_sync([3, 2], 1) == 3        # the member behind catches up to epoch 3 first
    assert next_sync([3, 3], 1) == 4        # all at the sync point: the next one
    assert next_sync([4, 3], 2) == 4 and next_sync([4, 4], 2) == 6 and next_sync([5, 4], 2) == 6


def test_restored_members_keep_their_clock_and_score():
    spec = _spec(num_samples=2)
    pop = pbt_population(spec.tune, spec.trial_configs())
    sched = make_pbt(spec.scheduler, "val_score", "max", spec.tune, spec.trial_configs())
    controller = type("C", (), {"search_alg": None})()
    a, b = FakeTrial("a", pop[0], 0.0), FakeTrial("b", pop[1], 0.0)
    a.last_result = {"training_iteration": 3, "val_score": 0.7}
    b.last_result = {"training_iteration": 2, "val_score": 0.4}
    a.run_metadata = b.run_metadata = type("M", (), {"checkpoint_manager": type("CM", (), {
        "checkpoint_config": type("CC", (), {"num_to_keep": 3})()})()})()
    sched.on_trial_add(controller, a)
    sched.on_trial_add(controller, b)
    assert sched._trial_state[a].last_train_time == 3 and sched._trial_state[b].last_train_time == 2
    assert sched._trial_state[a].last_score == 0.7
    assert sched._next_perturbation_sync == 3


# -- the driver and the trainer ---------------------------------------------------------------------
def test_driver_runs_pbt_over_the_population_without_a_searcher():
    from study.driver import checkpoints_to_keep, planned_trials, tuner_arguments

    spec = _spec(num_samples=3)
    args = tuner_arguments(spec, spec.trial_configs())
    tc = args["tune_config"]
    assert tc.search_alg is None and type(tc.scheduler).__name__ == "CellwisePBT"
    grid = args["param_space"]["trial"]["grid_search"]
    assert grid == pbt_population(spec.tune, spec.trial_configs()) and len(grid) == planned_trials(spec) == 6
    # the scheduler was given the cells: each cell's members perturb (the regression: nothing did)
    assert len(tc.scheduler._hyperparam_mutations["trial"]["train"]) == 3
    assert checkpoints_to_keep(spec) == 3
    assert checkpoints_to_keep(parse_spec({"problem": PROBLEM, "methods": ["ew"]})) == 1


def test_restored_checkpoint_runs_with_the_new_lr_batch_size_and_grad_clip():
    from conftest import tiny_trial_config

    from study.training import Trial

    cfg = tiny_trial_config(epochs=2, lr=0.01, scheduler={"name": "step", "step_size": 1, "gamma": 0.5})
    first = Trial(cfg)
    first.run_epoch()
    state = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in first.state_dict().items()}
    assert [g["lr"] for g in first.optimizer.param_groups] == [0.005]
    new = dict(cfg, train=dict(cfg["train"], lr=0.04, batch_size=32, grad_clip=0.25))
    second = Trial(new)
    second.load_state_dict(state)
    assert [g["lr"] for g in second.optimizer.param_groups] == [0.02]  # 0.005 * 0.04 / 0.01
    second.scheduler.step()
    assert [g["lr"] for g in second.optimizer.param_groups] == [0.01]  # the schedule goes on from the new lr
    assert second.scheduler.base_lrs == [0.04]
    second.scheduler.step()  # undo the extra step for the epoch below
    second.load_state_dict(state)
    sizes, norms = [], []
    orig = torch.nn.utils.clip_grad_norm_
    torch.nn.utils.clip_grad_norm_ = lambda params, max_norm: norms.append(max_norm) or orig(params, max_norm)
    try:
        import study.training as tr

        batches = tr.train_batches
        tr.train_batches = lambda problem, data, bs, gen: (sizes.append(bs), *batches(problem, data, bs, gen))[1:]
        second.run_epoch()
    finally:
        torch.nn.utils.clip_grad_norm_ = orig
        tr.train_batches = batches
    assert sizes == [32] and norms and set(norms) == {0.25}
    assert second.state_dict()["base_lr"] == 0.04


# -- a tiny PBT study through Ray --------------------------------------------------------------------
@pytest.mark.slow
def test_pbt_study_through_ray_exploits_within_cells_and_records_every_epoch_once(ray_session, tmp_path):
    from study.best import best
    from study.driver import run_study

    space = {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
             "method.alpha": {"type": "float", "low": 0.1, "high": 10.0, "log": True,
                              "when": {"distribution": "dirichlet"}}}
    spec = _spec(num_samples=3, epochs=3, space=space, name="pbtrun")
    meta = run_study(spec, str(tmp_path))
    assert meta["status"] == "finished" and meta["errored_trials"] == 0 and meta["trials"] == 6
    root = tmp_path / "pbtrun"
    st = ds.dataset(root / "trials", format="parquet").to_table().to_pandas()
    assert len(st) == 6 and (st.status == "completed").all() and (st.epochs_done == 3).all()
    configs = [json.loads(c) for c in st.config]
    assert sorted(c["cell"] for c in configs) == [0, 0, 0, 1, 1, 1]
    # every epoch of every trial exactly once: no duplicates, no gaps
    rows = ds.dataset(root / "results", format="parquet").to_table().to_pandas()
    per = rows.groupby(["trial_id", "split", "task", "metric"]).epoch.apply(sorted)
    assert len(per) > 0 and all(list(v) == [1, 2, 3] for v in per)
    assert set(rows.trial_id) == set(st.trial_id)
    # exploits happened (2 perturbation rounds x 1 lower member per cell), each within its cell
    policy = [json.loads(line) for p in (root / "tune").rglob("pbt_global.txt") for line in p.read_text().splitlines()]
    assert len(policy) == 4
    population = pbt_population(spec.tune, spec.trial_configs())
    for target, _clone, _it, _clone_it, clone_cfg, new_cfg in policy:
        index = int(target.split("_")[0])  # the member's grid index in the population
        assert population[index]["cell"] == clone_cfg["trial"]["cell"] == new_cfg["trial"]["cell"]
        assert new_cfg["trial"]["method"] == clone_cfg["trial"]["method"]
        assert 1e-3 <= new_cfg["trial"]["train"]["lr"] <= 1e-1
        assert new_cfg["trial"]["tuned"]["train.lr"] == new_cfg["trial"]["train"]["lr"]
    # exploited members record the values each stretch of epochs ran with; litmus best reads them
    histories = [c["tuned_history"] for c in configs if "tuned_history" in c]
    assert histories and all(h[0][0] == 1 and all(a[0] < b[0] for a, b in zip(h, h[1:])) for h in histories)
    assert all(first in (2, 3) for h in histories for first, _ in h[1:])  # after the epoch-1/2 perturbations
    assert all(c["tuned"] == (c.get("tuned_history") or [[1, c["tuned"]]])[-1][1] for c in configs)
    b = best(str(root), seeds=2)
    assert [c.label for c in b.choices] == ["EW", "RLW-dirichlet"]
    by_id = dict(zip(st.trial_id, configs))
    for c in b.choices:  # the setting its best epoch ran with, as the follow-up's method and train
        hist = by_id[c.trial_id].get("tuned_history") or [[1, by_id[c.trial_id]["tuned"]]]
        ran_with = [t for first, t in hist if first <= c.epoch][-1]
        assert c.tuned == ran_with and c.train["lr"] == ran_with["train.lr"]
        if "method.alpha" in ran_with:
            assert c.method["weighting"]["alpha"] == ran_with["method.alpha"]
