"""One trial: a plain function of a config dict that trains, evaluates every epoch and reports.

``train_trial(config, reporter)`` runs with or without Ray. The Ray Tune trainable in
:mod:`study.driver` is a thin wrapper that turns ``reporter`` into ``tune.report`` with a checkpoint
and restores from ``tune.get_checkpoint()``.

Config (canonical, as produced by :mod:`study.spec`)::

    problem: str, problem_params: dict
    architecture: str, architecture_params: dict
    method: {label, weighting: {name, ...} | None, aggregator: {name, ...} | None}
    seed: int
    train: {optimizer, lr, weight_decay, batch_size, epochs, scheduler, device, nan_check_every,
            grad_clip, eval_batch_size, amp, channels_last}

Each epoch the reporter gets ``metrics`` (flat ``split/task/metric`` keys plus ``epoch``,
``val_score``, timings) and ``state`` (everything needed to resume bit-for-bit on CPU).

Speed options (off by default: the paper's setting is fp32 in the default memory layout):

* ``amp: true`` runs the model's forward pass and the task losses under ``torch.autocast`` with
  bfloat16 on CUDA, and is a no-op on CPU: on CPUs without bf16 units (the 2-core AMD EPYC this was
  measured on) bf16 autocast made a ResNet-18 training step ~20x slower, so a GPU spec run on a CPU
  machine stays in float32. ``amp: "bf16"`` asks for bf16 autocast on any device (CPU included: how the
  tests exercise this code path). Backward passes, the weighting and aggregation math, the optimizer and
  the parameters stay in float32; the loss vector is float32. Evaluation runs under the same autocast, its
  outputs cast to float32 before losses and metrics. ``"fp16"`` is refused: it needs loss scaling, which
  would change what loss- and gradient-based weightings see.
* ``channels_last: true`` stores the model's 4-D weights and every 4-D input batch in
  ``torch.channels_last`` (NHWC), the layout cuDNN's tensor-core convolutions prefer.

Data: with :mod:`study.datacache` configured (the Ray trainable does it), trials in one process reuse the
loaded data set, and in-memory data sets are shared by all trial processes on a node.

Non-finite policy (the same for every method): the per-task losses are checked every
``nan_check_every`` steps and at the end of each epoch (one device sync each); a non-finite loss raises
:class:`~study.errors.DivergedError`, which ends the trial with status ``diverged`` and the epoch recorded.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from study import datacache
from study.architectures import build_model
from study.errors import DivergedError, SpecError
from study.problems import PROBLEMS
from study.registry import instantiate
from study.weighting.base import NonFiniteError
from study.weighting.method import build_method
from study.weighting.step import MethodStep, validation_batches

Reporter = Callable[[dict[str, Any], dict[str, Any]], None]

TRAIN_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "batch_size": 64,
    "epochs": 5,
    "scheduler": None,       # None or {name: step, step_size: 100, gamma: 0.5}
    "device": "auto",        # auto -> cuda if available else cpu
    "nan_check_every": 50,
    "grad_clip": None,       # max gradient norm, or None
    "amp": False,            # true: bf16 autocast of forward + losses on CUDA; "bf16": on any device
    "channels_last": False,  # NHWC weights and 4-D inputs
}


def amp_dtype(value: Any, device: torch.device | str = "cuda") -> torch.dtype | None:
    """The autocast dtype of a ``train.amp`` setting on ``device`` (None: full precision)."""
    if value in (None, False):
        return None
    if value is True:
        return torch.bfloat16 if torch.device(device).type == "cuda" else None
    if value == "bf16":
        return torch.bfloat16
    if value == "fp16":
        raise SpecError("train.amp", "fp16 autocast needs loss scaling, which would change the losses and "
                                     "gradients that weighting methods see; use amp: bf16")
    raise SpecError("train.amp", f"expected true, false or bf16, got {value!r}")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``device`` with ``dtype``, or a no-op context when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def to_channels_last(batch: Any) -> Any:
    """Every 4-D floating tensor in ``batch`` (inputs only: targets keep their layout) as NHWC."""
    if isinstance(batch, Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: to_channels_last(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_channels_last(v) for v in batch)
    return batch


def _float_outputs(out: Any) -> Any:
    if isinstance(out, Tensor):
        return out.float() if out.is_floating_point() and out.dtype != torch.float32 else out
    if isinstance(out, dict):
        return {k: _float_outputs(v) for k, v in out.items()}
    return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=1e-8)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)
    raise SpecError("train.optimizer", f"unknown optimizer {name!r}; valid: adam, adamw, sgd")


def make_scheduler(spec: dict | None, optimizer: torch.optim.Optimizer):
    if not spec:
        return None
    spec = dict(spec)
    name = str(spec.pop("name", "step")).lower()
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(spec.get("step_size", 100)),
                                               gamma=float(spec.get("gamma", 0.5)))
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(spec.get("t_max", 100)))
    raise SpecError("train.scheduler.name", f"unknown scheduler {name!r}; valid: step, cosine")


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def train_batches(problem, data: Any, batch_size: int, generator: torch.Generator) -> Iterator:
    """Yield ``(inputs, targets)``; multi-input: ``({task: x}, {task: y})``.

    Multi-input epochs last as long as the longest task's loader; shorter ones restart (as in LibMTL).
    """
    if not problem.multi_input:
        yield from problem.batches(data["train"], batch_size, shuffle=True, generator=generator)
        return
    tasks = problem.tasks
    lengths = {t: -(-len(data["train"][t]) // batch_size) for t in tasks}
    iters = {t: iter(problem.batches(data["train"][t], batch_size, shuffle=True, generator=generator)) for t in tasks}
    for _ in range(max(lengths.values())):
        xs, ys = {}, {}
        for t in tasks:
            try:
                x, y = next(iters[t])
            except StopIteration:
                iters[t] = iter(problem.batches(data["train"][t], batch_size, shuffle=True, generator=generator))
                x, y = next(iters[t])
            xs[t], ys[t] = x, (y[t] if isinstance(y, dict) else y)
        yield xs, ys


@torch.inference_mode()
def evaluate(problem, model, data: Any, split: str, batch_size: int, device: torch.device, *,
             amp: torch.dtype | None = None, channels_last: bool = False) -> dict[str, float]:
    """Metrics of every task on a whole split, accumulated over the split (not per-batch averages).

    Runs in inference mode (no autograd graph, no saved activations); ``amp`` is the autocast dtype of
    the forward pass (outputs are cast to float32 before losses and metrics), ``channels_last`` the
    input layout.
    """
    model.eval()
    prep = to_channels_last if channels_last else (lambda b: b)
    meters = {t: problem.new_meter(t) for t in problem.tasks}
    losses = {t: torch.zeros((), device=device, dtype=torch.float64) for t in problem.tasks}
    counts = dict.fromkeys(problem.tasks, 0)
    if problem.multi_input:
        for t in problem.tasks:
            for x, y in problem.batches(data[split][t], batch_size, shuffle=False, generator=None):
                y = y[t] if isinstance(y, dict) else y
                x, y = prep(to_device(x, device)), to_device(y, device)
                with autocast(device, amp):
                    out = model({t: x})[t]
                out = _float_outputs(out)
                meters[t].update(out, y)
                n = _batch_len(y)
                losses[t] += problem.loss(t, out, y).double() * n
                counts[t] += n
    else:
        for x, ys in problem.batches(data[split], batch_size, shuffle=False, generator=None):
            x, ys = prep(to_device(x, device)), to_device(ys, device)
            with autocast(device, amp):
                outs = model(x)
            outs = _float_outputs(outs)
            n = _batch_len(x)
            for t in problem.tasks:
                meters[t].update(outs[t], ys[t])
                losses[t] += problem.loss(t, outs[t], ys[t]).double() * n
                counts[t] += n
    result: dict[str, float] = {}
    for t in problem.tasks:
        for metric, value in meters[t].compute().items():
            result[f"{split}/{t}/{metric}"] = float(value)
        result[f"{split}/{t}/loss"] = float(losses[t]) / max(counts[t], 1)
    return result


def _batch_len(x: Any) -> int:
    if isinstance(x, Tensor):
        return int(x.shape[0])
    if isinstance(x, dict):
        return _batch_len(next(iter(x.values())))
    return len(x)


def val_score(problem, metrics: dict[str, float]) -> float:
    """One scalar for schedulers and searchers: mean over tasks of each task's first metric, signed so
    that higher is better. Model selection in the analysis uses the full metric set."""
    scores = []
    for t, ms in problem.metrics().items():
        m = ms[0]
        v = metrics.get(f"val/{t}/{m.name}")
        if v is not None:
            scores.append(v if m.higher_is_better else -v)
    return float(np.mean(scores)) if scores else float("nan")


class Trial:
    """Everything one trial holds; built from a config, optionally restored from a state dict."""

    def __init__(self, config: dict[str, Any], data: Any = None):
        self.config = config
        train = {**TRAIN_DEFAULTS, **(config.get("train") or {})}
        self.train_cfg = train
        self.seed = int(config["seed"])
        self.device = resolve_device(train["device"])
        self.amp = amp_dtype(train.get("amp"), self.device)
        self.channels_last = bool(train.get("channels_last"))
        torch.manual_seed(self.seed)
        self.problem = instantiate(PROBLEMS.get(config["problem"], "problem"), config.get("problem_params"), "problem_params")
        if data is None:  # through the process / node cache when configured (study.datacache)
            data = datacache.load_data(self.problem, config["problem"], config.get("problem_params"), self.seed)
        self.data = data
        self.model = build_model(self.problem, config.get("architecture", "hps"), config.get("architecture_params"))
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        weighting, aggregator = build_method(config["method"], len(self.problem.tasks))
        self.step = MethodStep(self.model, weighting, aggregator)
        self.step.to(self.device)
        if self.step.needs_validation:  # bilevel methods (MOML) draw a validation batch inside the step
            self.step.set_validation_batches(validation_batches(
                self.problem, self.data, int(train["batch_size"]), self.seed, self.device, to_device))
        params = list(self.model.parameters()) + list(self.step.parameters())
        self.optimizer = make_optimizer(train["optimizer"], params, float(train["lr"]), float(train["weight_decay"]))
        self.scheduler = make_scheduler(train.get("scheduler"), self.optimizer)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.rng = np.random.default_rng(self.seed)
        self.epoch = 0

    # -- checkpointing: plain tensors and builtins only, loadable with torch.load(weights_only=True).
    # The dict references live tensors: serialise it at once (the reporter does), do not keep it.
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "method": self.step.state_dict(),
            "method_extra": self.step.extra_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": copy.deepcopy(self.rng.bit_generator.state),
            "base_lr": float(self.train_cfg["lr"]),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.model.load_state_dict(state["model"])
        self.step.load_state_dict(state["method"])
        self.step.load_extra_state_dict(state.get("method_extra") or {})
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        # A checkpoint restored under a new learning rate (PBT's exploit step) scales the current rates
        # and the lr schedule's base rates, so the schedule goes on from the new lr. (batch_size and
        # grad_clip are read from the config every epoch.)
        base = float(state.get("base_lr", self.train_cfg["lr"]))
        if base > 0 and base != float(self.train_cfg["lr"]):
            ratio = float(self.train_cfg["lr"]) / base
            for group in self.optimizer.param_groups:
                group["lr"] *= ratio
                if "initial_lr" in group:
                    group["initial_lr"] *= ratio
            if self.scheduler:
                self.scheduler.base_lrs = [lr * ratio for lr in self.scheduler.base_lrs]
                self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]  # noqa: SLF001
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]

    def train_epoch(self) -> dict[str, float]:
        problem, model, device = self.problem, self.model, self.device
        model.train()
        # Architectures with epoch-dependent behaviour (LTB's temperature annealing) get the schedule.
        getattr(model, "set_epoch", lambda *_: None)(self.epoch, int(self.train_cfg["epochs"]))
        tasks = problem.tasks
        epoch = self.epoch + 1
        loss_sum = torch.zeros(len(tasks), device=device, dtype=torch.float64)
        steps = 0
        step_times: list[float] = []
        check_every = max(int(self.train_cfg.get("nan_check_every") or 50), 1)
        clip = self.train_cfg.get("grad_clip")
        sync = device.type == "cuda"
        amp, channels_last = self.amp, self.channels_last
        t_epoch = time.perf_counter()
        for inputs, targets in train_batches(problem, self.data, int(self.train_cfg["batch_size"]), self.generator):
            t0 = time.perf_counter()
            inputs, targets = to_device(inputs, device), to_device(targets, device)
            if channels_last:
                inputs = to_channels_last(inputs)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(device, amp):
                losses = self.step.losses(problem, inputs, targets)
            if amp is not None:
                losses = losses.float()
            try:
                self.step.backward(losses, self.rng)
            except NonFiniteError as exc:
                raise DivergedError(exc.what, epoch, steps + 1) from None
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
            self.optimizer.step()
            self.step.after_step()
            loss_sum += losses.detach().double()
            steps += 1
            if steps % check_every == 0 and not bool(torch.isfinite(loss_sum).all()):
                raise DivergedError("loss", epoch, steps)
            if sync:
                torch.cuda.synchronize(device)
            step_times.append(time.perf_counter() - t0)
        if sync:
            torch.cuda.synchronize(device)
        epoch_time = time.perf_counter() - t_epoch
        mean_losses = loss_sum / max(steps, 1)
        if not bool(torch.isfinite(mean_losses).all()):
            raise DivergedError("loss", epoch, steps)
        self.step.on_epoch_end(epoch, mean_losses.float())
        if self.scheduler:
            self.scheduler.step()
        self.epoch = epoch
        out = {f"train/{t}/loss": float(mean_losses[i]) for i, t in enumerate(tasks)}
        out["time_epoch_s"] = epoch_time
        out["time_step_s"] = float(np.median(step_times)) if step_times else 0.0
        return out

    def run_epoch(self) -> dict[str, Any]:
        metrics = self.train_epoch()
        bs = int(self.train_cfg.get("eval_batch_size") or max(int(self.train_cfg["batch_size"]), 256))
        t0 = time.perf_counter()
        for split in ("val", "test"):
            if split in self.data and self.data[split] is not None:
                metrics.update(evaluate(self.problem, self.model, self.data, split, bs, self.device,
                                        amp=self.amp, channels_last=self.channels_last))
        metrics["time_eval_s"] = time.perf_counter() - t0
        metrics["epoch"] = self.epoch
        metrics["val_score"] = val_score(self.problem, metrics)
        return metrics


def train_trial(config: dict[str, Any], reporter: Reporter | None = None, *,
                resume_state: dict[str, Any] | None = None, data: Any = None) -> dict[str, Any]:
    """Train one trial to ``train.epochs``, reporting after every epoch; return the last metrics.

    ``resume_state`` (a :meth:`Trial.state_dict`) continues a trial where it stopped; ``data`` passes
    an already-loaded data set (shared by trials on one node).
    """
    t0 = time.perf_counter()
    trial = Trial(config, data=data)
    if resume_state is not None:
        trial.load_state_dict(resume_state)
    setup = time.perf_counter() - t0
    epochs = int(trial.train_cfg["epochs"])
    last: dict[str, Any] = {}
    while trial.epoch < epochs:
        last = trial.run_epoch()
        last["time_setup_s"] = setup  # building the trial: data, model, method, optimizer, restore
        if reporter is not None:
            reporter(last, trial.state_dict())
    return last
