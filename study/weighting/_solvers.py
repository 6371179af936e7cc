"""Small exact solvers on a ``T x T`` Gramian, in float64 numpy on the host.

Every gradient method that needs an optimisation (MGDA's min-norm point, UPGrad's dual-cone projections,
Nash-MTL's and FairGrad's fixed points, CAGrad's inner problem) solves it here on the Gramian, whose size
does not depend on the model. Each solver has an iteration cap and reports whether it converged.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls


def project_simplex(y: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (sort-based, exact)."""
    n = y.shape[0]
    u = np.sort(y)[::-1]
    css = np.cumsum(u) - 1.0
    idx = np.arange(1, n + 1)
    cond = u - css / idx > 0
    rho = idx[cond][-1]
    theta = css[cond][-1] / rho
    return np.maximum(y - theta, 0.0)


def min_norm_weights(gramian: np.ndarray, max_iter: int = 250, tol: float = 1e-12) -> tuple[np.ndarray, int]:
    """Weights ``w`` on the simplex minimising ``||G^T w||^2 = w^T M w`` (the MGDA sub-problem).

    Wolfe's (1976) minimum-norm-point algorithm on the Gramian: finite and exact (no Frank-Wolfe
    zig-zag), with ``max_iter`` counting major and minor cycles together. At the returned point
    ``(M w)_i >= w^T M w`` for every ``i``, with equality where ``w_i > 0`` (the KKT conditions).
    Returns ``(w, iterations)``.
    """
    M = np.asarray(gramian, dtype=np.float64)
    T = M.shape[0]
    if T == 1:
        return np.ones(1), 0
    scale = float(np.max(np.diag(M)))
    if not scale > 0:  # every gradient is zero: any point of the simplex is optimal
        return np.full(T, 1.0 / T), 0
    M = M / scale
    j = int(np.argmin(np.diag(M)))
    w = np.zeros(T)
    w[j] = 1.0
    support = [j]
    it = 0
    while it < max_iter:
        it += 1
        Mw = M @ w
        xx = float(w @ Mw)
        j = int(np.argmin(Mw))
        if Mw[j] >= xx - tol or j in support:
            break
        support.append(j)
        while it < max_iter:  # minor cycles: move to the affine minimiser of the support
            it += 1
            k = len(support)
            A = np.zeros((k + 1, k + 1))
            A[:k, :k] = M[np.ix_(support, support)]
            A[:k, k] = 1.0
            A[k, :k] = 1.0
            b = np.zeros(k + 1)
            b[k] = 1.0
            v = np.linalg.lstsq(A, b, rcond=None)[0][:k]
            ws = w[support]
            if np.all(v > 1e-15):
                w[:] = 0.0
                w[support] = v
                break
            # Step from ws towards v until the first coordinate hits zero, then drop it.
            mask = (v <= 1e-15) & (ws - v > 0)
            theta = float(np.min(ws[mask] / (ws[mask] - v[mask]))) if mask.any() else 0.0
            ws = ws + theta * (v - ws)
            keep = ws > 1e-15
            if not keep.any():  # pragma: no cover - degenerate
                keep[np.argmax(ws)] = True
            w[:] = 0.0
            support = [s for s, kk in zip(support, keep) if kk]
            w[support] = ws[keep] / ws[keep].sum()
    w = np.maximum(w, 0.0)
    return w / w.sum(), it


