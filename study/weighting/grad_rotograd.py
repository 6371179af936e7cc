"""RotoGrad: learned per-task rotations of the shared representation plus gradient-magnitude scaling."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from study.weighting import AGGREGATORS
from study.weighting.base import GradAggregator, check_int


@AGGREGATORS.register("rotograd")
class RotoGrad(GradAggregator):
    """RotoGrad (Javaloy & Valera, ICLR 2022, Sec. 4, Eq. 6-9; the authors' ``RotoGrad`` module).

    Each task ``k`` sees the shared features through its own rotation, ``r_k = R_k z`` with
    ``R_k = exp(A_k - A_k^T)`` orthogonal (``A_k = 0`` at start: plain HPS). At the representation:

    * magnitude: with ``g_k = grad_z L_k`` (``= R_k^T grad_{r_k} L_k``), convergence ratios
      ``c_k = ||g_k|| / ||g_k^0||`` (``g_k^0``: the norms at the first step, captured again after
      ``burn_in`` steps), ``alpha_k = c_k / sum_j c_j`` and ``C = sum_k alpha_k ||g_k||``, the encoder gets
      ``d = sum_k C g_k / ||g_k||``;
    * direction: the rotations are trained to align each task's gradient with the average,
      ``L_rot = - sum_k mean_b cos(R_k^T grad_{r_k} L_{k,b}, v_b)``, ``v = 1/K sum_k g_k`` held constant;
      ``A_k`` take their gradients from ``L_rot`` only, through the trial's optimizer.

    Needs a representation of shape ``(B, D)`` or ``(B, D, ...)`` (rotating dimension 1); ``latent_size``
    is read from the first layer of a task head when not given. Representation level only.
    """

    levels = ("representation",)

    def __init__(self, num_tasks: int, latent_size: int | None = None, burn_in: int = 20,
                 level: str | None = None):
        super().__init__(num_tasks, level)
        self.burn_in = check_int("burn_in", burn_in, low=0)
        self.latent_size = None if latent_size is None else check_int("latent_size", latent_size, low=1)
        self.A = nn.ParameterList()
        if self.latent_size is not None:
            self._build(self.latent_size)
        self.register_buffer("initial_norms", torch.zeros(num_tasks))
        self._step = 0
        self._R: list[Tensor] | None = None

    def _build(self, D: int) -> None:
        self.latent_size = D
        self.A = nn.ParameterList([nn.Parameter(torch.zeros(D, D)) for _ in range(self.num_tasks)])

    def bind_model(self, model: nn.Module) -> None:
        """Infer ``latent_size`` from the task heads (called by the trainer before the optimizer exists)."""
        if self.latent_size is not None:
            return
        decoders = getattr(model, "decoders", None)
        if decoders is None:
            raise ValueError("rotograd needs an architecture with task heads (decoders); set latent_size")
        first = next(iter(decoders.values()))
        weight = next((p for p in first.parameters() if p.dim() >= 2), None)
        if weight is None:
            raise ValueError("rotograd cannot read the latent size from the task heads; set latent_size")
        self._build(int(weight.shape[1]))

    def rotations(self) -> list[Tensor]:
        return [torch.linalg.matrix_exp(a - a.T) for a in self.A]

    @staticmethod
    def _rotate(R: Tensor, z: Tensor) -> Tensor:
        return torch.einsum("ij,bj...->bi...", R.to(z.dtype), z)

    def task_inputs(self, rep: Tensor) -> list[Tensor]:
        """What each task head sees: ``R_k z``."""
        self._R = self.rotations()
        return [self._rotate(R, rep) for R in self._R]

    def forward(self, grads, rng, *, losses=None, rep=None):
        grads = self._check_shape(grads)
        K = grads.shape[0]
        norms = grads.norm(dim=1).clamp_min(1e-15)
        if self._step == 0 or self._step == self.burn_in:
            self.initial_norms.copy_(norms.detach())
        self._step += 1
        conv = norms / self.initial_norms.to(norms.dtype).clamp_min(1e-15)
        alpha = conv / conv.sum().clamp_min(1e-15)
        C = (alpha * norms).sum()
        direction = (C / norms) @ grads
        if rep is not None and len(self.A) and torch.is_grad_enabled():
            B = rep.shape[0]
            g = grads.detach().view(K, B, self.latent_size, -1)  # gradients at z, per sample
            v = g.mean(0)
            # the rotations built for this step's forward (their exp graph is still alive: the task
            # backwards only went to z and the heads); recomputing them would double the cost
            R = getattr(self, "_R", None) or self.rotations()
            self._R = None
            loss = 0.0
            for k in range(K):
                g_rot = torch.einsum("ij,bj...->bi...", R[k].detach().to(g.dtype), g[k])  # grad at r_k
                back = torch.einsum("ji,bj...->bi...", R[k].to(g.dtype), g_rot)  # R_k^T grad_{r_k}
                loss = loss - F.cosine_similarity(back.reshape(B, -1), v.reshape(B, -1), dim=1).mean()
            grads_A = torch.autograd.grad(loss, list(self.A))
            for a, ga in zip(self.A, grads_A):
                a.grad = ga if a.grad is None else a.grad + ga
        return direction

    def extra_state_dict(self) -> dict:
        return {"step": self._step}

    def load_extra_state_dict(self, state: dict) -> None:
        self._step = int(state.get("step", 0))
