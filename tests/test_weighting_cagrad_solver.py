"""CAGrad's inner solver (``cagrad_weights``) against independent reference solves.

The inner problem (Liu et al., NeurIPS 2021, Eq. 8) is ``min_{w in simplex} F(w) = w^T b + k sqrt(w^T M w)``
with ``M = G G^T``, ``b = M 1/T`` and ``k = c ||g_0||``; the solver returns the direction's coefficients
``1/T + w / s`` (``s = ||g_w|| / k``), from which ``w`` is recovered as ``(out - 1/T) / sum(out - 1/T)``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar

from study.weighting._solvers import cagrad_weights, min_norm_weights


def make_gradients(seed: int, T: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = int(rng.integers(T, 2 * T + 3))
    if kind == "random":
        G = rng.normal(size=(T, d)) + 0.5 * rng.normal()
    elif kind == "rank_deficient":  # T > d
        G = rng.normal(size=(T, max(1, T // 3))) + 0.3
    elif kind == "near_duplicate":
        G = np.repeat(rng.normal(size=(1, d)), T, 0) + 1e-6 * rng.normal(size=(T, d))
    elif kind == "tiny":
        G = 1e-8 * rng.normal(size=(T, d))
    elif kind == "huge":
        G = 1e8 * rng.normal(size=(T, d))
    elif kind == "spread":  # per-task norms over 8 orders of magnitude
        G = (rng.normal(size=(T, d)) + 0.3) * 10.0 ** rng.uniform(-4, 4, size=(T, 1))
    elif kind == "collinear_spread":  # one direction, norms over 8 orders, a little noise
        G = np.repeat(rng.normal(size=(1, d)), T, 0) * 10.0 ** rng.uniform(-4, 4, size=(T, 1))
        G = G + 1e-9 * rng.normal(size=(T, d))
    else:  # pragma: no cover
        raise ValueError(kind)
    return G


def objective(G: np.ndarray, c: float):
    """F(w) evaluated in gradient space (not through the Gramian), after normalising the largest task
    gradient to norm 1, and its gradient."""
    Gn = G / np.linalg.norm(G, axis=1).max()
    g0 = Gn.mean(0)
    k = c * np.linalg.norm(g0)

    def F(w):
        gw = w @ Gn
        return float(gw @ g0 + k * np.linalg.norm(gw))

    def dF(w):
        gw = w @ Gn
        return Gn @ g0 + k * (Gn @ gw) / max(np.linalg.norm(gw), 1e-300)

    return F, dF, g0


def recover_w(out: np.ndarray) -> np.ndarray:
    v = out - 1.0 / out.size
    return v / v.sum()


def slsqp_reference(F, dF, T: int, seed: int) -> float:
    rng = np.random.default_rng(seed + 1000)
    starts = [np.full(T, 1.0 / T), np.eye(T)[0], np.eye(T)[T - 1], rng.dirichlet(np.ones(T))]
    best = np.inf
    for x0 in starts:
        res = minimize(F, x0, jac=dF, method="SLSQP", bounds=[(0.0, 1.0)] * T,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(T)}],
                       options={"ftol": 1e-15, "maxiter": 2000})
        w = np.clip(res.x, 0.0, None)
        best = min(best, F(w / w.sum()))
    return best


CASES = [(kind, T, c) for kind, Ts in [
    ("random", (3, 8, 40)), ("rank_deficient", (6, 20, 40)), ("near_duplicate", (4, 25)), ("tiny", (5, 30)),
    ("huge", (5, 30)), ("spread", (3, 12, 40)), ("collinear_spread", (6, 24)),
] for T in Ts for c in (0.4, 0.9)]


@pytest.mark.parametrize("kind,T,c", CASES)
def test_cagrad_matches_an_slsqp_reference(kind, T, c):
    seed = hash((kind, T, c)) % 2 ** 31
    G = make_gradients(seed, T, kind)
    out = cagrad_weights(G @ G.T, c)
    assert np.isfinite(out).all()
    F, dF, g0 = objective(G, c)
    w = recover_w(out)
    assert w.min() >= -1e-12 and w.sum() == pytest.approx(1.0)
    ref = slsqp_reference(F, dF, T, seed)
    # the exact solver is never worse than the generic one (relative to ||g_0||^2, F's natural scale)
    assert F(w) <= ref + 1e-10 * float(g0 @ g0)
    # KKT certificate of exactness: grad F_j >= w . grad F for every j, equality on the support
    grad = dF(w)
    gap = grad - w @ grad
    scale = np.abs(G / np.linalg.norm(G, axis=1).max() @ g0) + c * np.linalg.norm(g0)
    assert (gap >= -1e-6 * scale).all()
    # the direction lies on the ball of Eq. 3: ||d - g_0|| = c ||g_0||
    Gn = G / np.linalg.norm(G, axis=1).max()
    assert np.linalg.norm(out @ Gn - g0) == pytest.approx(c * np.linalg.norm(g0), rel=1e-6)


@pytest.mark.parametrize("kind,T,c", [case for case in CASES if case[0] != "near_duplicate"])
def test_cagrad_weights_are_scale_invariant(kind, T, c):
    G = make_gradients(7, T, kind)
    M = G @ G.T
    out = cagrad_weights(M, c)
    for factor in (1e-16, 1e-8, 1e8, 1e16):
        np.testing.assert_allclose(cagrad_weights(M * factor, c), out, rtol=0, atol=1e-8 * np.abs(out).max())


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("c", [0.2, 0.5, 0.9, 1.5])
def test_cagrad_two_tasks_match_a_fine_grid(seed, c):
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(2, 3)) * 10.0 ** rng.uniform(-2, 2, size=(2, 1))
    out = cagrad_weights(G @ G.T, c)
    F, _, g0 = objective(G, c)
    t = np.linspace(0.0, 1.0, 100001)
    grid = min(F(np.array([x, 1.0 - x])) for x in t[::100])
    best = minimize_scalar(lambda x: F(np.array([x, 1.0 - x])), bounds=(0.0, 1.0), method="bounded",
                           options={"xatol": 1e-14})
    ref = min(grid, best.fun, F(np.array([0.0, 1.0])), F(np.array([1.0, 0.0])))
    d = out @ G
    assert np.isfinite(d).all()
    if np.linalg.norm(out - 0.5) < 1e-12 * np.abs(out).max() or abs((out - 0.5).sum()) < 1e-12:
        # degenerate (c >= 1, 0 in the segment): d must not conflict with either task
        assert (G @ d >= -1e-12 * np.linalg.norm(G, axis=1).max() ** 2).all()
        return
    assert F(recover_w(out)) <= ref + 1e-12 * float(g0 @ g0)


def test_cagrad_zero_in_the_hull_with_c_at_least_one_gives_the_dual_cone_projection():
    # 0 = (3 g1 + 2 g2 + 4 g3) / 9 lies inside the hull: for c >= 1, Eq. 3's value is 0 and the only
    # direction in span(G) that conflicts with no task is d = 0 (the projection of g_0 onto {G d >= 0})
    G = np.array([[2.0, 0.0], [-1.0, 2.0], [-1.0, -1.0]])
    for c in (1.0, 2.0, 10.0):
        out = cagrad_weights(G @ G.T, c)
        assert np.abs(out).max() < 10  # no blow-up of 1 / s
        np.testing.assert_allclose(out @ G, [0.0, 0.0], atol=1e-12)
    # 0 on an edge of the hull: g_0 = (0, 1/3) conflicts with nothing and is its own projection
    G = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    for c in (0.5, 1.0, 2.0):
        np.testing.assert_allclose(cagrad_weights(G @ G.T, c) @ G, [0.0, 1.0 / 3.0], atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_cagrad_rank_deficient_large_c_never_conflicts(seed):
    # T > d with c >= 1: 0 is (generically) inside the hull; the direction must not conflict with any
    # task, stay finite and within the ball ||d - g_0|| <= c ||g_0||, whatever the scale
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(12, 3))
    for scale in (1e-8, 1.0, 1e8):
        Gs = G * scale
        out = cagrad_weights(Gs @ Gs.T, 2.0)
        d = out @ Gs
        assert np.isfinite(d).all() and np.abs(out).max() < 1e3
        assert (Gs @ d >= -1e-9 * scale ** 2).all()
        g0 = Gs.mean(0)
        assert np.linalg.norm(d - g0) <= 2.0 * np.linalg.norm(g0) * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(8))
def test_min_norm_is_exact_when_it_is_far_shorter_than_the_longest_gradient(seed):
    # per-task norms over 4 orders of magnitude: the KKT conditions hold relative to each row's own
    # rounding scale, not only to the largest gradient's
    rng = np.random.default_rng(seed)
    G = (rng.normal(size=(10, 25)) + 0.3) * 10.0 ** rng.uniform(-2, 2, size=(10, 1))
    M = G @ G.T
    w, _ = min_norm_weights(M)
    Mw, xx = M @ w, w @ M @ w
    err = np.abs(M) @ w + w @ np.abs(M) @ w
    assert (Mw >= xx - 1e-7 * err).all()
    res = minimize(lambda v: np.linalg.norm(v @ G) ** 2, np.full(10, 0.1), method="SLSQP",
                   bounds=[(0, 1)] * 10, constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}],
                   options={"ftol": 1e-20, "maxiter": 2000})
    assert np.linalg.norm(w @ G) <= np.linalg.norm(np.clip(res.x, 0, None) / np.clip(res.x, 0, None).sum() @ G) * (1 + 1e-6)
