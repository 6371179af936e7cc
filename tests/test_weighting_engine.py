"""The trainer side of methods: backward paths, heads, combinations, hooks, non-finite policy."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from study.architectures.hps import HPS
from study.errors import DivergedError, SpecError
from study.weighting import AGGREGATORS, WEIGHTINGS
from study.weighting.method import build_method, normalize_method
from study.weighting.step import MethodStep

torch.set_num_threads(1)
TASKS = ("a", "b", "c")


class ToyProblem:
    tasks = TASKS
    multi_input = False

    def loss(self, task, output, target):
        return F.mse_loss(output, target)


def toy_model(seed=0):
    torch.manual_seed(seed)
    enc = lambda: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())  # noqa: E731
    return HPS(enc, {t: nn.Linear(6, 1) for t in TASKS}, TASKS, False)


def toy_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 5, generator=g)
    return x, {t: torch.randn(16, 1, generator=g) for t in TASKS}


def make_step(method, seed=0):
    model = toy_model(seed)
    w, a = build_method(normalize_method(method), len(TASKS))
    return model, MethodStep(model, w, a)


def grads_after_step(method, seed=0, rng_seed=0):
    model, step = make_step(method, seed)
    x, y = toy_batch()
    losses = step.losses(ToyProblem(), x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step.backward(losses, np.random.default_rng(rng_seed))
    return model, step, {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}


@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_gradsum_equals_ew_for_every_parameter(level):
    _, _, ew = grads_after_step("ew")
    _, _, gs = grads_after_step({"name": "gradsum", "level": level})
    assert ew.keys() == gs.keys()
    for n in ew:
        torch.testing.assert_close(gs[n], ew[n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_heads_keep_their_own_unweighted_gradients(level):
    """RGW weights only the shared part; each head gets its own task's gradient."""
    _, _, ew = grads_after_step("ew")
    _, step, rg = grads_after_step({"name": "rgw", "level": level})
    for t in TASKS:
        for k in ("weight", "bias"):
            torch.testing.assert_close(rg[f"decoders.{t}.{k}"], ew[f"decoders.{t}.{k}"])
    assert not torch.allclose(rg["encoder.0.weight"], ew["encoder.0.weight"])


def test_rgw_representation_direction_is_the_weighted_sum():
    model, step, rg = grads_after_step({"name": "rgw", "level": "representation"}, rng_seed=7)
    w = torch.from_numpy(np.random.default_rng(7).normal(size=3))
    w = torch.softmax(w, 0).float()
    # reference: backward of sum_i w_i L_i through the encoder
    ref = toy_model(0)
    x, y = toy_batch()
    out = ref(x)
    losses = torch.stack([F.mse_loss(out[t], y[t]) for t in TASKS])
    (w * losses).sum().backward()
    torch.testing.assert_close(rg["encoder.0.weight"], ref.encoder[0].weight.grad, rtol=1e-5, atol=1e-6)


def test_learnable_loss_weights_get_gradients_with_an_aggregator():
    _, step, g = grads_after_step({"weighting": "uw", "aggregator": "mgda"})
    lv = step.weighting.log_var.grad
    assert lv is not None and torch.isfinite(lv).all() and (lv != 0).all()


