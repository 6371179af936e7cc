"""Interfaces of weighting methods.

Two kinds, each testable without a model:

* :class:`LossWeighting` maps the loss vector ``(T,)`` (and its own state) to weights ``(T,)``;
  the trainer minimises ``sum_i w_i L_i + regularizer()`` with one backward pass.
* :class:`GradAggregator` maps per-task gradients ``G`` (``T x d``) to one update direction ``(d,)``;
  the trainer owns autograd (it computes ``G`` at the shared parameters or at the shared representation)
  and writes the direction back into ``.grad``.

A method in a study is a loss weighting, an aggregator, or both (e.g. RLW + CAGrad: random loss weights
scale the task losses, then the aggregator combines the scaled task gradients).

Randomness: methods that sample draw from the ``numpy.random.Generator`` the trainer passes in,
seeded from the trial's seed, so a trial is reproducible; results are moved to the loss device.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn


class LossWeighting(nn.Module):
    """Base class: ``forward(losses, rng) -> weights``.

    Subclasses set ``name`` through the registry and document the paper and equation they implement.
    Learnable weightings (UW) hold ``nn.Parameter``s; the trainer adds them to the optimizer.
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "loss"
    #: set when the method needs the per-task gradients (GradNorm): the trainer then calls
    #: ``forward(losses, rng, grads=...)`` with the gradient norms of each task at the last shared layer
    needs_gradients: ClassVar[bool] = False

    def __init__(self, num_tasks: int):
        super().__init__()
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
        self.num_tasks = num_tasks

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def regularizer(self) -> Tensor | float:
        """Extra term added to the objective (e.g. UW's log-variance penalty)."""
        return 0.0

    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        """Called with the epoch's mean training loss per task (DWA uses it)."""

    def extra_state_dict(self) -> dict:
        """Non-parameter state to checkpoint (loss histories...)."""
        return {}

    def load_extra_state_dict(self, state: dict) -> None:
        pass


class GradAggregator(nn.Module):
    """Base class: ``forward(G, rng) -> direction`` with ``G`` of shape ``(T, d)``."""

    name: ClassVar[str]
    kind: ClassVar[str] = "gradient"
    #: "parameters" (shared-parameter Jacobian) or "representation" (gradients at the shared features)
    level: str = "parameters"

    def __init__(self, num_tasks: int):
        super().__init__()
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
        self.num_tasks = num_tasks

    def forward(self, grads: Tensor, rng: np.random.Generator) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def as_weights(sample: np.ndarray, like: Tensor) -> Tensor:
    """A numpy weight vector as a tensor on the loss device and dtype."""
    return torch.as_tensor(sample, dtype=like.dtype).to(like.device, non_blocking=True)
