"""One property suite over every registered gradient method and loss weighting.

New methods are picked up from the registries automatically; a method that needs non-default
construction or is excluded from a property is listed in the tables below with the reason.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from study.errors import SpecError
from study.registry import instantiate
from study.weighting import AGGREGATORS, WEIGHTINGS
from study.weighting.base import NonFiniteError

torch.set_num_threads(1)

AGG_NAMES = AGGREGATORS.names()
WT_NAMES = WEIGHTINGS.names()


def make_agg(name, T, **params):
    return instantiate(AGGREGATORS.get(name), params, None, T)


def direction(name, G, seed=0, **params):
    agg = make_agg(name, G.shape[0], **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return agg(G, np.random.default_rng(seed), losses=torch.ones(G.shape[0], dtype=G.dtype))


def random_G(T, d, seed, dtype=torch.float64):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(T, d))).to(dtype)


def test_every_method_is_registered():
    for name in ("mgda", "cagrad", "pcgrad", "gradvac", "imtl_g", "nash_mtl", "fairgrad", "aligned_mtl",
                 "upgrad", "graddrop", "db_mtl", "moco", "rgw", "gradsum"):
        assert name in AGG_NAMES
    for name in ("ew", "rlw", "uw", "gls", "dwa", "imtl_l", "gradnorm", "famo", "stch", "moml", "stl"):
        assert name in WT_NAMES


# --- gradient methods ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", AGG_NAMES)
@pytest.mark.parametrize("T,d", [(1, 5), (2, 7), (3, 9), (5, 4)])
def test_finite_output_for_finite_input(name, T, d):
    G = random_G(T, d, seed=T * 10 + d)
    out = direction(name, G)
    assert out.shape == (d,)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", AGG_NAMES)
def test_output_on_device_and_dtype_of_input(name):
    G = random_G(3, 6, seed=1, dtype=torch.float32)
    out = direction(name, G)
    assert out.dtype == torch.float32 and out.device == G.device


#: methods whose direction depends on the order of the draws from the rng beyond a task permutation
NOT_PERMUTATION_INVARIANT = {"rgw": "weights are drawn per task position; the distribution is symmetric"}


@pytest.mark.parametrize("name", [n for n in AGG_NAMES if n not in NOT_PERMUTATION_INVARIANT])
@pytest.mark.parametrize("T", [2, 4])
def test_permuting_tasks_permutes_the_result(name, T):
    G = random_G(T, 6, seed=3 + T)
    perm = torch.from_numpy(np.random.default_rng(T).permutation(T))
    agg = AGGREGATORS.get(name)
    if agg.stochastic and name != "graddrop" and T > 2:
        pytest.skip("random task order: only T=2 is order-free")
    a = direction(name, G)
    b = direction(name, G[perm])
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    # Gramian methods expose their weights: they are permuted with the tasks
    ma, mb = make_agg(name, T), make_agg(name, T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ma(G, np.random.default_rng(0), losses=torch.ones(T, dtype=G.dtype))
        mb(G[perm], np.random.default_rng(0), losses=torch.ones(T, dtype=G.dtype))
    if hasattr(ma, "last_weights") and isinstance(ma.last_weights, np.ndarray) and name != "mgda":
        np.testing.assert_allclose(ma.last_weights[perm.numpy()], mb.last_weights, rtol=1e-6, atol=1e-9)


def _orthonormal(T, d=6):
    return torch.eye(d, dtype=torch.float64)[:T] * 1.0


def _nonconflicting(T, d=6):
    G = torch.from_numpy(np.abs(np.random.default_rng(4).normal(size=(T, d))))
    return G


#: name -> (params, G, factor): the direction equals factor * sum_i g_i (the EW direction)
EW_EQUIVALENT = {
    "gradsum": ({}, _nonconflicting(3), 1.0),
    "cagrad": ({"c": 0.0}, random_G(3, 6, seed=5), 1 / 3),  # c = 0: the mean gradient
    "pcgrad": ({}, _nonconflicting(3), 1.0),  # nothing conflicts: plain sum
    "gradvac": ({}, _nonconflicting(3), 1.0),  # cosines >= 0 = initial targets: plain sum
    "upgrad": ({}, _nonconflicting(3), 1 / 3),  # non-conflicting: projections are the gradients
    "mgda": ({}, _orthonormal(3), 1 / 3),
    "imtl_g": ({}, _orthonormal(3), 1 / 3),
    "nash_mtl": ({"max_norm": 0.0}, _orthonormal(3), 1.0),
    "fairgrad": ({"alpha": 2.0}, _orthonormal(3), 1.0),
    "aligned_mtl": ({}, _orthonormal(3), 1.0),
    "graddrop": ({}, _nonconflicting(3), 1.0),  # all signs agree: nothing dropped
    "db_mtl": ({"beta": 0.0}, _orthonormal(3), 1.0),  # beta=0: h = g / L, equal norms: alpha = 1
    "rotograd": ({}, _orthonormal(3), 1.0),  # first step: ratios 1, C = mean norm = 1
}


@pytest.mark.parametrize("name", sorted(EW_EQUIVALENT))
def test_reduces_to_ew(name):
    params, G, factor = EW_EQUIVALENT[name]
    torch.testing.assert_close(direction(name, G, **params), factor * G.sum(0), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name,params", [("mgda", {}), ("nash_mtl", {"max_norm": 0.0}), ("upgrad", {}),
                                         ("fairgrad", {}), ("mgda", {"normalization": "l2"})])
@pytest.mark.parametrize("seed", range(8))
def test_direction_does_not_conflict_with_any_task(name, params, seed):
    rng = np.random.default_rng(seed)
    T = int(rng.integers(2, 6))
    d = int(rng.integers(2, 9))
    G = random_G(T, d, seed=100 + seed)
    if name in ("nash_mtl", "fairgrad") and d < T:
        pytest.skip("Nash/FairGrad need linearly independent gradients")
    dvec = direction(name, G, **params)
    dots = G @ dvec
    assert (dots >= -1e-8 * G.norm() ** 2).all(), dots


@pytest.mark.parametrize("name", AGG_NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_is_never_repaired(name, bad):
    """The policy: raise NonFiniteError or let the value through; never a finite direction."""
    G = random_G(3, 5, seed=9)
    G[1, 2] = bad
    try:
        out = direction(name, G)
    except NonFiniteError:
        return
    assert not torch.isfinite(out).all()


@pytest.mark.parametrize("name", AGG_NAMES)
def test_level_is_validated(name):
    cls = AGGREGATORS.get(name)
    for level in cls.levels:
        assert make_agg(name, 2, level=level).level == level
    with pytest.raises(SpecError, match="level must be one of"):
        make_agg(name, 2, level="pixels")


BAD_PARAMS = {
    "cagrad": {"c": -1.0}, "mgda": {"normalization": "l3"}, "gradvac": {"beta": 2.0},
    "nash_mtl": {"max_norm": -1.0}, "fairgrad": {"alpha": 0.0}, "aligned_mtl": {"scale_mode": "max"},
    "graddrop": {"leak": 1.5}, "db_mtl": {"beta": -0.1}, "moco": {"gamma": "x"},
    "rgw": {"distribution": "normal", "sigma": 0.0},
}


@pytest.mark.parametrize("name", sorted(BAD_PARAMS))
def test_bad_hyperparameter_is_a_one_line_spec_error(name):
    with pytest.raises(SpecError) as err:
        instantiate(AGGREGATORS.get(name), BAD_PARAMS[name], "method.aggregator", 3)
    assert "\n" not in str(err.value) and "method.aggregator" in str(err.value)


def test_unknown_hyperparameter_lists_valid_ones():
    with pytest.raises(SpecError, match="valid: c, rescale, level"):
        instantiate(AGGREGATORS.get("cagrad"), {"alpha": 0.4}, "m", 3)


# --- loss weightings ----------------------------------------------------------------------------
def make_wt(name, T, **params):
    return instantiate(WEIGHTINGS.get(name), params, None, T)


def weights_of(wt, losses, seed=0):
    kw = {"grads": torch.ones_like(losses)} if wt.needs_gradients else {}
    return wt(losses, np.random.default_rng(seed), **kw)


@pytest.mark.parametrize("name", WT_NAMES)
def test_weights_finite_and_shaped(name):
    losses = torch.tensor([0.5, 2.0, 1.2])
    wt = make_wt(name, 3)
    w = weights_of(wt, losses)
    assert w.shape == (3,) and torch.isfinite(w).all() and (w >= 0).all()


#: weightings whose weights are not a symmetric function of the losses
NOT_EQUIVARIANT = {"rlw": "random draws per position", "stl": "one chosen task"}


@pytest.mark.parametrize("name", [n for n in WT_NAMES if n not in NOT_EQUIVARIANT])
def test_weight_permutation_follows_losses(name):
    losses = torch.tensor([0.5, 2.0, 1.2, 0.7])
    perm = torch.tensor([2, 0, 3, 1])
    a = weights_of(make_wt(name, 4), losses)
    b = weights_of(make_wt(name, 4), losses[perm])
    torch.testing.assert_close(a[perm].detach(), b.detach())


@pytest.mark.parametrize("name", WT_NAMES)
def test_non_finite_loss_is_never_repaired(name):
    """A NaN loss stays visible: the weighting raises or the weighted objective is non-finite."""
    losses = torch.tensor([0.5, float("nan"), 1.2])
    wt = make_wt(name, 3)
    try:
        w = weights_of(wt, losses)
    except NonFiniteError:
        return
    assert not torch.isfinite((w * losses).sum())