def _one_sgd_step(method):
    model, step = make_step(method)
    x, y = toy_batch()
    before = [p.detach().clone() for p in model.shared_parameters()]
    opt = torch.optim.SGD(list(model.parameters()) + list(step.parameters()), lr=0.1)
    losses = step.losses(ToyProblem(), x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step.backward(losses, np.random.default_rng(0))
    opt.step()
    step.after_step()
    return any(not torch.equal(a, b) for a, b in zip(before, model.shared_parameters()))


@pytest.mark.parametrize("weighting", [n for n in WEIGHTINGS.names() if n not in ("moml",)])
@pytest.mark.parametrize("aggregator", ["mgda", "rgw", "graddrop", "imtl_g"])
def test_loss_weighting_with_representation_gradients_works_or_is_rejected(weighting, aggregator):
    method = {"weighting": weighting, "aggregator": {"name": aggregator, "level": "representation"}}
    try:
        changed = _one_sgd_step(method)
    except SpecError as exc:
        assert not WEIGHTINGS.get(weighting).combinable, exc
        return
    assert changed


@pytest.mark.parametrize("name", [n for n in WEIGHTINGS.names() if not WEIGHTINGS.get(n).combinable])
def test_complete_methods_are_rejected_with_an_aggregator_at_load(name):
    with pytest.raises(SpecError, match="cannot be combined"):
        build_method(normalize_method({"weighting": name, "aggregator": "pcgrad"}), 3)


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_every_aggregator_trains_at_every_level(name):
    for level in AGGREGATORS.get(name).levels:
        assert _one_sgd_step({"name": name, "level": level})


def test_buffer_is_reused_across_steps():
    model, step = make_step("pcgrad")
    x, y = toy_batch()
    for i in range(2):
        model.zero_grad(set_to_none=True)
        step.backward(step.losses(ToyProblem(), x, y), np.random.default_rng(i))
        bufs = list(step._gbufs.values())
        if i == 0:
            first = bufs[0].data_ptr()
    assert len(bufs) == 1 and bufs[0].data_ptr() == first


def test_presets_and_labels():
    m = normalize_method("mgda_ub")
    assert m["aggregator"] == {"name": "mgda", "level": "representation"} and m["label"] == "MGDA-UB"
    m = normalize_method("imtl")
    assert m["weighting"] == {"name": "imtl_l"} and m["aggregator"]["level"] == "representation"
    m = normalize_method({"name": "mgda_ub", "normalization": "l2"})
    assert m["aggregator"]["normalization"] == "l2"
    with pytest.raises(SpecError, match="did you mean 'pcgrad'"):
        normalize_method("pcgard")


def test_stl_trains_one_head_only_and_resolves_names():
    _, step, g = grads_after_step({"name": "stl", "task": "b"})
    assert step.weighting.index == 1
    assert g["decoders.a.weight"].abs().sum() == 0 and g["decoders.b.weight"].abs().sum() > 0
    with pytest.raises(SpecError, match="task must be one of a, b, c"):
        make_step({"name": "stl", "task": "z"})


def test_gradnorm_uses_last_shared_layer_norms():
    model, step, g = grads_after_step("gradnorm")
    assert step.weighting.w.grad is not None  # trained by L_grad through the optimizer
    x, y = toy_batch()
    out = toy_model(0)(x)
    W = toy_model(0).encoder[2].weight
    assert step._last_layer_norms(step.losses(ToyProblem(), x, y)).shape == (3,)
    del out, W


def test_famo_updates_after_the_step():
    model, step = make_step("famo")
    x, y = toy_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = step.losses(ToyProblem(), x, y)
    step.backward(losses, np.random.default_rng(0))
    opt.step()
    assert torch.equal(step.weighting.xi, torch.zeros(3))
    step.after_step()
    assert not torch.equal(step.weighting.xi, torch.zeros(3))


# --- through the trial loop -----------------------------------------------------------------------
def digits_config(method, **train):
    return {"problem": "multidigits", "problem_params": {"n_train": 96, "n_val": 48, "n_test": 32, "width": 4},
            "architecture": "hps", "method": normalize_method(method), "seed": 0,
            "train": {"epochs": 1, "batch_size": 32, "device": "cpu", **train}}


@pytest.fixture(scope="module")
def digits_data():
    from study.problems import PROBLEMS

    return PROBLEMS.get("multidigits")(n_train=96, n_val=48, n_test=32, width=4).load(0)


@pytest.mark.parametrize("method", ["ew", "rlw", "mgda", "graddrop", "famo"])
def test_non_finite_loss_ends_the_trial_as_diverged(method, digits_data, monkeypatch):
    from study.problems.multidigits import MultiDigits
    from study.training import Trial

    original = MultiDigits.loss

    def nan_loss(self, task, output, target):
        out = original(self, task, output, target)
        return out * float("nan") if task == "right" else out

    monkeypatch.setattr(MultiDigits, "loss", nan_loss)
    trial = Trial(digits_config(method, nan_check_every=1), data=digits_data)
    with pytest.raises(DivergedError) as err:
        trial.train_epoch()
    assert err.value.epoch == 1 and err.value.step == 1


def test_moml_trains_with_validation_batches(digits_data):
    from study.training import Trial

    trial = Trial(digits_config("moml"), data=digits_data)
    bn = {n: b.clone() for n, b in trial.model.named_buffers()}
    phi0 = trial.step.weighting.phi.clone()
    x, y = next(iter(trial.problem.batches(digits_data["train"], 32, shuffle=False, generator=None)))
    losses = trial.step.losses(trial.problem, x, y)
    bn_after_forward = {n: b.clone() for n, b in trial.model.named_buffers()}
    trial.step.backward(losses, trial.rng)
    assert not torch.equal(trial.step.weighting.phi, phi0)
    for n, b in trial.model.named_buffers():  # the virtual step's validation forward left BN alone
        assert torch.equal(b, bn_after_forward[n]), n
    assert any(not torch.equal(bn[n], bn_after_forward[n]) for n in bn if "running_mean" in n)
    out = trial.run_epoch()
    assert np.isfinite(out["train/left/loss"])


@pytest.mark.parametrize("method", ["gradvac", "famo", {"name": "rlw", "distribution": "random_normal"},
                                    "nash_mtl", "moco", "dwa"])
def test_resume_reproduces_the_uninterrupted_run(method, digits_data):
    from study.training import Trial

    cfg = digits_config(method)
    cfg["train"]["epochs"] = 2
    a = Trial(cfg, data=digits_data)
    a.run_epoch()
    state = copy.deepcopy(a.state_dict())
    a.run_epoch()
    b = Trial(cfg, data=digits_data)
    b.load_state_dict(state)
    b.run_epoch()
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, msg=n)


