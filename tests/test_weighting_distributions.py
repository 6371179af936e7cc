"""Random-weight distributions: simplex, parameters, reproducibility, user classes."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from study.errors import SpecError
from study.registry import instantiate
from study.weighting import WEIGHTINGS
from study.weighting.distributions import DISTRIBUTIONS

T = 4


def dist(name, **params):
    return instantiate(DISTRIBUTIONS.get(name), params, "method.weighting", T)


@pytest.mark.parametrize("name", DISTRIBUTIONS.names())
def test_samples_on_simplex_and_reproducible(name):
    a, b = dist(name), dist(name)
    ra, rb = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(50):
        wa, wb = a.sample(ra), b.sample(rb)
        assert wa.shape == (T,) and (wa >= 0).all() and wa.sum() == pytest.approx(1.0)
        np.testing.assert_array_equal(wa, wb)


def test_normal_and_uniform_are_softmax_of_draws():
    w = dist("normal", mu=0.5, sigma=2.0).sample(np.random.default_rng(0))
    z = np.random.default_rng(0).normal(0.5, 2.0, size=T)
    np.testing.assert_allclose(w, np.exp(z) / np.exp(z).sum())
    w = dist("uniform", low=-1.0, high=3.0).sample(np.random.default_rng(1))
    z = np.random.default_rng(1).uniform(-1.0, 3.0, size=T)
    np.testing.assert_allclose(w, np.exp(z) / np.exp(z).sum())


def test_bernoulli_resamples_all_zero_draws():
    d = dist("bernoulli", p=0.05)
    rng = np.random.default_rng(0)
    for _ in range(200):
        w = d.sample(rng)
        on = w > 0
        assert on.any()
        np.testing.assert_allclose(w[on], 1.0 / on.sum())


def test_bernoulli_tiny_p_terminates_with_the_conditional_law():
    # P(all zero) = (1 - 1e-9)^4: the resampling loop alone would run ~2.5e8 times per step; conditioned
    # on a non-empty draw, exactly one task is on almost surely, uniformly over the tasks
    d = dist("bernoulli", p=1e-9)
    rng = np.random.default_rng(0)
    draws = np.array([d.sample(rng) for _ in range(400)])
    assert ((draws > 0).sum(1) == 1).all() and np.allclose(draws.sum(1), 1.0)
    assert np.abs(draws.mean(0) - 0.25).max() < 0.08
    # p = 1e-3 over 4 tasks: P(two on | non-empty) ~ 1.5e-3, the rest one-hot
    d = dist("bernoulli", p=1e-3)
    sizes = np.array([(d.sample(rng) > 0).sum() for _ in range(400)])
    assert (sizes >= 1).all() and (sizes == 1).mean() > 0.98


def test_constrained_bernoulli_has_exactly_k_tasks():
    for k in (1, 2, 4):
        w = dist("constrained_bernoulli", k=k).sample(np.random.default_rng(k))
        assert (w > 0).sum() == k and np.allclose(w[w > 0], 1.0 / k)
    # every task is picked about equally often
    d, rng = dist("constrained_bernoulli"), np.random.default_rng(0)
    counts = sum(d.sample(rng) for _ in range(4000))
    assert np.abs(counts / 4000 - 0.25).max() < 0.03


def test_random_normal_draws_its_parameters_once_and_checkpoints_them():
    d = dist("random_normal")
    rng = np.random.default_rng(5)
    d.sample(rng)
    mu, sigma = d.mu.copy(), d.sigma.copy()
    assert ((0 <= mu) & (mu <= 1)).all() and ((0 <= sigma) & (sigma <= 1)).all()
    d.sample(rng)
    np.testing.assert_array_equal(d.mu, mu)
    e = dist("random_normal")
    e.load_state_dict(d.state_dict())
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    np.testing.assert_array_equal(d.sample(r1), e.sample(r2))


def test_dirichlet_per_task_alpha_and_mean():
    d = dist("dirichlet", alpha=[1.0, 2.0, 3.0, 4.0])
    rng = np.random.default_rng(0)
    mean = np.mean([d.sample(rng) for _ in range(3000)], axis=0)
    np.testing.assert_allclose(mean, np.array([1, 2, 3, 4]) / 10, atol=0.02)


@pytest.mark.parametrize("name,params,match", [
    ("normal", {"sigma": 0.0}, "sigma must be > 0"),
    ("normal", {"mu": "a"}, "mu must be a finite number"),
    ("uniform", {"low": 1.0, "high": 1.0}, "high must be > low"),
    ("bernoulli", {"p": 1.5}, "p must be in"),
    ("bernoulli", {"p": 0.0}, "p must be > 0"),
    ("constrained_bernoulli", {"k": 5}, "k must be an integer in"),
    ("dirichlet", {"alpha": [1.0, 1.0]}, "alpha has 2 values"),
    ("dirichlet", {"alpha": -1.0}, "alpha must be > 0"),
])
def test_parameters_are_validated(name, params, match):
    with pytest.raises(SpecError, match=match):
        dist(name, **params)


def test_rlw_passes_parameters_and_samples_on_loss_device():
    rlw = instantiate(WEIGHTINGS.get("rlw"), {"distribution": "uniform", "low": 0.0, "high": 2.0}, "m", T)
    losses = torch.ones(T, dtype=torch.float64)
    w = rlw(losses, np.random.default_rng(0))
    assert w.dtype == torch.float64 and w.device == losses.device
    with pytest.raises(SpecError, match="unknown parameter 'alpha'"):
        instantiate(WEIGHTINGS.get("rlw"), {"distribution": "normal", "alpha": 1.0}, "m", T)


def test_user_distribution_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "my_dists.py").write_text(textwrap.dedent('''
        import numpy as np
        from study.weighting.distributions import Distribution

        class FirstTask(Distribution):
            """All weight on task 0 with probability p, else uniform."""
            def __init__(self, num_tasks, p=0.5):
                super().__init__(num_tasks)
                if not 0 <= p <= 1:
                    raise ValueError(f"p must be in [0, 1], got {p!r}")
                self.p = p
            def sample(self, rng):
                if rng.random() < self.p:
                    w = np.zeros(self.num_tasks); w[0] = 1.0; return w
                return np.full(self.num_tasks, 1.0 / self.num_tasks)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    rlw = instantiate(WEIGHTINGS.get("rlw"), {"distribution": "my_dists:FirstTask", "p": 1.0}, "m", T)
    assert torch.equal(rlw(torch.ones(T), np.random.default_rng(0)), torch.tensor([1.0, 0, 0, 0]))
    with pytest.raises(SpecError, match="p must be in"):
        instantiate(WEIGHTINGS.get("rlw"), {"distribution": "my_dists:FirstTask", "p": 2.0}, "m", T)
