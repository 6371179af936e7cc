"""Weight distributions for random weighting (RLW / RGW), after Lin et al. (TMLR 2022), Sec. 3.

Every distribution samples a weight vector on the probability simplex (non-negative, summing to 1)
from a ``numpy.random.Generator``. Parameters are validated in ``__init__`` (a ``ValueError`` becomes a
one-line spec error naming the key). A user distribution is a subclass referenced as ``module:Class``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from study.registry import Registry


class Distribution:
    """Base class: ``sample(rng) -> (T,)`` on the simplex."""

    name: ClassVar[str]

    def __init__(self, num_tasks: int):
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
        self.num_tasks = num_tasks

    def sample(self, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def params(self) -> dict:
        return {}


DISTRIBUTIONS: Registry[Distribution] = Registry("distribution")


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def _positive(name: str, value, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@DISTRIBUTIONS.register("normal")
class NormalSoftmax(Distribution):
    """``softmax(z)``, ``z_i ~ N(mu, sigma^2)`` i.i.d. The paper's default (mu=0, sigma=1)."""

    def __init__(self, num_tasks: int, mu: float = 0.0, sigma: float = 1.0):
        super().__init__(num_tasks)
        self.mu = _number("mu", mu)
        self.sigma = _positive("sigma", sigma)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return _softmax(rng.normal(self.mu, self.sigma, size=self.num_tasks))

    def params(self) -> dict:
        return {"mu": self.mu, "sigma": self.sigma}


@DISTRIBUTIONS.register("dirichlet")
class Dirichlet(Distribution):
    """``Dir(alpha)``; ``alpha`` a positive scalar (symmetric) or one positive value per task."""

    def __init__(self, num_tasks: int, alpha: float | list[float] = 1.0):
        super().__init__(num_tasks)
        if isinstance(alpha, (list, tuple)):
            if len(alpha) != num_tasks:
                raise ValueError(f"alpha has {len(alpha)} values but the problem has {num_tasks} tasks")
            self.alpha = np.array([_positive("alpha", a) for a in alpha])
        else:
            self.alpha = np.full(num_tasks, _positive("alpha", alpha))

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        w = rng.dirichlet(self.alpha)
        # Tiny alphas underflow to all-zero draws in float64; fall back to a one-hot draw with the same mean.
        s = w.sum()
        if not np.isfinite(s) or s <= 0:
            w = np.zeros(self.num_tasks)
            w[rng.choice(self.num_tasks, p=self.alpha / self.alpha.sum())] = 1.0
            return w
        return w / s

    def params(self) -> dict:
        return {"alpha": self.alpha.tolist()}
