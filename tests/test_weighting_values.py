"""Hand-computed values of each method on small matrices and loss vectors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from study.registry import instantiate
from study.weighting import AGGREGATORS, WEIGHTINGS
from study.weighting._solvers import min_norm_weights
from study.weighting.grad import SolverWarning

torch.set_num_threads(1)


def agg(name, T, **params):
    return instantiate(AGGREGATORS.get(name), params, None, T)


def run(a, G, seed=0, losses=None):
    return a(G, np.random.default_rng(seed), losses=losses)


def t32(rows):
    return torch.tensor(rows, dtype=torch.float32)


# --- PCGrad / GradVac ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_underflowing_gradient_is_treated_as_zero(name):
    G = t32([[1.0, 0.0], [-1e-23, 0.0]])  # ||g_j||^2 underflows to 0 in float32
    out = run(agg(name, 2), G)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_zero_gradient_task_changes_nothing(name):
    G2 = t32([[1.0, 0.0], [-0.6, 0.8]])
    G3 = torch.cat([G2, torch.zeros(1, 2)])
    a2, a3 = agg(name, 2), agg(name, 3)
    out2 = run(a2, G2)
    out3 = run(a3, G3, seed=0)
    torch.testing.assert_close(out2, out3)


def test_pcgrad_hand_values():
    # g1.g2 = -1 < 0: g1' = g1 + 1/2 g2 = (0.5, 0.5); g2' = g2 + g1 = (0, 1)
    out = run(agg("pcgrad", 2), t32([[1.0, 0.0], [-1.0, 1.0]]))
    torch.testing.assert_close(out, torch.tensor([0.5, 1.5]))


def test_gradvac_keeps_aligned_gradients_and_updates_ema_every_step():
    a = agg("gradvac", 2, beta=0.5)
    G = t32([[1.0, 0.0], [0.9, 0.436]])
    out = run(a, G)
    torch.testing.assert_close(out, G.sum(0))  # cos ~ 0.9 >= target 0: unchanged
    cos = 0.9 / math.hypot(0.9, 0.436)
    assert a.target[0, 1] == pytest.approx(0.5 * cos, abs=1e-6)
    assert a.target[1, 0] == pytest.approx(0.5 * cos, abs=1e-6)
    assert a.target[0, 1] == pytest.approx(0.45, abs=1e-4)
    run(a, G)  # second step: EMA again, no conflict needed
    assert a.target[0, 1] == pytest.approx(0.75 * cos, abs=1e-6)


def test_gradvac_conflict_reaches_the_target_cosine():
    # target 0, cos(g1, g2) = -0.5: g1 += 0.5 * g2 makes g1' orthogonal to g2 (Eq. 3 with phi_hat = 0)
    a = agg("gradvac", 2, beta=0.5)
    g2 = [-0.5, math.sqrt(3) / 2]
    G = torch.tensor([[1.0, 0.0], g2], dtype=torch.float64)
    out = run(a, G)
    g1p = G[0] + 0.5 * G[1]
    g2p = G[1] + 0.5 * G[0]
    torch.testing.assert_close(out, g1p + g2p)
    assert float(g1p @ G[1]) == pytest.approx(0.0, abs=1e-12)


# --- MGDA ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [3, 5, 10, 40])
def test_min_norm_solver_stops_and_meets_kkt(T):
    rng = np.random.default_rng(T)
    G = rng.normal(size=(T, 6)) + 0.3
    M = G @ G.T
    w, iters = min_norm_weights(M, max_iter=250)
    assert iters <= 250
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0)
    Mw = M @ w
    xx = w @ Mw
    assert (Mw >= xx - 1e-9 * np.trace(M)).all()
    np.testing.assert_allclose(Mw[w > 1e-9], xx, rtol=1e-7, atol=1e-9 * np.trace(M))
    # the min-norm value is no larger than at any vertex or the centre
    assert xx <= np.diag(M).min() + 1e-12 and xx <= np.full(T, 1 / T) @ M @ np.full(T, 1 / T) + 1e-12


def test_min_norm_solver_respects_its_cap():
    G = np.random.default_rng(0).normal(size=(8, 20))
    w, iters = min_norm_weights(G @ G.T, max_iter=3)
    assert iters <= 3 and w.sum() == pytest.approx(1.0) and (w >= 0).all()


def test_mgda_identical_and_opposite():
    g = t32([[0.3, -1.2, 2.0]])
    torch.testing.assert_close(run(agg("mgda", 2), torch.cat([g, g])), g[0])
    a = agg("mgda", 2)
    out = run(a, torch.cat([g, -g]))
    np.testing.assert_allclose(a.last_weights, [0.5, 0.5])
    torch.testing.assert_close(out, torch.zeros(3), atol=1e-7, rtol=0)


def test_mgda_flattens_any_shape():
    G = torch.from_numpy(np.random.default_rng(1).normal(size=(3, 2, 4)))
    torch.testing.assert_close(run(agg("mgda", 3), G), run(agg("mgda", 3), G.reshape(3, -1)))


@pytest.mark.parametrize("seed", range(4))
def test_mgda_matches_a_generic_qp_solver(seed):
    from scipy.optimize import minimize

    G = np.random.default_rng(seed).normal(size=(4, 5)) + 0.5
    M = G @ G.T
    ours = run(agg("mgda", 4), torch.from_numpy(G)).numpy()
    res = minimize(lambda w: w @ M @ w, np.full(4, 0.25), jac=lambda w: 2 * M @ w, method="SLSQP",
                   bounds=[(0, 1)] * 4, constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                   options={"ftol": 1e-16, "maxiter": 1000})
    np.testing.assert_allclose(ours, res.x @ G, atol=1e-5)
    assert ours @ ours <= res.fun + 1e-12  # the exact solver is at least as good


# --- CAGrad -------------------------------------------------------------------------------------
@pytest.mark.parametrize("rescale,factor", [(0, 1.5), (1, 1.2), (2, 1.0)])
@pytest.mark.parametrize("K", [2, 4])
def test_cagrad_identical_gradients(rescale, factor, K):
    g = t32([[1.0, -2.0, 0.5]])
    out = run(agg("cagrad", K, c=0.5, rescale=rescale), g.repeat(K, 1))
    torch.testing.assert_close(out, factor * g[0])


def test_cagrad_solution_is_optimal():
    from scipy.optimize import minimize

    G = np.random.default_rng(3).normal(size=(4, 6))
    M = G @ G.T
    a = agg("cagrad", 4, c=0.4, rescale=0)
    run(a, torch.from_numpy(G))
    T, c = 4, 0.4
    b = M @ np.full(T, 1 / T)
    k = c * np.sqrt(np.full(T, 1 / T) @ b)
    res = minimize(lambda w: w @ b + k * np.sqrt(w @ M @ w), np.full(T, 1 / T), method="SLSQP",
                   bounds=[(0, 1)] * T, constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                   options={"ftol": 1e-14, "maxiter": 1000})
    ref = 1 / T + k / np.sqrt(res.x @ M @ res.x) * res.x
    np.testing.assert_allclose(a.last_weights, ref, atol=1e-5)


# --- Nash-MTL / FairGrad ------------------------------------------------------------------------
def test_nash_orthogonal_hand_values():
    a = agg("nash_mtl", 2, max_norm=0.0)
    out = run(a, t32([[1.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_allclose(a.last_weights, [1.0, 0.5], rtol=1e-7)
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0]))
    clipped = run(agg("nash_mtl", 2, max_norm=1.0), t32([[1.0, 0.0], [0.0, 2.0]]))
    torch.testing.assert_close(clipped, torch.tensor([1.0, 1.0]) / math.sqrt(2))


def test_nash_solves_its_equation():
    G = np.random.default_rng(5).normal(size=(3, 8))
    M = G @ G.T
    a = agg("nash_mtl", 3, max_norm=0.0)
    run(a, torch.from_numpy(G))
    al = a.last_weights
    np.testing.assert_allclose(M @ al, 1 / al, rtol=1e-7)


def test_nash_failure_warns_and_never_returns_all_ones():
    g = t32([[1.0, 2.0]])
    a = agg("nash_mtl", 2, max_norm=0.0)
    with pytest.warns(SolverWarning):
        run(a, torch.cat([g, -g]))
    assert not np.allclose(a.last_weights, 1.0)
    assert a.failures == 1
    # a later failure reuses the last good weights, again with a warning
    run(a, t32([[1.0, 0.0], [0.0, 2.0]]))
    with pytest.warns(SolverWarning):
        run(a, torch.cat([g, -g]))
    np.testing.assert_allclose(a.last_weights, [1.0, 0.5], rtol=1e-7)


def test_nash_zero_gradients_give_zero_update():
    out = run(agg("nash_mtl", 3), torch.zeros(3, 4))
    assert torch.equal(out, torch.zeros(4))
    # one zero task: solved on the others, the zero row gets weight 0
    a = agg("nash_mtl", 2, max_norm=0.0)
    out = run(a, t32([[2.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0]))


def test_fairgrad_matches_scipy_least_squares_reference():
    tj = pytest.importorskip("torchjd.aggregation")
    G = torch.from_numpy(np.random.default_rng(6).normal(size=(3, 7)))
    for alpha in (0.5, 1.0, 2.0):
        a = agg("fairgrad", 3, alpha=alpha)
        run(a, G)
        ref = tj.FairGradWeighting(alpha=alpha)(G @ G.T).numpy()
        np.testing.assert_allclose(a.last_weights, ref, rtol=1e-4)


def test_fairgrad_alpha_one_is_nash():
    G = torch.from_numpy(np.random.default_rng(7).normal(size=(3, 5)))
    torch.testing.assert_close(run(agg("fairgrad", 3, alpha=1.0), G), run(agg("nash_mtl", 3, max_norm=0.0), G))


# --- IMTL-G, Aligned-MTL, UPGrad ----------------------------------------------------------------
def test_imtlg_equal_projections_and_reference():
    G = torch.from_numpy(np.random.default_rng(8).normal(size=(4, 6)))
    a = agg("imtl_g", 4)
    d = run(a, G)
    U = G / G.norm(dim=1, keepdim=True)
    proj = U @ d
    torch.testing.assert_close(proj, proj.mean().expand(4))
    assert a.last_weights.sum() == pytest.approx(1.0)
    tj = pytest.importorskip("torchjd.aggregation")
    ref = tj.IMTLGWeighting()(G @ G.T)
    # torchjd normalises IMTL-G's weights to sum 1 in its own way; the direction must agree in direction
    dr = ref @ G
    assert float(torch.nn.functional.cosine_similarity(d, dr, dim=0)) == pytest.approx(1.0, abs=1e-8)


def test_aligned_mtl_equal_singular_values_and_reference():
    G = torch.from_numpy(np.random.default_rng(9).normal(size=(3, 5)))
    a = agg("aligned_mtl", 3)
    d = run(a, G)
    # the aligned system sigma_min U V^T applied to 1: d = sigma_min * sum_i U V^T rows
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    expected = (S.min() * U @ Vh).sum(0)
    torch.testing.assert_close(d, expected)
    tj = pytest.importorskip("torchjd.aggregation")
    torch.testing.assert_close(d, 3 * tj.AlignedMTL()(G))  # torchjd averages, the paper sums


def test_upgrad_projects_onto_dual_cone():
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    d = run(agg("upgrad", 2), torch.stack([g1, g2]))
    # dual cone {x: x.g1 >= 0, x.g2 >= 0} = {0 <= x1 <= x2}: g1 -> (0.5, 0.5), g2 -> (0, 1); their mean
    torch.testing.assert_close(d, torch.tensor([0.25, 0.75], dtype=torch.float64))


# --- GradDrop, DB-MTL, MoCo, RGW ----------------------------------------------------------------
def test_graddrop_leak_one_is_the_sum_and_masks_follow_purity():
    G = torch.tensor([[1.0, -2.0, 3.0], [-3.0, 1.0, 1.0]])
    torch.testing.assert_close(run(agg("graddrop", 2, leak=1.0), G), G.sum(0))
    # feature 0: P = 0.5 (1 + (-2)/4) = 0.25: keeps the positive gradient with prob. 0.25
    kept_pos = 0
    n = 400
    for seed in range(n):
        out = run(agg("graddrop", 2), G, seed=seed)
        assert out[0].item() in (1.0, -3.0)
        assert out[2].item() == 4.0  # same signs: P = 1, both kept
        kept_pos += out[0].item() == 1.0
    assert abs(kept_pos / n - 0.25) < 0.07


def test_graddrop_uses_batch_sum_and_activation_sign():
    # batch of 2 samples, 1 feature; activation sign flips sample 1
    rep = torch.tensor([[1.0], [-1.0]])
    G = torch.tensor([[1.0, 1.0], [2.0, -2.0]])  # S_0 = 1 - 1 = 0, S_1 = 2 + 2 = 4 -> P = 1
    out = agg("graddrop", 2)(G, np.random.default_rng(0), rep=rep)
    torch.testing.assert_close(out, torch.tensor([2.0, -2.0]))  # task 0 has S=0: dropped; task 1 kept


def test_dbmtl_hand_values():
    G = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    losses = torch.tensor([2.0, 0.5])
    a = agg("db_mtl", 2, beta=0.9)
    out = run(a, G, losses=losses)
    h = 0.1 * G / losses[:, None]  # first step: h = (1 - beta) g / L
    n = h.norm(dim=1)
    torch.testing.assert_close(out, (n.max() / (n + 1e-8)) @ h)


def test_moco_first_step_hand_values():
    G = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    losses = torch.tensor([1.0, 3.0], dtype=torch.float64)
    a = agg("moco", 2)
    out = run(a, G, losses=losses)
    # step 1: beta_1 = 0.5, Y = 0.5 * g_i/||g_i|| * L_i, lambda = Pi(1/2 - 0.1 Y Y^T 1/2)
    Y = 0.5 * torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    lam = torch.tensor([0.5, 0.5], dtype=torch.float64) - 0.1 * (Y @ Y.T) @ torch.tensor([0.5, 0.5], dtype=torch.float64)
    lam = lam - (lam.sum() - 1) / 2  # interior projection onto the simplex
    torch.testing.assert_close(out, lam @ Y)


def test_rgw_uses_the_trials_generator():
    G = torch.from_numpy(np.random.default_rng(10).normal(size=(3, 4)))
    a = agg("rgw", 3, distribution="dirichlet", alpha=0.5)
    out = run(a, G, seed=42)
    w = np.random.default_rng(42).dirichlet([0.5] * 3)
    torch.testing.assert_close(out, torch.from_numpy(w / w.sum()) @ G)
    torch.testing.assert_close(run(agg("rgw", 3, distribution="dirichlet", alpha=0.5), G, seed=42), out)


# --- loss weightings ----------------------------------------------------------------------------
def wt(name, T, **params):
    return instantiate(WEIGHTINGS.get(name), params, None, T)


def test_gls_weights_are_the_geometric_mean_gradient():
    losses = torch.tensor([1.0, 4.0], requires_grad=True)
    w = wt("gls", 2)(losses, np.random.default_rng(0))
    torch.sqrt(losses.prod()).backward()
    torch.testing.assert_close(w, losses.grad)  # d/dL_i (L1 L2)^(1/2) = (1, 0.25)


def test_dwa_ratio_softmax_after_two_epochs():
    a = wt("dwa", 2, temp=2.0)
    L = torch.tensor([1.0, 1.0])
    assert torch.equal(a(L, None), torch.ones(2))
    a.on_epoch_end(1, torch.tensor([2.0, 1.0]))
    assert torch.equal(a(L, None), torch.ones(2))
    a.on_epoch_end(2, torch.tensor([1.0, 1.0]))
    r = torch.tensor([0.5, 1.0])
    torch.testing.assert_close(a(L, None), 2 * torch.softmax(r / 2, 0))


def test_imtl_l_and_uw_objectives():
    a = wt("imtl_l", 2)
    with torch.no_grad():
        a.s.copy_(torch.tensor([0.0, math.log(2.0)]))
    torch.testing.assert_close(a(torch.ones(2), None), torch.tensor([1.0, 2.0]))
    assert float(a.regularizer().detach()) == pytest.approx(-math.log(2.0))
    u = wt("uw", 2)
    torch.testing.assert_close(u(torch.ones(2), None).detach(), torch.full((2,), 0.5 * math.exp(0.5)))


def test_stch_warmup_then_smooth_max():
    a = wt("stch", 2, mu=0.5, warmup_epoch=1)
    L = torch.tensor([2.0, 0.5])
    torch.testing.assert_close(a(L, None), 1 / L)
    a.on_epoch_end(1, torch.tensor([4.0, 4.0]))  # epoch index 0 < warmup: no nadir yet
    assert a.nadir is None
    a.on_epoch_end(2, torch.tensor([4.0, 1.0]))
    assert a.nadir == [4.0, 1.0]
    Lr = L.clone().requires_grad_()
    (2 * 0.5 * torch.logsumexp(torch.log(Lr / torch.tensor([4.0, 1.0])) / 0.5, 0)).backward()
    torch.testing.assert_close(a(L, None), Lr.grad)


def test_famo_weights_and_update():
    a = wt("famo", 2, w_lr=0.1, gamma=0.0)
    L = torch.tensor([2.0, 0.5])
    w = a(L, None)
    z = torch.tensor([0.5, 0.5])
    c = (z / L).sum()
    torch.testing.assert_close(w, z / (c * L))
    a.after_step(torch.tensor([1.0, 0.5]))  # task 0 improved: delta = (log 2, 0)
    # grad = z * (delta - z.delta) = (+, -): descent lowers the logit of the task that improved most;
    # Adam's first step moves each logit by lr * sign(grad)
    torch.testing.assert_close(a.xi, torch.tensor([-0.1, 0.1]), atol=1e-6, rtol=0)


def test_gradnorm_loss_hand_value():
    a = wt("gradnorm", 2, alpha=1.0)
    L0 = torch.tensor([1.0, 1.0])
    w = a(L0, None, grads=torch.tensor([1.0, 3.0]))
    assert torch.equal(w, torch.ones(2))
    # first step: r = 1, target = mean(1, 3) = 2: |1 - 2| + |3 - 2| = 2
    assert float(a.regularizer()) == pytest.approx(2.0)
    a(torch.tensor([2.0, 1.0]), None, grads=torch.tensor([1.0, 3.0]))
    # r = (2, 1) / 1.5; target = 2 * r = (8/3, 4/3): |1 - 8/3| + |3 - 4/3| = 10/3
    assert float(a.regularizer()) == pytest.approx(10 / 3)
    a.regularizer().backward()
    torch.testing.assert_close(a.w.grad, torch.tensor([-1.0, 3.0]))


def test_stl_one_hot():
    a = wt("stl", 3, task=2)
    assert torch.equal(a(torch.ones(3), None), torch.tensor([0.0, 0.0, 1.0]))


def test_rotograd_scaling_hand_values():
    a = agg("rotograd", 2, latent_size=2)
    d1 = run(a, torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(d1, torch.tensor([1.5, 1.5]))  # ratios 1: C = mean norm = 1.5
    d2 = run(a, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # ratios (0.5, 1): alpha = (1/3, 2/3), C = 1/3 * 1 + 2/3 * 1 = 1
    torch.testing.assert_close(d2, torch.tensor([1.0, 1.0]))
