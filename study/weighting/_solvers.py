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


def dual_cone_weights(gramian: np.ndarray, U: np.ndarray) -> np.ndarray:
    """For each row ``u`` of ``U``: ``argmin_v 1/2 v^T M v`` subject to ``v >= u`` (UPGrad's projection
    onto the dual cone, Eq. 5 of Quinton & Rey 2024, in its weight form). Solved exactly as non-negative
    least squares: with ``M = A^T A`` (``A = Lambda^{1/2} V^T`` from one eigendecomposition, valid for
    singular ``M``), ``v = u + z`` and ``z = argmin_{z >= 0} ||A z + A u||``. Returns one row per ``u``.
    """
    M = np.asarray(gramian, dtype=np.float64)
    U = np.atleast_2d(np.asarray(U, dtype=np.float64))
    lam, V = np.linalg.eigh((M + M.T) / 2)
    lam = np.clip(lam, 0.0, None)
    A = np.sqrt(lam)[:, None] * V.T
    out = np.empty_like(U)
    for r, u in enumerate(U):
        z, _ = nnls(A, -(A @ u), maxiter=50 * M.shape[0])
        out[r] = u + z
    return out


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
        r_norm = float(np.linalg.norm(r))
        while t > 1e-12:
            w_new = w + t * step
            f_new = objective(w_new)
            if np.isfinite(f_new) and f_new <= f + 1e-4 * t * slope:
                break
            # near the solution the objective's change drowns in rounding: accept a step that
            # reduces the residual instead (Newton's local quadratic convergence)
            if np.isfinite(f_new) and np.linalg.norm(Ml @ w_new - w_new ** (-p)) < 0.5 * r_norm:
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


def cagrad_weights(gramian: np.ndarray, c: float, max_iter: int = 500, tol: float = 1e-7) -> np.ndarray:
    """CAGrad (Liu et al., NeurIPS 2021, Eq. 7-8) as weights on the task gradients.

    Inner problem: ``min_{w in simplex} g_w^T g_0 + sqrt(phi) ||g_w||`` with ``g_0`` the mean gradient,
    ``phi = c^2 ||g_0||^2``; direction ``d = g_0 + sqrt(phi) / ||g_w|| g_w``, i.e. weights
    ``1/T + c ||g_0|| / ||g_w|| * w`` (before rescaling). Solved by accelerated projected gradient with
    backtracking on the Gramian (convex, T variables), then polished exactly on the support it found:
    there the KKT conditions give ``w_S = (n/k)(mu M_SS^{-1} 1 - M_SS^{-1} b_S)`` with ``mu`` the root of a
    quadratic, kept when it is feasible and no worse.
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
    for it in range(max_iter):
        gy = grad(y)
        fy = F(y)
        while True:
            z = project_simplex(y - step * gy)
            diff = z - y
            fz = F(z)
            if fz <= fy + gy @ diff + diff @ diff / (2 * step) + 1e-15 or step < 1e-12:
                break
            step *= 0.5
        if fz > fw:  # monotone restart from the best point
            y, tk = w.copy(), 1.0
        else:
            t_next = (1 + np.sqrt(1 + 4 * tk * tk)) / 2
            y = z + ((tk - 1) / t_next) * (z - w)
            w, fw, tk = z, fz, t_next
            step *= 1.2
        if fz > fw or it % 5 == 0:  # stationarity: the projected-gradient residual at the best point
            if np.max(np.abs(w - project_simplex(w - grad(w)))) < tol:
                break
    polished = _cagrad_polish(M, b, k, w)
    if polished is not None and F(polished) <= F(w) + 1e-15:
        w = polished
    gw_norm = float(np.sqrt(max(w @ M @ w, 0.0)))
    if gw_norm <= 1e-15:
        return mean.copy()
    return mean + (k / gw_norm) * w


def _cagrad_polish(M: np.ndarray, b: np.ndarray, k: float, w: np.ndarray) -> np.ndarray | None:
    """Exact CAGrad minimiser on the support of ``w`` (see :func:`cagrad_weights`), or None."""
    S = w > 1e-9 * max(float(w.max()), 1e-300)
    Ms, bs = M[np.ix_(S, S)], b[S]
    try:
        p = np.linalg.solve(Ms, np.ones(int(S.sum())))
        q = np.linalg.solve(Ms, bs)
    except np.linalg.LinAlgError:
        return None
    a, sq = float(p.sum()), float(q.sum())
    disc = sq * sq - a * (float(bs @ q) - k * k)
    if not (a > 0 and disc > 0):
        return None
    root = np.sqrt(disc)
    mu = (sq + root) / a
    ws = (mu * p - q) / root  # (n/k)(mu p - q) with n = k / root
    if not np.all(np.isfinite(ws)) or np.any(ws <= 0):
        return None
    out = np.zeros_like(w)
    out[S] = ws / ws.sum()
    return out
