"""Fault injection for tests: user classes referenced from specs as ``tests.faults:Class``."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from study.weighting.base import LossWeighting


class NaNAfter(LossWeighting):
    """Equal weights for ``steps`` training steps, then NaN: the trial diverges at a known epoch."""

    def __init__(self, num_tasks: int, steps: int = 4):
        super().__init__(num_tasks)
        self.steps = steps
        self.calls = 0

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        self.calls += 1
        w = torch.ones_like(losses)
        return w * float("nan") if self.calls > self.steps else w


class RaiseAt(LossWeighting):
    """Equal weights, then a crash (not a divergence) at step ``step``: an errored trial."""

    def __init__(self, num_tasks: int, step: int = 2):
        super().__init__(num_tasks)
        self.step = step
        self.calls = 0

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        self.calls += 1
        if self.calls >= self.step:
            raise RuntimeError(f"injected failure at step {self.calls}")
        return torch.ones_like(losses)
