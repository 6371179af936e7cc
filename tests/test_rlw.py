"""RLW weights: on the simplex, mean 1/T, reproducible, validated (issue 2's checks)."""

import numpy as np
import pytest
import torch

from study.errors import SpecError
from study.registry import instantiate
from study.weighting import WEIGHTINGS
from study.weighting.loss import EW, RLW


@pytest.mark.parametrize("params", [{}, {"distribution": "normal", "mu": 0.0, "sigma": 1.0},
                                    {"distribution": "dirichlet", "alpha": 1.0},
                                    {"distribution": "dirichlet", "alpha": 0.3}])
@pytest.mark.parametrize("T", [2, 3, 7])
def test_rlw_weights_on_simplex_with_mean_one_over_T(params, T):
    rlw = RLW(T, **params)
    rng = np.random.default_rng(0)
    losses = torch.ones(T)
    draws = torch.stack([rlw(losses, rng) for _ in range(4000)])
    assert (draws >= 0).all()
    assert torch.allclose(draws.sum(1), torch.ones(4000, dtype=draws.dtype), atol=1e-6)
    # symmetric distributions: E[w_i] = 1/T; the std of the mean over 4000 draws is < 0.006
    assert torch.allclose(draws.mean(0), torch.full((T,), 1.0 / T, dtype=draws.dtype), atol=0.02)
    assert draws.std(0).min() > 0.01  # actually random


def test_rlw_reproducible_from_the_trial_generator_and_on_loss_dtype():
    rlw = RLW(3)
    losses = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    a = [rlw(losses, np.random.default_rng(5)) for _ in range(2)]
    assert torch.equal(a[0], a[1]) and a[0].dtype == torch.float64 and a[0].device == losses.device


def test_normal_softmax_matches_its_formula():
    rlw = RLW(4, distribution="normal", mu=0.0, sigma=2.0)
    w = rlw(torch.ones(4), np.random.default_rng(11))
    z = np.random.default_rng(11).normal(0.0, 2.0, size=4)
    expected = np.exp(z) / np.exp(z).sum()
    assert np.allclose(w.numpy(), expected)


def test_ew_weights_are_ones():
    assert torch.equal(EW(3)(torch.tensor([1.0, 5.0, 2.0]), np.random.default_rng(0)), torch.ones(3))


@pytest.mark.parametrize("params, message", [
    ({"distribution": "dirichlet", "alpha": 0}, "alpha must be > 0"),
    ({"distribution": "dirichlet", "alpha": -1.0}, "alpha must be > 0"),
    ({"distribution": "dirichlet", "alpha": [1.0, 2.0]}, "alpha has 2 values but the problem has 3 tasks"),
    ({"distribution": "normal", "sigma": 0}, "sigma must be > 0"),
    ({"distribution": "normal", "sigma": "big"}, "sigma must be a number"),
    ({"distribution": "gaussian"}, "unknown distribution 'gaussian'"),
    ({"distribution": "normal", "alpha": 1.0}, "unknown parameter 'alpha' for 'normal'"),
])
def test_bad_distribution_parameters_name_the_key(params, message):
    with pytest.raises(SpecError) as info:
        instantiate(WEIGHTINGS.get("rlw"), params, "methods[1]", 3)
    assert message in str(info.value) and str(info.value).startswith("methods[1]")
