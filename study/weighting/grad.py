"""Gradient aggregators: RGW and the published gradient methods.

Every class maps per-task gradients ``G`` (``T x d``) to one direction, callable on a plain matrix
without a model. Gramian methods (:class:`~study.weighting.base.GramianAggregator`) solve a ``T x T``
problem on the host in float64 and finish with one combination ``w @ G`` on the device; the others
(GradDrop, DB-MTL, MoCo, RGW) stay on the device. Conventions (each paper's own): PCGrad and GradVac
*sum* the surgered gradients, MGDA and CAGrad return convex/mean-scale combinations, IMTL-G's weights sum
to one, UPGrad averages the projections, Nash-MTL/FairGrad/Aligned-MTL weights are their equations'
solutions. ``gradsum`` (plain sum, equal to EW) is the reference for the engine.

A task gradient whose squared norm is zero or below ``eps(float32)^2`` times the largest one (underflow)
counts as zero where a method divides by it (PCGrad, GradVac, IMTL-G): it changes nothing.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from study.registry import instantiate
from study.weighting import AGGREGATORS
from study.weighting._solvers import (
    cagrad_weights,
    dual_cone_weights,
    fair_weights,
    min_norm_weights,
)
from study.weighting.base import (
    GradAggregator,
    GramianAggregator,
    NonFiniteError,
    as_weights,
    check_choice,
    check_int,
    check_number,
)
from study.weighting.distributions import DISTRIBUTIONS

_EPS32 = float(np.finfo(np.float32).eps)


class SolverWarning(RuntimeWarning):
    """An inner solver did not converge; the method fell back to a documented choice."""


def _zero_tasks(gramian: np.ndarray) -> np.ndarray:
    """Tasks whose gradient is zero or underflows (squared norm <= eps32^2 * the largest)."""
    diag = np.diag(gramian)
    top = float(diag.max()) if diag.size else 0.0
    return ~(diag > max(top * _EPS32 ** 2, np.finfo(np.float64).tiny))


def _torch_project_simplex(y: Tensor) -> Tensor:
    """Euclidean projection onto the simplex on the device (no host sync)."""
    n = y.shape[0]
    u, _ = torch.sort(y, descending=True)
    css = torch.cumsum(u, 0) - 1.0
    idx = torch.arange(1, n + 1, device=y.device, dtype=y.dtype)
    cond = (u - css / idx) > 0
    rho = (cond * idx).max().clamp(min=1)  # NaN input: no index passes; the NaN propagates
    theta = css.gather(0, (rho - 1).long().reshape(1)) / rho
    return torch.clamp(y - theta, min=0.0)


# ---------------------------------------------------------------------------------------------
@AGGREGATORS.register("gradsum")
class GradSum(GradAggregator):
    """Sum of the task gradients, ``d = sum_i g_i``: EW computed through per-task gradients.

    The reference of the engine (equals the EW loss path) and of the step-time benchmark.
    """

    def forward(self, grads, rng, *, losses=None, rep=None):
        return self._check_shape(grads).sum(0)


@AGGREGATORS.register("rgw")
class RGW(GradAggregator):
    """Random gradient weighting (Lin et al., TMLR 2022, Sec. 3, Eq. 4): ``d = sum_i w_i g_i`` with
    ``w ~ p(w)`` drawn each step from the trial's generator (any registered distribution; default
    ``normal``: softmax of N(0, 1)). At ``level: representation`` ``g_i`` are the gradients at the shared
    features and the encoder gets one backward of the weighted sum; task heads keep their own unweighted
    gradients at either level.
    """

    stochastic = True

    def __init__(self, num_tasks: int, distribution: str = "normal", level: str | None = None, **params):
        super().__init__(num_tasks, level)
        cls = DISTRIBUTIONS.get(distribution, "distribution")
        self.distribution_name = distribution
        self.distribution = instantiate(cls, params, None, num_tasks)

    def forward(self, grads, rng, *, losses=None, rep=None):
        grads = self._check_shape(grads)
        w = as_weights(self.distribution.sample(rng), grads)
        self.last_weights = w
        return w @ grads

    def extra_state_dict(self) -> dict:
        return {"distribution": self.distribution.state_dict()}

    def load_extra_state_dict(self, state: dict) -> None:
        self.distribution.load_state_dict(state.get("distribution") or {})


@AGGREGATORS.register("mgda")
class MGDA(GramianAggregator):
    """MGDA (Désidéri 2012; Sener & Koltun, NeurIPS 2018, Eq. 3): ``d = G^T w`` with
    ``w = argmin_{w in simplex} ||G^T w||^2``, solved exactly on the Gramian by Wolfe's min-norm-point
    algorithm (at most ``max_iter`` cycles). ``level: representation`` is MGDA-UB (Sec. 3.3, Eq. 9:
    gradients at the shared representation; preset name ``mgda_ub``).

    ``normalization`` (Sener & Koltun's code, as in LibMTL): ``none`` (default), ``l2`` (``g_i/||g_i||``),
    ``loss`` (``g_i/L_i``), ``loss+`` (``g_i/(L_i ||g_i||)``); the solve runs on the normalised
    gradients and the direction combines them.
    """

    def __init__(self, num_tasks: int, normalization: str = "none", max_iter: int = 250,
                 level: str | None = None):
        super().__init__(num_tasks, level)
        self.normalization = check_choice("normalization", normalization, ("none", "l2", "loss", "loss+"))
        self.max_iter = check_int("max_iter", max_iter, low=1)

    def weights(self, gramian, rng, losses=None):
        T = gramian.shape[0]
        scale = np.ones(T)
        if self.normalization in ("l2", "loss+"):
            norms = np.sqrt(np.maximum(np.diag(gramian), 0.0))
            scale = scale * np.where(norms > 0, norms, 1.0)
        if self.normalization in ("loss", "loss+"):
            if losses is None:
                raise ValueError(f"normalization {self.normalization!r} needs the task losses")
            scale = scale * np.where(losses > 0, losses, 1.0)
        Mn = gramian / np.outer(scale, scale)
        w, self.last_iterations = min_norm_weights(Mn, self.max_iter)
        return w / scale


@AGGREGATORS.register("cagrad")
class CAGrad(GramianAggregator):
    """Conflict-averse gradient descent (Liu et al., NeurIPS 2021, Eq. 7-8 and Alg. 1).

    ``d = g_0 + sqrt(phi)/||g_w|| g_w`` with ``g_0`` the mean gradient, ``phi = c^2 ||g_0||^2`` and
    ``w = argmin_{w in simplex} g_w^T g_0 + sqrt(phi) ||g_w||`` (solved on the Gramian). ``rescale``
    (the official code): 0 keeps ``d``, 1 divides by ``1 + c^2``, 2 by ``1 + c``. ``c = 0`` gives the
    mean gradient. Default ``c = 0.4`` (the paper's NYUv2/Cityscapes value), ``rescale = 1``.
    """

    levels = ("parameters",)

    def __init__(self, num_tasks: int, c: float = 0.4, rescale: int = 1, level: str | None = None):
        super().__init__(num_tasks, level)
        self.c = check_number("c", c, low=0.0)
        self.rescale = check_choice("rescale", rescale, (0, 1, 2))

    def weights(self, gramian, rng, losses=None):
        w = cagrad_weights(gramian, self.c)
        if self.rescale == 1:
            w = w / (1.0 + self.c ** 2)
        elif self.rescale == 2:
            w = w / (1.0 + self.c)
        return w


@AGGREGATORS.register("pcgrad")
class PCGrad(GramianAggregator):
    """Projecting conflicting gradients (Yu et al., NeurIPS 2020, Alg. 1):
    for each task ``i`` and the other tasks ``j`` in random order, if ``g_i^PC . g_j < 0`` then
    ``g_i^PC -= (g_i^PC . g_j / ||g_j||^2) g_j``; ``d = sum_i g_i^PC``.

    Exact in Gramian form: each ``g_i^PC`` is tracked as coefficients on the original gradients, its dot
    products come from the Gramian, and only the final sum touches ``G``. A zero or underflowing ``g_j``
    is skipped (no division by zero).
    """

    levels = ("parameters",)
    stochastic = True

    def weights(self, gramian, rng, losses=None):
        T = gramian.shape[0]
        zero = _zero_tasks(gramian)
        C = np.eye(T)
        for i in range(T):
            m = gramian[i].copy()  # m = (g_i^PC . g_k)_k, kept up to date in O(T) per projection
            others = np.array([j for j in range(T) if j != i], dtype=int)
            for j in rng.permutation(others) if others.size else others:
                if zero[j]:
                    continue
                dot = m[j]
                if dot < 0:
                    coef = -dot / gramian[j, j]
                    C[i, j] += coef
                    m += coef * gramian[j]
        return C.sum(0)


@AGGREGATORS.register("gradvac")
class GradVac(GramianAggregator):
    """Gradient vaccine (Wang et al., ICLR 2021, Eq. 3-4 and Alg. 1), whole-model granularity.

    For each task ``i`` and the others ``j`` in random order: ``phi = cos(g_i^PC, g_j)``; if ``phi`` is
    below the EMA target ``phi_hat_ij`` then ``g_i^PC += ||g_i^PC|| (phi_hat sqrt(1-phi^2) - phi
    sqrt(1-phi_hat^2)) / (||g_j|| sqrt(1-phi_hat^2)) g_j``; the target is updated on *every* step,
    ``phi_hat_ij <- (1-beta) phi_hat_ij + beta phi``; ``d = sum_i g_i^PC``. Targets start at 0.
    Default ``beta = 0.01`` (the paper's setting; LibMTL and torchjd default to 0.5). Gramian form as in
    PCGrad; zero or underflowing gradients are skipped.
    """

    levels = ("parameters",)
    stochastic = True

    def __init__(self, num_tasks: int, beta: float = 0.01, level: str | None = None):
        super().__init__(num_tasks, level)
        self.beta = check_number("beta", beta, low=0.0, high=1.0)
        self.target = np.zeros((num_tasks, num_tasks))

    def weights(self, gramian, rng, losses=None):
        T = gramian.shape[0]
        zero = _zero_tasks(gramian)
        C = np.eye(T)
        for i in range(T):
            if zero[i]:
                continue
            m = gramian[i].copy()  # (g_i^PC . g_k)_k and ||g_i^PC||^2, updated in O(T) per change
            gi_sq = float(gramian[i, i])
            others = np.array([j for j in range(T) if j != i], dtype=int)
            for j in rng.permutation(others) if others.size else others:
                if zero[j] or not gi_sq > 0:
                    continue
                gi, gj = np.sqrt(gi_sq), np.sqrt(gramian[j, j])
                phi = float(np.clip(m[j] / (gi * gj), -1.0, 1.0))
                t = self.target[i, j]
                if phi < t:
                    denom = gj * max(np.sqrt(1.0 - t * t), 1e-8)
                    coef = gi * (t * np.sqrt(1.0 - phi * phi) - phi * np.sqrt(1.0 - t * t)) / denom
                    C[i, j] += coef
                    gi_sq = max(gi_sq + 2 * coef * m[j] + coef * coef * gramian[j, j], 0.0)
                    m += coef * gramian[j]
                self.target[i, j] = (1.0 - self.beta) * t + self.beta * phi
        return C.sum(0)

    def extra_state_dict(self) -> dict:
        return {"target": self.target.tolist()}

    def load_extra_state_dict(self, state: dict) -> None:
        if "target" in state:
            self.target = np.array(state["target"], dtype=np.float64)


@AGGREGATORS.register("imtl_g", "imtlg")
class IMTLG(GramianAggregator):
    """IMTL-G (Liu et al., ICLR 2021, Sec. 3.2, Eq. 11): weights ``alpha`` summing to one such that the
    aggregated gradient has equal projections on every unit task gradient ``u_i = g_i/||g_i||``:
    ``alpha_{2:T} = g_1^T U^T (D U^T)^{-1}``, ``alpha_1 = 1 - sum alpha_{2:T}``, with rows
    ``D_k = g_1 - g_k`` and ``U_k = u_1 - u_k``. Computed on the Gramian (``g_k . u_l = M_kl/||g_l||``);
    a singular system is solved in the least-squares sense; zero-gradient tasks get weight 0. Defined at
    both levels (the paper's hybrid IMTL applies it at the representation: preset ``imtl``).
    """

    def weights(self, gramian, rng, losses=None):
        T = gramian.shape[0]
        live = np.flatnonzero(~_zero_tasks(gramian))
        w = np.zeros(T)
        if live.size == 0:
            return w
        if live.size == 1:
            w[live[0]] = 1.0
            return w
        M = gramian[np.ix_(live, live)]
        n = np.sqrt(np.diag(M))
        GU = M / n[None, :]
        r = GU[0, 0] - GU[0, 1:]
        A = GU[0, 0] - GU[0, 1:][None, :] - GU[1:, 0][:, None] + GU[1:, 1:]
        a = np.linalg.lstsq(A.T, r, rcond=None)[0]
        w[live] = np.concatenate(([1.0 - a.sum()], a))
        return w


class _FixedPointMixin:
    """Warm-started fixed-point solves with a documented fallback: on failure the method warns
    (:class:`SolverWarning`) and reuses its last solution, or at the first step ``1/||g_i||`` (the exact
    solution when the gradients are orthogonal); it never silently returns all-ones weights."""

    def _solve(self, gramian: np.ndarray, alpha: float) -> np.ndarray:
        w, ok = fair_weights(gramian, alpha, w0=self._prev, max_iter=self.max_iter)
        if ok:
            self._prev = w
            return w
        self.failures += 1
        if self._prev is not None and self._prev.shape == w.shape:
            warnings.warn(f"{self.name}: solver did not converge; reusing the previous weights", SolverWarning,
                          stacklevel=3)
            return self._prev
        warnings.warn(f"{self.name}: solver did not converge at the first step; using 1/||g_i||",
                      SolverWarning, stacklevel=3)
        d = np.sqrt(np.maximum(np.diag(gramian), 0.0))
        return np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)


@AGGREGATORS.register("nash_mtl", "nashmtl")
class NashMTL(_FixedPointMixin, GramianAggregator):
    """Nash-MTL (Navon et al., ICML 2022, Eq. 2 / Alg. 1): ``alpha > 0`` solving
    ``G G^T alpha = 1/alpha`` elementwise; ``d = G^T alpha``, then clipped to norm ``max_norm``
    (the official code clips the shared gradient to 1.0; 0 disables).

    Solved exactly as the convex ``min 1/2 a^T M a - sum log a_i`` by damped Newton steps (the official
    code's sequence of convex approximations targets the same fixed point). ``update_weights_every``:
    recompute the weights every k steps (official default 1). Zero gradients give a zero update; a
    solver failure (no solution: e.g. opposite gradients) warns and falls back (see the mixin).
    """

    levels = ("parameters",)

    def __init__(self, num_tasks: int, max_norm: float = 1.0, update_weights_every: int = 1,
                 max_iter: int = 100, level: str | None = None):
        super().__init__(num_tasks, level)
        self.max_norm = check_number("max_norm", max_norm, low=0.0)
        self.update_weights_every = check_int("update_weights_every", update_weights_every, low=1)
        self.max_iter = check_int("max_iter", max_iter, low=1)
        self._prev: np.ndarray | None = None
        self._step = 0
        self.failures = 0

    def weights(self, gramian, rng, losses=None):
        if self._prev is None or self._step % self.update_weights_every == 0:
            w = self._solve(gramian, 1.0)
        else:
            w = self._prev
        self._step += 1
        if self.max_norm > 0:
            norm = float(np.sqrt(max(w @ gramian @ w, 0.0)))
            if norm > self.max_norm:
                w = w * (self.max_norm / norm)
        return w

    def extra_state_dict(self) -> dict:
        return {"prev": None if self._prev is None else self._prev.tolist(), "step": self._step}

    def load_extra_state_dict(self, state: dict) -> None:
        self._prev = None if state.get("prev") is None else np.array(state["prev"])
        self._step = int(state.get("step", 0))


@AGGREGATORS.register("fairgrad")
class FairGrad(_FixedPointMixin, GramianAggregator):
    """FairGrad (Ban & Ji, ICML 2024, Eq. 4 / Alg. 1): ``w > 0`` solving ``G G^T w = w^(-1/alpha)``
    elementwise, ``d = G^T w``. ``alpha`` sets the fairness (default 1.0, the official code's; alpha=1
    is Nash-MTL's equation). Solved exactly as a convex problem (see ``fair_weights``); optional
    ``max_norm`` clipping (0 = off). Failure: warning and fallback, as Nash-MTL.
    """

    levels = ("parameters",)

    def __init__(self, num_tasks: int, alpha: float = 1.0, max_norm: float = 0.0, max_iter: int = 100,
                 level: str | None = None):
        super().__init__(num_tasks, level)
        self.alpha = check_number("alpha", alpha, low=0.0, low_open=True)
        self.max_norm = check_number("max_norm", max_norm, low=0.0)
        self.max_iter = check_int("max_iter", max_iter, low=1)
        self._prev: np.ndarray | None = None
        self.failures = 0

    def weights(self, gramian, rng, losses=None):
        w = self._solve(gramian, self.alpha)
        if self.max_norm > 0:
            norm = float(np.sqrt(max(w @ gramian @ w, 0.0)))
            if norm > self.max_norm:
                w = w * (self.max_norm / norm)
        return w


@AGGREGATORS.register("aligned_mtl", "alignedmtl")
class AlignedMTL(GramianAggregator):
    """Aligned-MTL (Senushkin et al., CVPR 2023, Alg. 1): with ``G G^T = V Lambda V^T`` (rank ``r``),
    ``B = sqrt(lambda_r) V Lambda^{-1/2} V^T`` aligns the gradients to an orthogonal system of equal
    magnitude and the direction is ``d = G^T B 1`` (task preferences 1, as the official code's
    ``B.sum(0)``; torchjd uses 1/T). ``scale_mode``: ``min`` (the paper's smallest singular value),
    ``median`` or ``rmse`` (mean eigenvalue).
    """

    def __init__(self, num_tasks: int, scale_mode: str = "min", level: str | None = None):
        super().__init__(num_tasks, level)
        self.scale_mode = check_choice("scale_mode", scale_mode, ("min", "median", "rmse"))

    def weights(self, gramian, rng, losses=None):
        T = gramian.shape[0]
        lam, V = np.linalg.eigh((gramian + gramian.T) / 2)
        top = float(lam.max()) if T else 0.0
        keep = lam > top * T * _EPS32
        if not top > 0 or not keep.any():
            return np.zeros(T)
        lam, V = lam[keep], V[:, keep]
        scale = {"min": lam.min(), "median": np.median(lam), "rmse": lam.mean()}[self.scale_mode]
        B = np.sqrt(scale) * (V / np.sqrt(lam)[None, :]) @ V.T
        return B @ np.ones(T)


@AGGREGATORS.register("upgrad")
class UPGrad(GramianAggregator):
    """UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024, Eq. 5-6):
    each ``g_i`` is projected onto the dual cone of the rows of ``G`` and the projections are averaged,
    ``d = 1/T sum_i pi_G(g_i)``. In weight form: ``w = sum_i v_i`` with
    ``v_i = argmin_{v >= e_i/T} v^T G G^T v``, solved exactly as non-negative least squares on the
    Gramian. The direction never conflicts with a task gradient (``G d >= 0``) and equals the mean when
    no two gradients conflict.
    """

    def weights(self, gramian, rng, losses=None):
        T = gramian.shape[0]
        trace = float(np.trace(gramian))
        if not trace > 0:
            return np.zeros(T)
        return dual_cone_weights(gramian / (trace / T), np.eye(T) / T).sum(0)


@AGGREGATORS.register("graddrop")
class GradDrop(GradAggregator):
    """Gradient sign dropout (Chen et al., NeurIPS 2020, Alg. 1) at the shared representation.

    With ``S_i = sum_batch sign(A) * grad_A L_i`` per feature: purity ``P = 1/2 (1 + sum_i S_i /
    sum_i |S_i|)``, ``U ~ Uniform(0, 1)`` per feature, mask ``M_i = [P > U][S_i > 0] + [P < U][S_i < 0]``
    and ``d = sum_i (leak + (1 - leak) M_i) * grad_A L_i`` (each sample's gradient keeps or drops by its
    feature's mask). ``leak`` defaults to 0 (the paper's pure-MTL setting). The uniform draw uses a device
    generator seeded from the trial's rng each step. At ``level: parameters`` each parameter coordinate
    is treated as one feature with batch size one.
    """

    levels = ("representation", "parameters")
    stochastic = True

    def __init__(self, num_tasks: int, leak: float = 0.0, level: str | None = None):
        super().__init__(num_tasks, level)
        self.leak = check_number("leak", leak, low=0.0, high=1.0)
        self._gen: dict[str, torch.Generator] = {}

    def forward(self, grads, rng, *, losses=None, rep=None):
        grads = self._check_shape(grads)
        T, d = grads.shape
        if rep is not None and rep.dim() >= 2 and rep.numel() == d:
            B = rep.shape[0]
            per = grads.view(T, B, d // B)
            S = torch.einsum("tbf,bf->tf", per, rep.detach().reshape(B, -1).sign())
        else:
            per = grads.view(T, 1, d)
            S = grads
        P = 0.5 * (1.0 + S.sum(0) / (S.abs().sum(0) + 1e-7))
        key = str(grads.device)
        gen = self._gen.get(key)
        if gen is None:
            gen = self._gen[key] = torch.Generator(device=grads.device)
        gen.manual_seed(int(rng.integers(0, 2 ** 62)))
        U = torch.rand(P.shape, generator=gen, device=grads.device, dtype=P.dtype)
        keep_pos = P > U
        keep_neg = P < U
        out = torch.zeros(per.shape[1:], device=grads.device, dtype=grads.dtype)
        for i in range(T):
            mask = (keep_pos & (S[i] > 0)) | (keep_neg & (S[i] < 0))
            m = mask.to(grads.dtype)
            if self.leak:
                m = self.leak + (1.0 - self.leak) * m
            out.addcmul_(per[i], m.unsqueeze(0))
        return out.reshape(-1)


@AGGREGATORS.register("db_mtl", "dbmtl")
class DBMTL(GradAggregator):
    """Dual-balancing MTL (Lin et al., 2023, Eq. 3-5): loss-scale balancing by the log transform
    (``grad log L_i = g_i / L_i``), an EMA of each task's log-loss gradient
    ``h_i <- beta_k h_i + (1 - beta_k) g_i / L_i`` with ``beta_k = beta / k^beta_sigma``, and
    gradient-magnitude balancing ``d = sum_i (max_j ||h_j|| / ||h_i||) h_i``. Defaults ``beta = 0.9``,
    ``beta_sigma = 0`` (the authors' code). Keeps one ``T x d`` buffer on the device; without ``losses``
    the rows are taken as log-loss gradients already.
    """

    levels = ("parameters",)

    def __init__(self, num_tasks: int, beta: float = 0.9, beta_sigma: float = 0.0, level: str | None = None):
        super().__init__(num_tasks, level)
        self.beta = check_number("beta", beta, low=0.0, high=1.0)
        self.beta_sigma = check_number("beta_sigma", beta_sigma, low=0.0)
        self.buffer: Tensor | None = None
        self._step = 0

    def forward(self, grads, rng, *, losses=None, rep=None):
        grads = self._check_shape(grads)
        if self.buffer is None or self.buffer.shape != grads.shape:
            self.buffer = torch.zeros_like(grads)
        elif self.buffer.device != grads.device or self.buffer.dtype != grads.dtype:
            self.buffer = self.buffer.to(grads.device, grads.dtype)
        self._step += 1
        b = self.beta / self._step ** self.beta_sigma
        if losses is not None:
            scale = ((1.0 - b) / (losses.detach().to(grads.dtype) + 1e-8)).unsqueeze(1)
        else:
            scale = torch.full((grads.shape[0], 1), 1.0 - b, device=grads.device, dtype=grads.dtype)
        self.buffer.mul_(b).addcmul_(grads, scale)
        norms = self.buffer.norm(dim=1)
        alpha = norms.max() / (norms + 1e-8)
        return alpha @ self.buffer

    def extra_state_dict(self) -> dict:
        return {"step": self._step, "buffer": None if self.buffer is None else self.buffer.detach().cpu()}

    def load_extra_state_dict(self, state: dict) -> None:
        self._step = int(state.get("step", 0))
        self.buffer = state.get("buffer")


@AGGREGATORS.register("moco")
class MoCo(GradAggregator):
    """MoCo (Fernando et al., ICLR 2023, Alg. 1): a tracking estimate of the task gradients
    ``Y <- Y - beta_k (Y - H)`` and weights ``lambda <- Pi_simplex(lambda - gamma_k (Y Y^T + rho I)
    lambda)``, direction ``d = Y^T lambda``; ``beta_k = beta / k^beta_sigma``,
    ``gamma_k = gamma / k^gamma_sigma``. ``normalization: loss`` (the authors' MTL code) uses
    ``H_i = g_i / ||g_i|| * L_i``; ``none`` uses ``g_i``. Defaults beta=0.5, beta_sigma=0.5, gamma=0.1,
    gamma_sigma=0.5, rho=0 (the authors' code via LibMTL; the paper's simplex projection replaces their
    softmax). One ``T x d`` buffer on the device, no host sync.
    """

    levels = ("parameters",)

    def __init__(self, num_tasks: int, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1,
                 gamma_sigma: float = 0.5, rho: float = 0.0, normalization: str = "loss",
                 level: str | None = None):
        super().__init__(num_tasks, level)
        self.beta = check_number("beta", beta, low=0.0, high=1.0)
        self.beta_sigma = check_number("beta_sigma", beta_sigma, low=0.0)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.gamma_sigma = check_number("gamma_sigma", gamma_sigma, low=0.0)
        self.rho = check_number("rho", rho, low=0.0)
        self.normalization = check_choice("normalization", normalization, ("loss", "none"))
        self.Y: Tensor | None = None
        self.lam: Tensor | None = None
        self._step = 0

    def forward(self, grads, rng, *, losses=None, rep=None):
        grads = self._check_shape(grads)
        T = grads.shape[0]
        if self.Y is None or self.Y.shape != grads.shape or self.lam is None:
            self.Y = torch.zeros_like(grads)
            self.lam = torch.full((T,), 1.0 / T, device=grads.device, dtype=grads.dtype)
        elif self.Y.device != grads.device or self.Y.dtype != grads.dtype:
            self.Y = self.Y.to(grads.device, grads.dtype)
            self.lam = self.lam.to(grads.device, grads.dtype)
        self._step += 1
        bk = self.beta / self._step ** self.beta_sigma
        gk = self.gamma / self._step ** self.gamma_sigma
        if self.normalization == "loss" and losses is not None:
            scale = bk * losses.detach().to(grads.dtype) / (grads.norm(dim=1) + 1e-8)
        else:
            scale = torch.full((T,), bk, device=grads.device, dtype=grads.dtype)
        self.Y.mul_(1.0 - bk).addcmul_(grads, scale.unsqueeze(1))
        YY = self.Y @ self.Y.T + self.rho * torch.eye(T, device=grads.device, dtype=grads.dtype)
        self.lam = _torch_project_simplex(self.lam - gk * (YY @ self.lam))
        return self.lam @ self.Y

    def extra_state_dict(self) -> dict:
        return {"step": self._step, "Y": None if self.Y is None else self.Y.detach().cpu(),
                "lam": None if self.lam is None else self.lam.detach().cpu()}

    def load_extra_state_dict(self, state: dict) -> None:
        self._step = int(state.get("step", 0))
        self.Y, self.lam = state.get("Y"), state.get("lam")


__all__ = [
    "CAGrad", "DBMTL", "FairGrad", "GradDrop", "GradSum", "GradVac", "IMTLG", "MGDA", "MoCo", "NashMTL",
    "NonFiniteError", "PCGrad", "RGW", "SolverWarning", "UPGrad", "AlignedMTL",
]
