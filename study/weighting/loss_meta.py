"""Bilevel loss weighting: MOML."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from study.weighting import WEIGHTINGS
from study.weighting._solvers import min_norm_weights
from study.weighting.base import LossWeighting, NonFiniteError, check_number
from study.weighting.loss_adaptive import _Adam


@WEIGHTINGS.register("moml")
class MOML(LossWeighting):
    """Multi-objective meta learning (Ye et al., NeurIPS 2021, Sec. 4, Eq. 4-6; MTL code of the paper).

    Loss weights ``w = softmax(phi)`` (uniform at start) are the upper-level variables. Each step:

    1. virtual lower-level step on the training batch, ``theta' = theta - inner_lr grad_theta sum_i w_i L_i``
       (kept differentiable in ``phi``);
    2. validation losses ``L_i^val(theta')`` on a validation batch;
    3. the upper level is multi-objective: the hypergradients ``grad_phi L_i^val`` are l2-normalised and
       combined by MGDA's min-norm weights ``s`` (``mgda: false`` uses ``s = 1``), and ``phi`` takes an Adam
       step (lr ``lr``) on ``sum_i s_i L_i^val``;
    4. the model is updated on ``sum_i w_i L_i`` with the new weights (same training batch; the paper's
       code draws a fresh one).

    Defaults follow the official code: ``inner_lr = 1e-4`` (the model's lr there), ``lr = 1e-3``,
    ``mgda = true``. Costs one second-order backward and one extra forward per step. Needs a validation
    split; cannot be combined with a gradient aggregator.
    """

    needs_validation = True
    combinable = False

    def __init__(self, num_tasks: int, inner_lr: float = 1e-4, lr: float = 1e-3, mgda: bool = True):
        super().__init__(num_tasks)
        self.inner_lr = check_number("inner_lr", inner_lr, low=0.0, low_open=True)
        self.lr = check_number("lr", lr, low=0.0, low_open=True)
        if not isinstance(mgda, bool):
            raise ValueError(f"mgda must be true or false, got {mgda!r}")
        self.mgda = mgda
        self.register_buffer("phi", torch.full((num_tasks,), 1.0 / num_tasks))
        for name in ("m", "v"):
            self.register_buffer(name, torch.zeros(num_tasks))
        self.register_buffer("t", torch.zeros(()))

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        return torch.softmax(self.phi, 0).to(losses.dtype)

    def meta_step(self, engine, losses: Tensor, rng: np.random.Generator) -> Tensor:
        model, problem = engine.model, engine._problem
        phi = self.phi.detach().clone().requires_grad_()
        w = torch.softmax(phi, 0).to(losses.dtype)
        names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
        grads = torch.autograd.grad((w * losses).sum(), params, create_graph=True, retain_graph=True,
                                    allow_unused=True)
        fast = {n: (p if g is None else p - self.inner_lr * g) for n, p, g in zip(names, params, grads)}
        buffers = {n: b.clone() for n, b in model.named_buffers()}  # BN statistics of the model stay put
        x_val, y_val = engine.next_validation_batch()
        outs = functional_call(model, {**fast, **buffers}, (x_val,))
        val_losses = engine.task_losses(problem, outs, y_val)
        T = self.num_tasks
        if self.mgda and T > 1:
            J = torch.stack([torch.autograd.grad(val_losses[i], phi, retain_graph=True)[0] for i in range(T)])
            J = J.detach().to("cpu", torch.float64).numpy()
            if not np.isfinite(J).all():
                raise NonFiniteError("gradient", self.name)
            norms = np.linalg.norm(J, axis=1)
            Jn = J / np.where(norms > 0, norms, 1.0)[:, None]
            s, _ = min_norm_weights(Jn @ Jn.T)
            s = torch.as_tensor(s, dtype=val_losses.dtype, device=val_losses.device)
        else:
            s = torch.ones_like(val_losses)
        (hyper,) = torch.autograd.grad((s * val_losses).sum(), phi)
        with torch.no_grad():
            _Adam.step(self.phi, hyper.to(self.phi.dtype), self.m, self.v, self.t, self.lr, 0.0)
        del grads, fast, outs
        return torch.softmax(self.phi, 0).to(losses.dtype).detach()
