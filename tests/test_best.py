"""``litmus best``: a finished tuned study on disk (written with StudyWriter, no Ray) -> the follow-up spec.

Expected choices are computed by hand from the metric values below; each case is built so that a wrong
rule (last epoch instead of best epoch, unsigned metrics, every metric instead of each task's first,
errored or diverged trials allowed to win) would choose a different trial.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from study.cli import main
from study.results import StudyWriter, write_study
from study.search import apply_params
from study.spec import load_spec, parse_spec

DEMO = {
    "name": "tuned",
    "problem": "multidigits",
    "architecture": "hps",
    "methods": ["ew", {"name": "rlw", "distribution": "dirichlet", "label": "RLW-dirichlet"}, "cagrad"],
    "seeds": [0],
    "train": {"epochs": 2, "batch_size": 64, "optimizer": "adam", "lr": 1.0e-3},
    "resources": {"cpu": 1, "gpu": 0},
    "tune": {"num_samples": 3, "sampler": {"name": "tpe", "seed": 0}, "space": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "method.alpha": {"type": "float", "low": 0.1, "high": 10.0, "log": True, "when": {"distribution": "dirichlet"}},
        "method.c": {"type": "float", "low": 0.1, "high": 0.9, "step": 0.1, "when": {"aggregator": "cagrad"}},
    }},
}


def digits(*accs):
    """Per-epoch validation results of multidigits: (left, right) accuracies, plus losses that must be ignored."""
    return [{"val/left/accuracy": a, "val/right/accuracy": b, "val/left/loss": 100.0 * (i + 1),
             "val/right/loss": 0.01, "test/left/accuracy": 1.0 - a, "test/right/accuracy": 1.0 - b}
            for i, (a, b) in enumerate(accs)]


# cell 0: EW, cell 1: RLW-dirichlet, cell 2: CAGRAD
DEMO_TRIALS = [
    # EW: a's last epoch (0.70) beats b's last (0.15), but b's best epoch (0.89) beats a's best (0.70): b
    ("ew_a", 0, {"train.lr": 1.0e-3}, digits((0.50, 0.70), (0.80, 0.60)), "completed"),
    ("ew_b", 0, {"train.lr": 3.0e-3}, digits((0.90, 0.88), (0.20, 0.10)), "completed"),
    ("ew_c", 0, {"train.lr": 5.0e-3}, digits((0.99, 0.99)), "errored"),          # never chosen
    # RLW: a's best 0.775 (epoch 2) > b's best 0.77 (epoch 1): a
    ("rlw_a", 1, {"train.lr": 2.0e-3, "method.alpha": 0.3}, digits((0.70, 0.70), (0.75, 0.80)), "completed"),
    ("rlw_b", 1, {"train.lr": 4.0e-4, "method.alpha": 5.0}, digits((0.76, 0.78), (0.60, 0.60)), "completed"),
    # CAGrad: b was stopped early by the scheduler at 0.75 > a's 0.65; c diverged at 0.95: b
    ("cag_a", 2, {"train.lr": 1.0e-3, "method.c": 0.2}, digits((0.60, 0.60), (0.65, 0.65)), "completed"),
    ("cag_b", 2, {"train.lr": 6.0e-3, "method.c": 0.7}, digits((0.80, 0.70)), "early_stopped"),
    ("cag_c", 2, {"train.lr": 1.0e-2, "method.c": 0.9}, digits((0.95, 0.95)), "diverged"),
]


def make_study(root, raw: dict, trials, *, status: str = "finished"):
    """Write a finished tuned study the way the driver does: spec.yaml, study.json, results/, trials/."""
    spec = parse_spec(copy.deepcopy(raw), check_data=False)
    cells = spec.trial_configs()
    writer = StudyWriter(str(root))
    for trial_id, cell, tuned, epochs, trial_status in trials:
        cfg = apply_params(cells[cell], tuned)
        cfg["tuned"], cfg["cell"] = dict(tuned), cell
        for e, metrics in enumerate(epochs, start=1):
            writer.add_result(trial_id, cfg, {"epoch": e, **metrics})
        writer.set_status(trial_id, cfg, trial_status, epochs_done=len(epochs))
    write_study(str(root), {"name": spec.name, "spec_hash": spec.spec_hash, "status": status})
    (root / "spec.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


def run_best(capsys, *args):
    rc = main(["best", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_best_settings_by_hand(tmp_path, capsys):
    study = make_study(tmp_path / "tuned", DEMO, DEMO_TRIALS)
    out = tmp_path / "followup.yaml"
    rc, stdout, err = run_best(capsys, study, "--seeds", 3, "--out", out)
    assert rc == 0, err
    written = yaml.safe_load(out.read_text())
    assert written["methods"] == [
        {"name": "ew", "label": "EW", "train": {"lr": 3.0e-3}},
        {"name": "rlw", "distribution": "dirichlet", "alpha": 0.3, "label": "RLW-dirichlet", "train": {"lr": 2.0e-3}},
        {"name": "cagrad", "c": 0.7, "label": "CAGRAD", "train": {"lr": 6.0e-3}},
    ]
    assert written["seeds"] == [0, 1, 2] and written["name"] == "tuned_best"
    assert "tune" not in written and "scheduler" not in written
    assert written["train"] == DEMO["train"] and written["problem"] == "multidigits"
    # the per-trial comments carry the recomputed val_score of the chosen trial
    assert "val_score 0.8900 at epoch 1, trial ew_b, best of 2" in out.read_text()
    assert "val_score 0.7750 at epoch 2, trial rlw_a, best of 2" in out.read_text()
    assert "val_score 0.7500 at epoch 1, trial cag_b, best of 2" in out.read_text()
    assert "wrote" in stdout and "3 methods x 3 seeds = 9 trials" in stdout

    spec = load_spec(out, check_data=False)
    configs = spec.trial_configs()
    assert len(configs) == 9 and spec.tune is None
    lr = {(c["method"]["label"], c["seed"]): c["train"]["lr"] for c in configs}
    assert lr == {**{("EW", s): 3.0e-3 for s in range(3)}, **{("RLW-dirichlet", s): 2.0e-3 for s in range(3)},
                  **{("CAGRAD", s): 6.0e-3 for s in range(3)}}
    rlw = next(c for c in configs if c["method"]["label"] == "RLW-dirichlet")
    assert rlw["method"]["weighting"] == {"name": "rlw", "distribution": "dirichlet", "alpha": 0.3}
    assert all(c["train"]["epochs"] == 2 for c in configs)

    # an existing --out is never replaced silently
    rc, _, err = run_best(capsys, study, "--out", out)
    assert rc == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_best(capsys, study, "--out", out, "--force", "--seeds", 1, "--name", "again")
    assert rc == 0 and yaml.safe_load(out.read_text())["seeds"] == [0]


NYU = {
    "name": "nyu_tuned",
    "problem": {"name": "nyuv2", "root": "/nonexistent/nyuv2"},
    "methods": ["ew"],
    "seeds": [0],
    "train": {"epochs": 1},
    "tune": {"num_samples": 2, "space": {"train.lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-3, "log": True}}},
}


def nyu(miou, pix, abs_err, rel_err, mean_angle, within):
    return [{"val/segmentation/miou": miou, "val/segmentation/pixel_accuracy": pix, "val/depth/abs_err": abs_err,
             "val/depth/rel_err": rel_err, "val/normal/mean_angle": mean_angle, "val/normal/median_angle": mean_angle,
             "val/normal/within_11.25": within, "val/normal/within_22.5": within, "val/normal/within_30": within}]


# val_score = mean(miou, -abs_err, -mean_angle): a = (0.40 - 0.45 - 30) / 3 = -10.0167, b = (0.30 - 0.50 - 25) / 3
# = -8.4, so b. Unsigned, a wins (10.28 > 8.6); with all metrics or pixel accuracy, a wins too (0.9 vs 0.5).
# On val/depth/abs_err (lower is better) a wins: 0.45 < 0.50.
NYU_TRIALS = [
    ("a", 0, {"train.lr": 1.0e-4}, nyu(0.40, 0.90, 0.45, 0.10, 30.0, 0.9), "completed"),
    ("b", 0, {"train.lr": 5.0e-4}, nyu(0.30, 0.50, 0.50, 0.30, 25.0, 0.1), "completed"),
]


@pytest.mark.parametrize("metric, mode, winner, lr, shown", [
    (None, None, "b", 5.0e-4, "val_score -8.4000"),
    ("val/depth/abs_err", "min", "a", 1.0e-4, "val/depth/abs_err 0.4500"),
])
def test_score_is_each_tasks_first_metric_signed(tmp_path, capsys, metric, mode, winner, lr, shown):
    raw = copy.deepcopy(NYU)
    if metric:
        raw["tune"].update(metric=metric, mode=mode)
    study = make_study(tmp_path / "nyu", raw, NYU_TRIALS)
    out = tmp_path / "f.yaml"
    rc, stdout, err = run_best(capsys, study, "--seeds", 2, "--out", out)
    assert rc == 0, err
    written = yaml.safe_load(out.read_text())
    assert written["methods"] == [{"name": "ew", "label": "EW", "train": {"lr": lr}}]
    assert written["problem"] == {"name": "nyuv2", "root": "/nonexistent/nyuv2"}
    assert f"trial {winner}," in out.read_text() and shown in out.read_text()
    assert "warning" not in stdout


@pytest.mark.parametrize("case, needle", [
    ("missing", "no study at"),
    ("not_tuned", "was not tuned"),
    ("unfinished", "is not finished (status: running)"),
    ("trial_running", "still marked running"),
    ("no_usable", "method 'EW' has no completed trial"),
    ("bad_seeds", "--seeds"),
])
def test_errors_are_one_line_exit_2(tmp_path, capsys, case, needle):
    trials = DEMO_TRIALS
    status = "finished"
    raw = copy.deepcopy(DEMO)
    if case == "trial_running":
        trials = [*DEMO_TRIALS[:-1], (*DEMO_TRIALS[-1][:4], "running")]
    if case == "unfinished":
        status = "running"
    if case == "no_usable":
        trials = [t if t[1] != 0 else (*t[:4], "errored") for t in DEMO_TRIALS]
    study = make_study(tmp_path / "s", raw, trials, status=status)
    if case == "not_tuned":
        del raw["tune"]
        (study / "spec.yaml").write_text(yaml.safe_dump(raw))
    target = tmp_path / "nothing" if case == "missing" else study
    seeds = 0 if case == "bad_seeds" else 2
    rc, _, err = run_best(capsys, target, "--seeds", seeds, "--out", tmp_path / "f.yaml")
    assert rc == 2
    assert needle in err and err.startswith("litmus: error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "f.yaml").exists()


def test_several_architectures_need_a_choice(tmp_path, capsys):
    raw = copy.deepcopy(DEMO)
    del raw["architecture"]
    raw["architectures"] = ["hps", "mmoe"]
    n = len(DEMO["methods"])
    # the same trials in the mmoe cells (cells n..2n-1), with every value 0.1 lower
    mmoe = [(f"m_{t[0]}", t[1] + n, t[2], [{k: v - 0.1 for k, v in ep.items()} for ep in t[3]], t[4])
            for t in DEMO_TRIALS]
    study = make_study(tmp_path / "s", raw, DEMO_TRIALS + mmoe)
    rc, _, err = run_best(capsys, study, "--out", tmp_path / "f.yaml")
    assert rc == 2 and "--architecture mmoe" in err and "--architecture hps" in err
    rc, _, err = run_best(capsys, study, "--out", tmp_path / "f.yaml", "--architecture", "mmoe")
    assert rc == 0, err
    text = (tmp_path / "f.yaml").read_text()
    written = yaml.safe_load(text)
    assert written["architecture"] == "mmoe" and "architectures" not in written
    assert "trial m_ew_b," in text and "trial m_rlw_a," in text and "trial m_cag_b," in text
    assert load_spec(tmp_path / "f.yaml", check_data=False).architectures == [{"name": "mmoe"}]
