"""Speed options of the trainer: bf16 autocast (``train.amp``) and ``train.channels_last``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from study.errors import SpecError
from study.training import Trial, amp_dtype, evaluate, to_channels_last, train_trial

from conftest import tiny_trial_config


def _first(model: nn.Module, kind: type) -> nn.Module:
    return next(m for m in model.modules() if isinstance(m, kind))


def _record(module: nn.Module, seen: list) -> None:
    module.register_forward_hook(lambda m, inp, out: seen.append((inp[0], out)))


def test_amp_settings_map_to_dtypes():
    assert amp_dtype(None) is None and amp_dtype(False) is None
    assert amp_dtype(True, "cuda") is torch.bfloat16 and amp_dtype("bf16", "cuda:1") is torch.bfloat16
    # true is a no-op on CPU (bf16 emulation is ~20x slower there); "bf16" forces it on any device
    assert amp_dtype(True, "cpu") is None and amp_dtype("bf16", "cpu") is torch.bfloat16
    with pytest.raises(SpecError, match="train.amp.*bf16"):
        amp_dtype("fp16")
    with pytest.raises(SpecError, match="train.amp"):
        amp_dtype("int8")


def test_amp_runs_forward_in_bf16_and_keeps_fp32_parameters_and_losses():
    trial = Trial(tiny_trial_config("ew", amp="bf16"))
    seen: list = []
    _record(_first(trial.model, nn.Conv2d), seen)
    _record(_first(trial.model.decoders["left"], nn.Linear), seen)
    losses_seen = []
    original = trial.step.backward
    trial.step.backward = lambda losses, rng: (losses_seen.append(losses), original(losses, rng))[1]
    out = trial.train_epoch()
    assert seen and all(o.dtype == torch.bfloat16 for _, o in seen)  # conv and linear ran in bf16
    assert all(ls.dtype == torch.float32 for ls in losses_seen)  # the weighting sees float32 losses
    assert all(p.dtype == torch.float32 for p in trial.model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in trial.model.parameters())
    assert all(torch.isfinite(torch.tensor(v)) for k, v in out.items() if k.startswith("train/"))


@pytest.mark.parametrize("amp", [False, True])
def test_fp32_forward_without_amp_and_with_amp_true_on_cpu(amp):
    trial = Trial(tiny_trial_config("ew", amp=amp))
    assert trial.device.type == "cpu" and trial.amp is None
    seen: list = []
    _record(_first(trial.model, nn.Conv2d), seen)
    trial.train_epoch()
    assert seen and all(o.dtype == torch.float32 for _, o in seen)


def test_amp_evaluation_is_bf16_and_close_to_fp32():
    trial = Trial(tiny_trial_config("ew", amp="bf16"))
    trial.train_epoch()
    seen: list = []
    _record(_first(trial.model, nn.Conv2d), seen)
    bf16 = evaluate(trial.problem, trial.model, trial.data, "val", 256, trial.device, amp=torch.bfloat16)
    assert seen and all(o.dtype == torch.bfloat16 for _, o in seen)
    fp32 = evaluate(trial.problem, trial.model, trial.data, "val", 256, trial.device)
    assert seen[-1][1].dtype == torch.float32
    assert set(bf16) == set(fp32)
    for k in fp32:  # bf16 keeps ~3 significant digits: losses agree to 2%, accuracies to a few samples
        tol = 0.02 * abs(fp32[k]) if k.endswith("/loss") else 0.05
        assert abs(bf16[k] - fp32[k]) <= tol, (k, bf16[k], fp32[k])


@pytest.mark.parametrize("method", ["mgda", "mgda_ub", "famo"])
def test_amp_with_gradient_and_post_step_methods(method):
    m = train_trial(tiny_trial_config(method, amp="bf16", channels_last=True))
    assert all(torch.isfinite(torch.tensor(v)) for k, v in m.items() if k.startswith(("train/", "val/")))


def test_channels_last_weights_and_inputs(monkeypatch):
    import study.training as training

    trial = Trial(tiny_trial_config("ew", channels_last=True))
    convs = [m for m in trial.model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not convs[1].weight.is_contiguous()  # 8 input channels: really NHWC, not a one-channel corner case
    converted: list = []
    monkeypatch.setattr(training, "to_channels_last", lambda b: (converted.append(b.shape), to_channels_last(b))[1])
    seen: list = []
    _record(convs[1], seen)
    trial.train_epoch()
    assert len(converted) == 4 and all(len(s) == 4 for s in converted)  # every batch (256 / 64), the images
    assert seen and all(i.is_contiguous(memory_format=torch.channels_last) and not i.is_contiguous() for i, _ in seen)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)  # kept by the optimizer


def test_channels_last_trains_like_the_default_layout():
    a = train_trial(tiny_trial_config("ew", seed=3))
    b = train_trial(tiny_trial_config("ew", seed=3, channels_last=True))
    for k in ("train/left/loss", "train/right/loss", "val/left/loss"):
        assert b[k] == pytest.approx(a[k], rel=2e-3)  # same math, convolution sums in another order


def test_to_channels_last_touches_only_4d_float_tensors():
    x = torch.rand(2, 3, 4, 5)
    labels = torch.zeros(2, 4, 5, dtype=torch.int64)
    batch = {"a": x, "b": [torch.rand(3, 4), labels], "c": torch.zeros(2, 3, 4, 5, dtype=torch.int64)}
    out = to_channels_last(batch)
    assert out["a"].is_contiguous(memory_format=torch.channels_last) and torch.equal(out["a"], x)
    assert out["b"][0].is_contiguous() and out["b"][1] is labels
    assert out["c"] is batch["c"]
