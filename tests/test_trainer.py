import math

import numpy as np
import pytest
import torch

from study.errors import DivergedError
from study.training import Trial, train_trial
from tests.conftest import tiny_trial_config


def test_loss_decreases_over_a_few_batches():
    cfg = tiny_trial_config("ew")
    trial = Trial(cfg)
    torch.manual_seed(0)
    x = trial.data["train"].x[:64]
    y = {t: v[:64] for t, v in trial.data["train"].targets.items()}
    first = None
    for _ in range(15):
        trial.optimizer.zero_grad()
        losses = trial.step.losses(trial.problem, x, y)
        trial.step.backward(losses, trial.rng)
        trial.optimizer.step()
        first = float(losses.detach().sum()) if first is None else first
    final = float(trial.step.losses(trial.problem, x, y).detach().sum())
    assert final < 0.5 * first, (first, final)


@pytest.mark.parametrize("method", ["ew", "rlw", {"name": "rlw", "distribution": "dirichlet", "alpha": 0.5}, "uw"])
def test_same_config_gives_identical_metrics(method):
    cfg = tiny_trial_config(method, epochs=2)
    a = train_trial(cfg)
    b = train_trial(cfg)
    keys = [k for k in a if k.startswith(("val/", "test/", "train/"))]
    assert keys and all(a[k] == b[k] for k in keys)
    c = train_trial({**cfg, "seed": 1})
    assert any(a[k] != c[k] for k in keys)


def test_reporter_gets_every_epoch_and_resume_is_bit_identical():
    cfg = tiny_trial_config("rlw", epochs=3)
    import io

    seen: list[tuple[dict, bytes]] = []

    def reporter(metrics, state):  # the state is only valid during the call: serialise it, as Ray does
        buf = io.BytesIO()
        torch.save(state, buf)
        seen.append((metrics, buf.getvalue()))

    full = train_trial(cfg, reporter)
    assert [m["epoch"] for m, _ in seen] == [1, 2, 3]
    # Resume from the checkpoint after epoch 1, through torch.load(weights_only=True).
    state = torch.load(io.BytesIO(seen[0][1]), weights_only=True)
    resumed = train_trial(cfg, resume_state=state)
    keys = [k for k in full if k.startswith(("val/", "test/", "train/"))]
    assert all(full[k] == resumed[k] for k in keys)


def test_metrics_are_consistent_and_in_range():
    m = train_trial(tiny_trial_config("ew", epochs=1))
    for split in ("val", "test"):
        for t in ("left", "right"):
            assert 0.0 <= m[f"{split}/{t}/accuracy"] <= 1.0
            assert m[f"{split}/{t}/loss"] > 0
    assert m["val_score"] == pytest.approx((m["val/left/accuracy"] + m["val/right/accuracy"]) / 2)
    assert m["time_epoch_s"] > 0 and m["epoch"] == 1


def test_non_finite_loss_ends_the_trial_as_diverged():
    cfg = tiny_trial_config("ew", epochs=3, lr=1e30, nan_check_every=1)
    with pytest.raises(DivergedError) as info:
        train_trial(cfg)
    assert info.value.epoch >= 1 and "non-finite loss" in str(info.value)


def test_uw_learns_its_log_variances():
    trial = Trial(tiny_trial_config("uw"))
    before = trial.step.weighting.log_var.detach().clone()
    trial.train_epoch()
    after = trial.step.weighting.log_var.detach()
    assert not torch.equal(before, after)
    w = trial.step.weighting(torch.ones(2), np.random.default_rng(0))
    assert torch.allclose(w, 0.5 * torch.exp(-after))
    assert math.isclose(float(trial.step.weighting.regularizer()), 0.5 * float(after.sum()), rel_tol=1e-6)
