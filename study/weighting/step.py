"""The trainer's side of a method: compute task losses, run the backward passes the method needs.

* Loss weighting only (EW, RLW, UW, ...): one backward pass of ``sum_i w_i L_i + reg``.
* Gradient aggregator: the per-task gradients ``G`` (T x d) of the shared parameters (``level:
  parameters``) or of the shared representation (``level: representation``), aggregated into one direction
  written back into ``.grad``; task-specific parameters get their own (weighted) task gradients.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from study.errors import SpecError
from study.weighting.base import GradAggregator, LossWeighting


class MethodStep(nn.Module):
    def __init__(self, model: nn.Module, weighting: LossWeighting | None, aggregator: GradAggregator | None):
        super().__init__()
        self.model_ref = [model]  # not a submodule: the model is checkpointed on its own
        self.weighting = weighting
        self.aggregator = aggregator
        self.last_weights: Tensor | None = None
        if aggregator is not None and aggregator.level == "representation" and not getattr(
            model, "has_shared_representation", False
        ):
            raise SpecError("method", f"{aggregator.name} works on the shared representation, which "
                                      f"{type(model).__name__} does not have; use level: parameters")
        self._shared: list[nn.Parameter] | None = None
        self._buffer: Tensor | None = None

    @property
    def model(self) -> nn.Module:
        return self.model_ref[0]

    def losses(self, problem, inputs: Any, targets: dict[str, Tensor]) -> Tensor:
        if self.aggregator is not None and self.aggregator.level == "representation":
            rep = self.model.encode(inputs)
            self._rep = rep
            rep_d = {t: r.detach().requires_grad_() for t, r in rep.items()} if isinstance(rep, dict) \
                else rep.detach().requires_grad_()
            self._rep_d = rep_d
            outs = self.model.decode(rep_d)
        else:
            outs = self.model(inputs)
        return torch.stack([problem.loss(t, outs[t], targets[t]) for t in problem.tasks])

    def backward(self, losses: Tensor, rng: np.random.Generator) -> None:
        if self.weighting is not None:
            w = self.weighting(losses, rng)
        else:
            w = torch.ones_like(losses)
        self.last_weights = w.detach()
        if self.aggregator is None:
            total = (w * losses).sum() + self.weighting.regularizer()
            total.backward()
            return
        reg = self.weighting.regularizer() if self.weighting is not None else 0.0
        weighted = w * losses
        if isinstance(reg, Tensor) and reg.requires_grad:
            reg.backward(retain_graph=True)
        if self.aggregator.level == "representation":
            self._backward_representation(weighted, rng)
        else:
            self._backward_parameters(weighted, rng)

    # -- gradient methods ---------------------------------------------------------------------
    def _shared_params(self) -> list[nn.Parameter]:
        if self._shared is None:
            self._shared = [p for p in self.model.shared_parameters() if p.requires_grad]
        return self._shared

    def _backward_parameters(self, weighted: Tensor, rng: np.random.Generator) -> None:
        shared = self._shared_params()
        T = weighted.shape[0]
        d = sum(p.numel() for p in shared)
        if self._buffer is None or self._buffer.shape != (T, d) or self._buffer.device != weighted.device:
            self._buffer = torch.empty(T, d, device=weighted.device, dtype=weighted.dtype)
        G = self._buffer
        # Task-specific parameters: their gradient is that of the sum (each head sees only its loss).
        weighted.sum().backward(retain_graph=True, inputs=[p for p in self.model.parameters()
                                                           if p.requires_grad and not _in(p, shared)] or None)
        for i in range(T):
            grads = torch.autograd.grad(weighted[i], shared, retain_graph=i < T - 1, allow_unused=True)
            offset = 0
            for p, g in zip(shared, grads):
                n = p.numel()
                if g is None:
                    G[i, offset:offset + n].zero_()
                else:
                    G[i, offset:offset + n].copy_(g.reshape(-1))
                offset += n
        direction = self.aggregator(G, rng)
        offset = 0
        for p in shared:
            n = p.numel()
            g = direction[offset:offset + n].view_as(p)
            p.grad = g.clone() if p.grad is None else p.grad.add_(g)
            offset += n

    def _backward_representation(self, weighted: Tensor, rng: np.random.Generator) -> None:
        rep, rep_d = self._rep, self._rep_d
        # Heads: their own gradients, from one backward of the sum.
        if isinstance(rep_d, dict):
            raise SpecError("method", "representation-level gradient methods need a single-input problem")
        T = weighted.shape[0]
        grads = [torch.autograd.grad(weighted[i], rep_d, retain_graph=True)[0] for i in range(T)]
        weighted.sum().backward(inputs=[p for ps in self.model.task_parameters().values() for p in ps])
        G = torch.stack([g.reshape(-1) for g in grads])
        direction = self.aggregator(G, rng).view_as(rep)
        rep.backward(direction)

    # -- hooks --------------------------------------------------------------------------------
    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        if self.weighting is not None:
            self.weighting.on_epoch_end(epoch, mean_losses)

    def extra_state_dict(self) -> dict:
        out = {}
        for part in ("weighting", "aggregator"):
            mod = getattr(self, part)
            if mod is not None and hasattr(mod, "extra_state_dict"):
                out[part] = mod.extra_state_dict()
        return out

    def load_extra_state_dict(self, state: dict) -> None:
        for part, s in state.items():
            mod = getattr(self, part, None)
            if mod is not None and hasattr(mod, "load_extra_state_dict"):
                mod.load_extra_state_dict(s)


def _in(p: nn.Parameter, params: list[nn.Parameter]) -> bool:
    return any(p is q for q in params)
