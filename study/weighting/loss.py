"""Loss weightings: EW, RLW, UW (more in sibling modules)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from study.registry import instantiate
from study.weighting import WEIGHTINGS
from study.weighting.base import LossWeighting, as_weights
from study.weighting.distributions import DISTRIBUTIONS


@WEIGHTINGS.register("ew")
class EW(LossWeighting):
    """Equal weighting: ``L = sum_i L_i`` (every weight 1, as in LibMTL and the RLW paper)."""

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        return torch.ones_like(losses)


@WEIGHTINGS.register("rlw")
class RLW(LossWeighting):
    """Random loss weighting (Lin et al., TMLR 2022, Eq. 3): ``L = sum_i w_i L_i``, ``w ~ p(w)`` each step.

    ``distribution`` names a registered distribution (default ``normal``: softmax of N(0, 1) draws);
    the remaining parameters are that distribution's (e.g. ``alpha`` for ``dirichlet``). Weights lie on
    the simplex, so their mean over draws is ``1/T`` for the symmetric distributions.
    """

    def __init__(self, num_tasks: int, distribution: str = "normal", **params):
        super().__init__(num_tasks)
        cls = DISTRIBUTIONS.get(distribution, "distribution")
        self.distribution = instantiate(cls, params, None, num_tasks)

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        return as_weights(self.distribution.sample(rng), losses)


@WEIGHTINGS.register("uw")
class UW(LossWeighting):
    """Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018, Eq. 7 as implemented in LibMTL):
    ``L = sum_i L_i / (2 exp(s_i)) + s_i / 2`` with learnable log-variances ``s_i`` (init ``init_log_var``).
    """

    def __init__(self, num_tasks: int, init_log_var: float = -0.5):
        super().__init__(num_tasks)
        if isinstance(init_log_var, bool) or not isinstance(init_log_var, (int, float)):
            raise ValueError(f"init_log_var must be a number, got {init_log_var!r}")
        self.log_var = nn.Parameter(torch.full((num_tasks,), float(init_log_var)))

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        return 0.5 * torch.exp(-self.log_var.to(losses.dtype))

    def regularizer(self) -> Tensor:
        return 0.5 * self.log_var.sum()