def test_rotograd_learns_orthogonal_rotations():
    model, step = make_step("rotograd")
    assert step.aggregator.latent_size == 6  # read from the heads
    opt = torch.optim.SGD(list(model.parameters()) + list(step.parameters()), lr=0.5)
    x, y = toy_batch()
    for i in range(3):
        opt.zero_grad(set_to_none=True)
        step.backward(step.losses(ToyProblem(), x, y), np.random.default_rng(i))
        assert all(a.grad is not None for a in step.aggregator.A)
        opt.step()
        step.after_step()
    R = step.aggregator.rotations()
    assert any(not torch.allclose(r, torch.eye(6)) for r in R)
    for r in R:
        torch.testing.assert_close(r @ r.T, torch.eye(6), atol=1e-5, rtol=0)


@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_rlw_plus_gradient_method_scales_the_task_losses_before_aggregation(level):
    """RLW + an aggregator (the paper's RLW+CAGrad form): random loss weights first, then the aggregator
    combines the weighted task gradients. With ``gradsum`` the result is exactly the RLW gradient, heads
    included (each head's loss is scaled by its weight)."""
    method = {"weighting": {"name": "rlw", "distribution": "dirichlet", "alpha": 1.0},
              "aggregator": {"name": "gradsum", "level": level}}
    _, step, combo = grads_after_step(method, rng_seed=3)
    _, _, rlw = grads_after_step({"name": "rlw", "distribution": "dirichlet", "alpha": 1.0}, rng_seed=3)
    w = np.random.default_rng(3).dirichlet([1.0] * 3)
    np.testing.assert_allclose(step.last_weights.numpy(), w / w.sum(), rtol=1e-6)
    for n in rlw:
        torch.testing.assert_close(combo[n], rlw[n], rtol=1e-5, atol=1e-6, msg=n)
    _, _, ew = grads_after_step("ew")
    assert not torch.allclose(combo["encoder.0.weight"], ew["encoder.0.weight"])
