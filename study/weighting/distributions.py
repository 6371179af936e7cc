"""Weight distributions for random weighting (RLW / RGW), after Lin et al. (TMLR 2022), Sec. 3 and 5.

Every distribution samples a weight vector on the probability simplex (non-negative, summing to 1)
from a ``numpy.random.Generator`` (the trial's seeded generator, so a trial is reproducible). Parameters
are validated in ``__init__`` (a ``ValueError`` becomes a one-line spec error naming the key) and are
the searchable keys of a spec entry, e.g. ``{name: rlw, distribution: uniform, low: 0, high: 2}``.

A user distribution is a small subclass referenced from YAML as ``package.module:Class``::

    class Spiky(Distribution):
        def __init__(self, num_tasks, p=0.5):
            super().__init__(num_tasks); self.p = p
        def sample(self, rng):
            w = rng.random(self.num_tasks) ** (1 / self.p); return w / w.sum()

State drawn once (``random_normal``'s per-task means) is checkpointed through ``state_dict``.
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

    def state_dict(self) -> dict:
        """State drawn during training (checkpointed with the trial)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


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
    """``softmax(z)``, ``z_i ~ N(mu, sigma^2)`` i.i.d. (Lin et al., Sec. 3, Eq. 5). The paper's default
    (mu=0, sigma=1)."""

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
    """``Dir(alpha)`` (Lin et al., Sec. 5); ``alpha`` a positive scalar (symmetric) or one positive value
    per task."""

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


@DISTRIBUTIONS.register("uniform")
class UniformSoftmax(Distribution):
    """``softmax(z)``, ``z_i ~ U(low, high)`` i.i.d. (Lin et al., Sec. 5; default U(0, 1))."""

    def __init__(self, num_tasks: int, low: float = 0.0, high: float = 1.0):
        super().__init__(num_tasks)
        self.low = _number("low", low)
        self.high = _number("high", high)
        if not self.high > self.low:
            raise ValueError(f"high must be > low, got low={low!r}, high={high!r}")

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return _softmax(rng.uniform(self.low, self.high, size=self.num_tasks))

    def params(self) -> dict:
        return {"low": self.low, "high": self.high}


@DISTRIBUTIONS.register("bernoulli")
class Bernoulli(Distribution):
    """``w_i ~ Bernoulli(p)`` i.i.d., normalised to sum 1 (Lin et al., Sec. 5); an all-zero draw is
    resampled, so each step trains a random non-empty subset of tasks with equal weights. After 100
    all-zero draws (tiny ``p``) the subset size is drawn from its exact conditional law
    ``Binomial(T, p) | >= 1`` instead, the same distribution without an unbounded loop."""

    def __init__(self, num_tasks: int, p: float = 0.5):
        super().__init__(num_tasks)
        self.p = _positive("p", p)
        if self.p > 1:
            raise ValueError(f"p must be in (0, 1], got {p!r}")

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        for _ in range(100):
            w = (rng.random(self.num_tasks) < self.p).astype(np.float64)
            s = w.sum()
            if s > 0:
                return w / s
        from scipy.stats import binom

        sizes = np.arange(1, self.num_tasks + 1)
        logp = binom.logpmf(sizes, self.num_tasks, self.p)
        prob = np.exp(logp - logp.max())
        k = int(rng.choice(sizes, p=prob / prob.sum()))
        w = np.zeros(self.num_tasks)
        w[rng.choice(self.num_tasks, size=k, replace=False)] = 1.0 / k
        return w

    def params(self) -> dict:
        return {"p": self.p}


@DISTRIBUTIONS.register("constrained_bernoulli", "bernoulli_k")
class ConstrainedBernoulli(Distribution):
    """Exactly ``k`` tasks on (chosen uniformly without replacement), each with weight ``1/k``
    (Lin et al., Sec. 5, constrained Bernoulli; default k=1: one random task per step)."""

    def __init__(self, num_tasks: int, k: int = 1):
        super().__init__(num_tasks)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_tasks:
            raise ValueError(f"k must be an integer in [1, {num_tasks}], got {k!r}")
        self.k = int(k)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        w = np.zeros(self.num_tasks)
        w[rng.choice(self.num_tasks, size=self.k, replace=False)] = 1.0 / self.k
        return w

    def params(self) -> dict:
        return {"k": self.k}


@DISTRIBUTIONS.register("random_normal")
class RandomNormal(Distribution):
    """``softmax(z)``, ``z_i ~ N(mu_i, sigma_i^2)`` with per-task ``mu_i, sigma_i ~ U(0, 1)`` drawn once,
    at the first sample, from the trial's generator (Lin et al., Sec. 5, random normal). The drawn
    ``mu``/``sigma`` are part of the checkpointed state."""

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks)
        self.mu: np.ndarray | None = None
        self.sigma: np.ndarray | None = None

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        if self.mu is None:
            self.mu = rng.uniform(0.0, 1.0, size=self.num_tasks)
            self.sigma = rng.uniform(0.0, 1.0, size=self.num_tasks)
        return _softmax(rng.normal(self.mu, self.sigma))

    def state_dict(self) -> dict:
        if self.mu is None:
            return {}
        return {"mu": self.mu.tolist(), "sigma": self.sigma.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mu") is not None:
            self.mu = np.array(state["mu"], dtype=np.float64)
            self.sigma = np.array(state["sigma"], dtype=np.float64)