def dual_cone_weights(gramian: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``argmin_v 1/2 v^T M v`` subject to ``v >= u`` (UPGrad's projection onto the dual cone, Eq. 5 of
    Quinton & Rey 2024, in its weight form). Solved exactly as a non-negative least-squares problem:
    with ``M = A^T A`` (``A = Lambda^{1/2} V^T`` from the eigendecomposition, valid for singular ``M``),
    ``v = u + z`` and ``z = argmin_{z >= 0} ||A z + A u||``.
    """
    M = np.asarray(gramian, dtype=np.float64)
    lam, V = np.linalg.eigh((M + M.T) / 2)
    lam = np.clip(lam, 0.0, None)
    A = np.sqrt(lam)[:, None] * V.T
    z, _ = nnls(A, -(A @ u), maxiter=50 * M.shape[0])
    return u + z


def fair_weights(gramian: np.ndarray, alpha: float, w0: np.ndarray | None = None, max_iter: int = 100,
                 tol: float = 1e-9) -> tuple[np.ndarray, bool]:
    """Positive ``w`` with ``M w = w^(-1/alpha)`` elementwise (FairGrad, Eq. 4; alpha=1 is Nash-MTL's
    ``G G^T alpha = 1/alpha``).

    It is the stationary point of the convex ``1/2 w^T M w - sum_i phi(w_i)`` with ``phi' = w^(-1/alpha)``,
    solved by damped Newton steps kept inside ``w > 0``. Tasks with a zero gradient have no finite solution
    and no influence on the direction; they get weight 0. Returns ``(w, converged)``; it does not converge
    when no solution exists (e.g. two opposite gradients: the objective is unbounded below).
    """
    M = np.asarray(gramian, dtype=np.float64)
    T = M.shape[0]
    diag = np.diag(M)
    top = float(diag.max()) if T else 0.0
    w_out = np.zeros(T)
    if not top > 0:
        return w_out, True
    live = diag > top * 1e-20
    idx = np.flatnonzero(live)
    Ml = M[np.ix_(idx, idx)] / top
    p = 1.0 / alpha
    c = top ** (-alpha / (alpha + 1.0))  # w = c w' with  M' w' = w'^(-1/alpha),  M = top M'

    def phi(x):
        return np.log(x) if p == 1.0 else x ** (1.0 - p) / (1.0 - p)

    def objective(x):
        return 0.5 * x @ Ml @ x - phi(x).sum()

    if w0 is not None and np.all(np.isfinite(w0)) and np.all(w0[idx] > 0):
        w = w0[idx] / c
    else:
        w = 1.0 / np.sqrt(np.maximum(np.diag(Ml), 1e-300)) ** (2 * alpha / (alpha + 1.0))
    converged = False
    f = objective(w)
    for _ in range(max_iter):
        r = Ml @ w - w ** (-p)
        if np.max(np.abs(r) / w ** (-p)) < tol:
            converged = True
            break
        H = Ml + np.diag(p * w ** (-p - 1.0))
        try:
            step = -np.linalg.solve(H, r)
        except np.linalg.LinAlgError:
            break
        neg = step < 0
        t = min(1.0, 0.99 * float(np.min(-w[neg] / step[neg]))) if neg.any() else 1.0
        slope = float(r @ step)
        while t > 1e-12:
            w_new = w + t * step
            f_new = objective(w_new)
            if np.isfinite(f_new) and f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break
        w, f = w_new, f_new
        if not np.all(np.isfinite(w)) or w.max() > 1e12:
            break
    if converged:
        w_out[idx] = c * w
    return w_out, converged


def cagrad_weights(gramian: np.ndarray, c: float, max_iter: int = 1000, tol: float = 1e-12) -> np.ndarray:
    """CAGrad (Liu et al., NeurIPS 2021, Eq. 7-8) as weights on the task gradients.

    Inner problem: ``min_{w in simplex} g_w^T g_0 + sqrt(phi) ||g_w||`` with ``g_0`` the mean gradient,
    ``phi = c^2 ||g_0||^2``; direction ``d = g_0 + sqrt(phi) / ||g_w|| g_w``, i.e. weights
    ``1/T + c ||g_0|| / ||g_w|| * w`` (before rescaling). Solved by accelerated projected gradient with
    backtracking on the Gramian (convex, T variables).
    """
    M = np.asarray(gramian, dtype=np.float64)
    T = M.shape[0]
    mean = np.full(T, 1.0 / T)
    scale = float(np.mean(np.diag(M)))
    if not scale > 0 or c == 0.0:
        return mean.copy()
    M = M / scale
    b = M @ mean
    g0_norm = float(np.sqrt(max(mean @ b, 0.0)))
    k = c * g0_norm
    eps = 1e-18

    def F(w):
        return float(w @ b + k * np.sqrt(max(w @ M @ w, 0.0) + eps))

    def grad(w):
        Mw = M @ w
        return b + k * Mw / np.sqrt(max(w @ Mw, 0.0) + eps)

    w = mean.copy()
    y = w.copy()
    fw = F(w)
    step = 1.0
    tk = 1.0
    for _ in range(max_iter):
        gy = grad(y)
        fy = F(y)
        while True:
            z = project_simplex(y - step * gy)
            diff = z - y
            if F(z) <= fy + gy @ diff + diff @ diff / (2 * step) + 1e-15 or step < 1e-12:
                break
            step *= 0.5
        fz = F(z)
        if fz > fw:  # monotone restart
            y, tk = w.copy(), 1.0
            continue
        t_next = (1 + np.sqrt(1 + 4 * tk * tk)) / 2
        y = z + ((tk - 1) / t_next) * (z - w)
        done = np.max(np.abs(z - w)) < tol and abs(fw - fz) < tol
        w, fw, tk = z, fz, t_next
        step *= 1.5
        if done:
            break
    gw_norm = float(np.sqrt(max(w @ M @ w, 0.0)))
    if gw_norm <= 1e-15:
        return mean.copy()
    return mean + (k / gw_norm) * w
