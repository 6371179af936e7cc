"""Loss weightings: EW, RLW, UW, GLS, DWA, IMTL-L and STL (adaptive ones in :mod:`loss_adaptive`,
bilevel MOML in :mod:`loss_meta`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from study.registry import instantiate
from study.weighting import WEIGHTINGS
from study.weighting.base import LossWeighting, as_weights, check_number
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
        from study.weighting.distributions import Distribution

        if not (isinstance(cls, type) and issubclass(cls, Distribution)):
            raise ValueError(f"distribution {distribution!r} is not a Distribution subclass")
        self.distribution = instantiate(cls, params, None, num_tasks)

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        return as_weights(self.distribution.sample(rng), losses)

    def extra_state_dict(self) -> dict:
        return {"distribution": self.distribution.state_dict()}

    def load_extra_state_dict(self, state: dict) -> None:
        self.distribution.load_state_dict(state.get("distribution") or {})


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


@WEIGHTINGS.register("gls")
class GLS(LossWeighting):
    """Geometric loss strategy (Chennupati et al., CVPRW 2019, Eq. 2): minimise
    ``(prod_i L_i)^(1/T)``. Its gradient is ``sum_i w_i grad L_i`` with the detached weights
    ``w_i = (prod_j L_j)^(1/T) / (T L_i)``, which is what this class returns (computed in log space)."""

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        l = losses.detach()
        geo = torch.exp(torch.log(l).mean())
        return geo / (self.num_tasks * l)


@WEIGHTINGS.register("dwa")
class DWA(LossWeighting):
    """Dynamic weight average (Liu, Johns & Davison, CVPR 2019, Eq. 7): at epoch ``t``
    ``w_i = T exp(r_i / temp) / sum_j exp(r_j / temp)`` with ``r_i = L_i(t-1) / L_i(t-2)`` the ratio of the
    epoch-mean training losses; weights are 1 for the first two epochs. Default ``temp = 2``."""

    def __init__(self, num_tasks: int, temp: float = 2.0):
        super().__init__(num_tasks)
        self.temp = check_number("temp", temp, low=0.0, low_open=True)
        self.history: list[list[float]] = []
        self._weights: Tensor | None = None

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        if len(self.history) < 2:
            return torch.ones_like(losses)
        if self._weights is None or self._weights.device != losses.device:
            r = torch.tensor(self.history[-1], dtype=torch.float64) / torch.tensor(self.history[-2], dtype=torch.float64)
            w = self.num_tasks * torch.softmax(r / self.temp, dim=0)
            self._weights = w.to(losses.device, losses.dtype)
        return self._weights

    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        self.history.append([float(x) for x in mean_losses.detach().cpu()])
        self.history = self.history[-2:]
        self._weights = None

    def extra_state_dict(self) -> dict:
        return {"history": self.history}

    def load_extra_state_dict(self, state: dict) -> None:
        self.history = [list(map(float, h)) for h in state.get("history", [])]
        self._weights = None


@WEIGHTINGS.register("imtl_l", "imtll")
class IMTLL(LossWeighting):
    """IMTL-L (Liu et al., ICLR 2021, Sec. 3.1, Eq. 5): ``L = sum_i (exp(s_i) L_i - s_i)`` with learnable
    scales ``s_i`` (init 0), trained with the model; the optimum ``exp(s_i) L_i = 1`` equalises the
    scaled losses."""

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks)
        self.s = nn.Parameter(torch.zeros(num_tasks))

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        return torch.exp(self.s.to(losses.dtype))

    def regularizer(self) -> Tensor:
        return -self.s.sum()


@WEIGHTINGS.register("stl")
class STL(LossWeighting):
    """Single-task learning: train the model on one task alone (weight 1 on ``task``, 0 on the others),
    the reference for Delta_m against single-task baselines. ``task`` is a task name or index; run one
    STL trial per task (e.g. ``methods: [{name: stl, task: left}, {name: stl, task: right}]``) and read
    each run's metrics of its own task only. Other heads get no gradient (their losses still appear in the
    trial's rows; the analysis must ignore them). It is a reference, not combinable with an aggregator."""

    combinable = False

    def __init__(self, num_tasks: int, task: str | int = 0):
        super().__init__(num_tasks)
        if isinstance(task, bool) or not isinstance(task, (str, int)):
            raise ValueError(f"task must be a task name or index, got {task!r}")
        if isinstance(task, int) and not 0 <= task < num_tasks:
            raise ValueError(f"task must be in [0, {num_tasks - 1}], got {task!r}")
        self.task = task
        self.index: int | None = task if isinstance(task, int) else None

    def bind_tasks(self, tasks: tuple[str, ...]) -> None:
        """Resolve a task name against the problem's tasks (called by the trainer)."""
        if isinstance(self.task, str):
            if self.task not in tasks:
                raise ValueError(f"task must be one of {', '.join(tasks)}, got {self.task!r}")
            self.index = tasks.index(self.task)

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        if self.index is None:
            raise ValueError(f"stl: task {self.task!r} was not resolved; call bind_tasks(problem.tasks)")
        w = torch.zeros_like(losses)
        w[self.index] = 1.0
        return w
