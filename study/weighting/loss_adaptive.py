"""Adaptive loss weightings with their own update rules: GradNorm, FAMO, STCH."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from study.weighting import WEIGHTINGS
from study.weighting.base import LossWeighting, check_int, check_number


@WEIGHTINGS.register("gradnorm")
class GradNorm(LossWeighting):
    """GradNorm (Chen et al., ICML 2018, Eq. 1-2 and Alg. 1).

    Learnable weights ``w_i`` (init 1) scale the losses; they are trained only by
    ``L_grad = sum_i |w_i ||grad_W L_i|| - mean_j(w_j ||grad_W L_j||) * r_i^alpha|`` with ``W`` the last
    shared weight matrix, ``r_i = L~_i / mean_j L~_j``, ``L~_i = L_i(t) / L_i(0)`` (``L_i(0)``: the first
    step's losses), the target treated as a constant; after each update they are renormalised to sum to
    ``T`` (done before each use). Default ``alpha = 1.5``. The trainer computes the T gradient norms at
    ``W`` (short backwards) and optimises ``w`` with the model's optimizer. It is a complete method and
    cannot be combined with a gradient aggregator.
    """

    needs_gradients = True
    combinable = False

    def __init__(self, num_tasks: int, alpha: float = 1.5):
        super().__init__(num_tasks)
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.w = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.zeros(num_tasks))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        self._reg: Tensor | float = 0.0
        self._started: bool | None = None  # host mirror of the buffer: no device sync per step

    def forward(self, losses: Tensor, rng: np.random.Generator, grads: Tensor | None = None) -> Tensor:
        if grads is None:
            raise ValueError("gradnorm needs the per-task gradient norms at the last shared layer (grads=)")
        with torch.no_grad():
            self.w.mul_(self.num_tasks / self.w.sum())
            if self._started is None:
                self._started = bool(self.started)
            if not self._started:
                self.initial_losses.copy_(losses.detach())
                self.started.fill_(True)
                self._started = True
        w = self.w.to(losses.dtype)
        gw = w * grads.detach()
        ratio = losses.detach() / self.initial_losses.to(losses.dtype)
        r = ratio / ratio.mean()
        target = (gw.mean() * r ** self.alpha).detach()
        self._reg = (gw - target).abs().sum()
        return w.detach()

    def regularizer(self) -> Tensor | float:
        return self._reg

    def load_extra_state_dict(self, state: dict) -> None:
        self._started = None  # re-read the restored buffer


class _Adam:
    """Adam (Kingma & Ba) with L2 weight decay on one small tensor, as ``torch.optim.Adam`` computes it;
    its moments live in the owning module's buffers so they are checkpointed."""

    @staticmethod
    def step(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, t: Tensor, lr: float, weight_decay: float,
             betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        t.add_(1)
        step = float(t)
        g = grad + weight_decay * param if weight_decay else grad
        m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
        v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
        bc1 = 1 - betas[0] ** step
        bc2 = 1 - betas[1] ** step
        denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)
        param.addcdiv_(m, denom, value=-lr / bc1)


@WEIGHTINGS.register("famo")
class FAMO(LossWeighting):
    """Fast adaptive multitask optimization (Liu et al., NeurIPS 2023, Alg. 1).

    Logits ``xi`` (init 0), ``z = softmax(xi)``; the step minimises ``sum_i z_i log(L_i - L_i^* + eps)``,
    i.e. loss weights ``w_i = z_i / (c (L_i - L_i^*))`` with ``c = sum_j z_j / (L_j - L_j^*)`` (detached).
    After the optimizer step the losses of the same batch are recomputed and ``xi`` takes an Adam step
    (lr ``w_lr``, weight decay ``gamma``) along ``J_softmax^T delta``, ``delta_i = log L_i(t) - log L_i(t+1)``.
    Defaults ``w_lr = 0.025``, ``gamma = 0.001`` (official code), ``L^* = 0``.
    """

    needs_post_step_losses = True

    def __init__(self, num_tasks: int, w_lr: float = 0.025, gamma: float = 0.001, eps: float = 1e-8):
        super().__init__(num_tasks)
        self.w_lr = check_number("w_lr", w_lr, low=0.0, low_open=True)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.eps = check_number("eps", eps, low=0.0)
        for name in ("xi", "m", "v"):
            self.register_buffer(name, torch.zeros(num_tasks))
        self.register_buffer("t", torch.zeros(()))
        self._prev: Tensor | None = None

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        z = torch.softmax(self.xi, 0).to(losses.dtype)
        D = losses.detach() + self.eps
        c = (z / D).sum()
        self._prev = losses.detach()
        return z / (c * D)

    def after_step(self, new_losses: Tensor) -> None:
        if self._prev is None:
            return
        delta = torch.log(self._prev + self.eps) - torch.log(new_losses.detach() + self.eps)
        z = torch.softmax(self.xi, 0)
        delta = delta.to(z.dtype)
        grad = z * (delta - (z * delta).sum())  # J_softmax^T delta
        _Adam.step(self.xi, grad, self.m, self.v, self.t, self.w_lr, self.gamma)
        self._prev = None


@WEIGHTINGS.register("stch")
class STCH(LossWeighting):
    """Smooth Tchebycheff scalarisation (Lin et al., ICML 2024, Eq. 9, MTL setting of the official code).

    For the first ``warmup_epoch`` + 1 epochs the objective is ``sum_i log L_i`` (weights ``1/L_i``); the
    mean training losses of epoch ``warmup_epoch`` (0-based) become the nadir ``z``; afterwards the
    objective is ``T mu log sum_i exp(log(L_i / z_i) / mu)``, whose gradient weights are
    ``w_i = T softmax(log(L/z)/mu)_i / L_i`` (detached). Defaults ``mu = 1``, ``warmup_epoch = 4``.
    """

    def __init__(self, num_tasks: int, mu: float = 1.0, warmup_epoch: int = 4):
        super().__init__(num_tasks)
        self.mu = check_number("mu", mu, low=0.0, low_open=True)
        self.warmup_epoch = check_int("warmup_epoch", warmup_epoch, low=0)
        self.nadir: list[float] | None = None
        self._nadir_t: Tensor | None = None

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        L = losses.detach()
        if self.nadir is None:
            return 1.0 / (L + 1e-20)
        if self._nadir_t is None or self._nadir_t.device != L.device:
            self._nadir_t = torch.tensor(self.nadir, dtype=L.dtype, device=L.device)
        u = torch.log(L / self._nadir_t + 1e-20)
        s = torch.softmax(u / self.mu, 0)
        return self.num_tasks * s / (L + 1e-20 * self._nadir_t)

    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        if self.nadir is None and epoch - 1 >= self.warmup_epoch:
            self.nadir = [float(x) for x in mean_losses.detach().cpu()]
            self._nadir_t = None

    def extra_state_dict(self) -> dict:
        return {"nadir": self.nadir}

    def load_extra_state_dict(self, state: dict) -> None:
        self.nadir = state.get("nadir")
        self._nadir_t = None
