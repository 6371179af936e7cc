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
    The stopping test ``(M w)_j >= w^T M w - tol * e_j`` is relative to the rounding scale of its own
    terms, ``e_j = (|M| w)_j + w^T |M| w``, not to the largest gradient: a min-norm point many orders
    of magnitude shorter than the longest task gradient is still found exactly. Returns ``(w, iterations)``.
    """
    M = np.asarray(gramian, dtype=np.float64)
    T = M.shape[0]
    if T == 1:
        return np.ones(1), 0
    scale = float(np.max(np.diag(M)))
    if not scale > 0:  # every gradient is zero: any point of the simplex is optimal
        return np.full(T, 1.0 / T), 0
    M = M / scale
    absM = np.abs(M)
    j = int(np.argmin(np.diag(M)))
    w = np.zeros(T)
    w[j] = 1.0
    support = [j]
    it = 0
    while it < max_iter:
        it += 1
        Mw = M @ w
        xx = float(w @ Mw)
        aw = absM @ w
        j = int(np.argmin(Mw))
        if Mw[j] >= xx - tol * (aw[j] + float(w @ aw)) or j in support:
            break
        support.append(j)
        while it < max_iter:  # minor cycles: move to the affine minimiser of the support
            it += 1
            k = len(support)
            A = np.zeros((k + 1, k + 1))
            Msup = M[np.ix_(support, support)]
            # the affine minimiser does not depend on the scale of M_S: equilibrate the bordered system
            # so that a support of short gradients is not lost to lstsq's cut-off
            A[:k, :k] = Msup / max(float(np.max(np.abs(Msup))), np.finfo(np.float64).tiny)
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


def cagrad_weights(gramian: np.ndarray, c: float, max_iter: int = 60) -> np.ndarray:
    """CAGrad (Liu et al., NeurIPS 2021, Eq. 7-8) as weights on the task gradients.

    Inner problem: ``min_{w in simplex} F(w) = g_w^T g_0 + k ||g_w||`` with ``g_0`` the mean gradient and
    ``k = sqrt(phi) = c ||g_0||``; direction ``d = g_0 + k / ||g_w|| g_w``, i.e. weights
    ``1/T + k / ||g_w|| * w`` (before rescaling).

    Solved exactly, with no tolerance tied to the gradients' scale: writing ``k ||x|| = min_{s > 0}
    ||x||^2 / (2 s) + k^2 s / 2``, for fixed ``s`` the minimiser over the simplex is the min-norm point of
    the shifted gradients ``g_i + s g_0`` (Wolfe's exact algorithm, as MGDA), and the optimal ``s`` is the
    root of ``||g_w(s)|| = k s`` (decreasing in ``s``). On the face Wolfe found, ``w(s)`` is affine in
    ``s`` and the root is that of a quadratic; it is accepted when the weights are non-negative and the
    min-norm optimality conditions hold at it, else the bracket on ``s`` is narrowed (bisection safeguard)
    and the face is updated. At the solution ``k / ||g_w|| = 1 / s``. Exact whatever the conditioning of
    the Gramian (rank-deficient included, e.g. ``T > d``); a few Wolfe solves per call. When 0 is in the
    convex hull of the gradients and the root is ``s = 0`` (e.g. ``c >= 1``, the paper's Theorem 3.2 case
    2), the limit direction is returned: the projection of ``g_0`` onto ``{d: G d >= 0}`` (see
    ``_cagrad_face_root``), with bounded coefficients. Optimality tests are relative to the rounding scale
    of their own terms, so the weights do not change with the gradients' scale (tested from 1e-16 to 1e16
    and with per-task norms over 8 orders of magnitude, ``tests/test_weighting_cagrad_solver.py``).
    Limit: the Gramian fixes ``||g_w||`` only to about ``sqrt(eps)`` times the longest gradient, so with
    per-task norms over ~16 orders of magnitude the objective is met to ~1e-7 of ``||g_0||^2`` only.
    """
    M = np.asarray(gramian, dtype=np.float64)
    T = M.shape[0]
    mean = np.full(T, 1.0 / T)
    scale = float(np.max(np.diag(M))) if T else 0.0
    if not scale > 0 or c == 0.0:
        return mean.copy()
    M = M / scale
    b = M @ mean
    g0_sq = float(mean @ b)
    if not g0_sq > 0:  # g_0 = 0: phi = 0 and d = g_0
        return mean.copy()
    k = c * np.sqrt(g0_sq)
    one = np.ones(T)
    s_lo, s_hi = 0.0, float(np.sqrt(np.max(np.diag(M)))) / k  # ||g_w|| <= max_i ||g_i||: phi(s_hi) <= 0
    s = min(1.0 / c, s_hi)  # g_w = g_0 gives s = ||g_0|| / k
    best_w, best_s = None, None
    for _ in range(max_iter):
        Ms = M + s * (np.outer(b, one) + np.outer(one, b)) + (s * s * g0_sq)
        w, _ = min_norm_weights(Ms)
        phi = float(np.sqrt(max(w @ M @ w, 0.0))) - k * s
        if phi > 0:
            s_lo = s
        else:
            s_hi = s
        best_w, best_s = w, s
        exact = _cagrad_face_root(M, b, g0_sq, k, w > 0, s_lo, s_hi)
        if exact is not None:
            return mean + exact
        if s_hi - s_lo <= 1e-13 * s_hi:
            break
        s = 0.5 * (s_lo + s_hi)
    if best_s is None or not best_s > 0:  # pragma: no cover - k > 0 keeps s > 0
        return mean.copy()
    return mean + best_w / best_s


def _cagrad_face_root(M: np.ndarray, b: np.ndarray, g0_sq: float, k: float, S: np.ndarray, s_lo: float,
                      s_hi: float) -> np.ndarray | None:
    """The CAGrad solution on the face ``S`` (see :func:`cagrad_weights`) as the coefficients ``w / s``
    added to the mean's, or None when the face's root is outside ``[s_lo, s_hi]``, its weights are not
    feasible or not optimal on the simplex.

    Degenerate case: when the face's affine min-norm point at ``s = 0`` is the zero vector (``G^T w0 = 0``
    to rounding: 0 is in the convex hull of the gradients) and ``||G^T w1|| <= k``, ``||g_w(s)|| - k s``
    is negative for every ``s > 0`` and the root is ``s = 0``. This happens for ``c >= 1`` (Liu et al.,
    Theorem 3.2, case c >= 1). The solution is then the limit ``s -> 0`` of ``g_0 + g_w(s) / s``, i.e.
    ``d = g_0 + G^T w1``: the projection of ``g_0`` onto the dual cone ``{d: G d >= 0}``, optimal for
    Eq. 3 with value 0 (no task gradient conflicts with ``d``). Its coefficients ``w1`` are returned
    directly (``w0 / s`` would only add a huge multiple of a null combination of the gradients)."""
    idx = np.flatnonzero(S)
    n = idx.size
    Mss = M[np.ix_(idx, idx)]
    sigma = max(float(np.max(np.abs(Mss))), np.finfo(np.float64).tiny)  # equilibration (scale-free)
    K = np.zeros((n + 1, n + 1))
    K[:n, :n] = Mss / sigma
    K[:n, n] = 1.0
    K[n, :n] = 1.0
    rhs = np.zeros((n + 1, 2))
    rhs[n, 0] = 1.0
    rhs[:n, 1] = -b[idx] / sigma
    try:
        sol = np.linalg.solve(K, rhs)
    except np.linalg.LinAlgError:
        return None
    w0, w1 = sol[:n, 0], sol[:n, 1]  # w_S(s) = w0 + s w1 (affine-hull projection of -s g_0)
    alpha, beta, gamma = float(w0 @ Mss @ w0), float(w0 @ Mss @ w1), float(w1 @ Mss @ w1)
    a2 = gamma - k * k  # ||g_w(s)||^2 - k^2 s^2 = a2 s^2 + 2 beta s + alpha
    absw0 = np.abs(w0)
    if alpha <= 1e3 * np.finfo(np.float64).eps * float(absw0 @ np.abs(Mss) @ absw0):  # G^T w0 = 0
        if a2 > 0:  # ||g_w(s)|| > k s for every s > 0 on this face
            return None
        # the limit s -> 0: w_S(s) = w0 + s w1 must be feasible for small s ...
        if np.any(w0 < -1e-12) or np.any((w0 <= 1e-12) & (w1 < -1e-12)):
            return None
        coef = np.zeros(M.shape[0])
        coef[idx] = w1
        # ... and min-norm optimal: (g_j + s g_0) . (g_w(s) + s g_0) >= ||g_w(s) + s g_0||^2 for every j,
        # divided by s and at s -> 0: g_j . d >= 0 with d = g_0 + G^T w1
        gd = M @ coef + b
        err = np.abs(M) @ np.abs(coef) + np.abs(b)
        if np.all(gd >= -1e-10 * err):
            return coef
        return None
    if abs(a2) <= 1e-14 * max(gamma, k * k):
        roots = [-alpha / (2 * beta)] if beta != 0 else []
    else:
        disc = beta * beta - a2 * alpha
        if disc < 0:
            return None
        r = np.sqrt(disc)
        roots = [(-beta + r) / a2, (-beta - r) / a2]
    slack = 1e-9 * s_hi
    cands = [x for x in roots if np.isfinite(x) and x > 0 and s_lo - slack <= x <= s_hi + slack]
    for s in cands:
        ws = w0 + s * w1
        if np.any(ws < -1e-12):
            continue
        w = np.zeros(M.shape[0])
        w[idx] = np.maximum(ws, 0.0)
        w /= w.sum()
        # min-norm optimality of w for the shifted gradients: (Ms w)_j >= w^T Ms w for every j, up to
        # the rounding scale of each entry's own terms (not of the largest gradient: the solution can
        # be many orders of magnitude shorter than it)
        Mw = M @ w
        msw = Mw + s * (b @ w) + s * b + s * s * g0_sq
        val = float(w @ msw)
        err = np.abs(M) @ w + s * float(np.abs(b) @ w) + s * np.abs(b) + s * s * g0_sq
        if np.all(msw >= val - 1e-10 * (err + float(w @ err))):
            return w / s
    return None
