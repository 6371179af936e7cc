"""Figures of the report, drawn with matplotlib's Agg backend and returned as PNG bytes.

Every function takes tidy frames and returns ``bytes`` (a PNG) or ``None`` when there is nothing to
draw. Nothing here reads files or touches a display.
"""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REF_COLOR = "#d62728"
# tab10 then tab20's light shades, without the reds, which mark the reference method: 18 colours
COLORS = (tuple(c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 3)
          + tuple(c for i, c in enumerate(plt.get_cmap("tab20").colors) if i % 2 == 1 and i != 7))


def _png(fig) -> bytes:
    # tight_layout once instead of bbox_inches="tight", which draws every figure twice
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _color(method: str, methods: Sequence[str]) -> tuple:
    return COLORS[list(methods).index(method) % len(COLORS)]


def problem_figure(trials: pd.DataFrame, per_problem: pd.DataFrame, problem: str, methods: Sequence[str],
                   reference: str | None, label: str, confidence: float) -> bytes | None:
    """One problem's evidence side by side: mean Delta_m with its bootstrap CI (left) and the
    distribution of Delta_m over seeds (right)."""
    sub = per_problem[per_problem["problem"] == problem]
    n = sub["method"].nunique()
    if not n:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, max(3.2, 0.42 * n + 1.6)),
                                      gridspec_kw={"width_ratios": [1, 1.25]})
    _ci_axes(left, per_problem, problem, methods, reference, label, confidence)
    _box_axes(right, trials, problem, methods, reference, label)
    return _png(fig)


def delta_m_boxplot(trials: pd.DataFrame, problem: str, methods: Sequence[str], reference: str | None,
                    ylabel: str) -> bytes | None:
    """Box plot of Delta_m over seeds per method, every seed drawn as a dot."""
    if not (trials["problem"] == problem).any():
        return None
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * trials["method"].nunique() + 1.5), 3.4))
    _box_axes(ax, trials, problem, methods, reference, ylabel)
    return _png(fig)


def _box_axes(ax, trials: pd.DataFrame, problem: str, methods: Sequence[str], reference: str | None,
              ylabel: str) -> None:
    sub = trials[trials["problem"] == problem]
    ms = [m for m in methods if m in set(sub["method"])]
    data = [sub.loc[sub["method"] == m, "delta_m"].dropna().to_numpy() for m in ms]
    ax.boxplot(data, showmeans=True, widths=0.5, medianprops={"color": "black"},
               meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 5})
    rng = np.random.default_rng(0)
    for i, (m, d) in enumerate(zip(ms, data), start=1):
        color = REF_COLOR if m == reference else _color(m, methods)
        ax.scatter(i + rng.uniform(-0.12, 0.12, d.size), d, s=16, zorder=3, color=color, alpha=0.9)
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(1, len(ms) + 1), [_short(m) + (" (ref)" if m == reference else "") for m in ms],
                  rotation=20, ha="right")
    ax.set_ylabel(textwrap.fill(ylabel, 32))  # the convention tag makes it long: two lines, not cut
    ax.set_title(f"{problem}: Δm per seed (◇ = mean)")
    ax.grid(axis="y", alpha=0.3)


def ci_plot(per_problem: pd.DataFrame, problem: str, methods: Sequence[str], reference: str | None,
            xlabel: str, confidence: float) -> bytes | None:
    """Mean Delta_m per method with its bootstrap confidence interval (horizontal bars)."""
    n = int((per_problem["problem"] == problem).sum())
    if not n:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * n + 1.2))
    _ci_axes(ax, per_problem, problem, methods, reference, xlabel, confidence)
    return _png(fig)


def _ci_axes(ax, per_problem: pd.DataFrame, problem: str, methods: Sequence[str], reference: str | None,
             xlabel: str, confidence: float) -> None:
    sub = per_problem[per_problem["problem"] == problem].set_index("method")
    ms = [m for m in methods if m in sub.index]
    for i, m in enumerate(ms):
        row = sub.loc[m]
        mean, lo, hi = row["delta_m_mean"], row["delta_m_ci_low"], row["delta_m_ci_high"]
        color = REF_COLOR if m == reference else _color(m, methods)
        if np.isfinite(lo) and np.isfinite(hi):
            ax.plot([lo, hi], [i, i], color=color, lw=2.5, solid_capstyle="butt")
        ax.plot([mean], [i], "o", color=color, ms=6)
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(range(len(ms)), [_short(m) + (" (ref)" if m == reference else "") for m in ms])
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(f"{problem}: mean Δm, {confidence:.0%} bootstrap CI")
    ax.grid(axis="x", alpha=0.3)


def cd_diagram(ranks: Mapping[str, float], cd: float, groups: Sequence[Sequence[str]], title: str) -> bytes | None:
    """Critical-difference diagram (Demšar 2006): methods on a rank axis (1 = best, at the left), bars
    joining groups whose ranks differ by less than CD, and the CD itself drawn to scale."""
    if not ranks:
        return None
    items = sorted(((float(r), str(m)) for m, r in ranks.items()), key=lambda t: (t[0], t[1]))
    k = len(items)
    lo, hi = 1, max(k, 2)
    half = (k + 1) // 2
    gap = 0.2 * len(groups)
    depth = 0.5 + gap + 0.32 * max(half, k - half)
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 1.3 * (depth + 0.9)))
    ax.set_xlim(lo - 0.6, hi + 0.6)
    top = 0.0
    ax.set_ylim(-depth, 0.9)
    ax.axis("off")
    ax.plot([lo, hi], [top, top], color="black", lw=1)
    for r in range(lo, hi + 1):
        ax.plot([r, r], [top, top + 0.08], color="black", lw=1)
        ax.text(r, top + 0.14, str(r), ha="center", va="bottom", fontsize=9)
    if np.isfinite(cd):
        ax.plot([lo, lo + cd], [0.62, 0.62], color="black", lw=1.5)
        for x in (lo, lo + cd):
            ax.plot([x, x], [0.57, 0.67], color="black", lw=1.5)
        ax.text(lo + cd / 2, 0.7, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
    for i, (r, m) in enumerate(items):
        if i < half:
            y = -(0.45 + gap + 0.32 * i)
            ax.plot([r, r, lo - 0.1], [top, y, y], color="black", lw=0.8)
            ax.text(lo - 0.15, y, f"{_short(m)} ({r:.2f})", ha="right", va="center", fontsize=9)
        else:
            y = -(0.45 + gap + 0.32 * (k - 1 - i))
            ax.plot([r, r, hi + 0.1], [top, y, y], color="black", lw=0.8)
            ax.text(hi + 0.15, y, f"({r:.2f}) {_short(m)}", ha="left", va="center", fontsize=9)
    rank_of = {m: r for r, m in items}
    for j, g in enumerate(groups):
        xs = [rank_of[m] for m in g]
        y = -(0.25 + 0.2 * j)
        ax.plot([min(xs) - 0.03, max(xs) + 0.03], [y, y], color="black", lw=3.5, solid_capstyle="round")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def pareto_scatter(trials_metrics: pd.DataFrame, problem: str, methods: Sequence[str],
                   reference: str | None) -> bytes | None:
    """Two-task problems: each seed's first test metric of task 1 vs task 2, method means as large
    markers, and the Pareto front of the means."""
    sub = trials_metrics[(trials_metrics["problem"] == problem) & (trials_metrics["metric"] != "loss")]
    tasks = list(dict.fromkeys(sub["task"]))
    if len(tasks) != 2:
        return None
    # Each task's first metric, in the order the rows list them.
    heads = sub.drop_duplicates("task")
    firsts = [(r.task, r.metric, bool(r.higher_is_better)) for r in heads.itertuples(index=False)]
    pick = sub.merge(heads[["task", "metric"]], on=["task", "metric"])
    df = pick.pivot_table(index=["method", "seed"], columns="task", values="value", aggfunc="mean")[tasks].dropna()
    if df.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    means = df.groupby(level=0).mean()
    for m in [m for m in methods if m in means.index]:
        c = REF_COLOR if m == reference else _color(m, methods)
        pts = df.loc[m]
        ax.scatter(pts[tasks[0]], pts[tasks[1]], s=14, color=c, alpha=0.5)
        ax.scatter([means.loc[m, tasks[0]]], [means.loc[m, tasks[1]]], s=80, color=c, edgecolor="black",
                   label=_short(m), zorder=3)
    # Pareto front of the means in the metrics' directions.
    sx = 1 if firsts[0][2] else -1
    sy = 1 if firsts[1][2] else -1
    pts = [(sx * x, sy * y, m) for m, (x, y) in means[[tasks[0], tasks[1]]].iterrows()]
    front = [p for p in pts if not any(q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1]) for q in pts)]
    front.sort()
    if len(front) > 1:
        ax.plot([sx * p[0] for p in front], [sy * p[1] for p in front], color="grey", ls=":", lw=1.2,
                label="Pareto front (means)")
    arrow = {True: "↑ better", False: "↓ better"}
    ax.set_xlabel(f"{tasks[0]} {firsts[0][1]} ({arrow[firsts[0][2]]})")
    ax.set_ylabel(f"{tasks[1]} {firsts[1][1]} ({arrow[firsts[1][2]]})")
    ax.set_title(f"{problem}: test metrics per seed (small) and means (large)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _png(fig)


def distribution_label(method_params: str, fallback: str) -> str:
    """The RLW distribution named in a method's canonical JSON, e.g. ``dirichlet(alpha=1.0)``."""
    try:
        params = json.loads(method_params or "{}")
    except ValueError:
        return fallback
    w = params.get("weighting") if isinstance(params, dict) else None
    w = w if isinstance(w, dict) else params if isinstance(params, dict) else {}
    dist = w.get("distribution")
    if not dist:
        return fallback
    extra = {k: v for k, v in w.items() if k not in ("name", "distribution")}
    return f"{dist}({', '.join(f'{k}={v}' for k, v in sorted(extra.items()))})" if extra else str(dist)


def distribution_boxplots(trials: pd.DataFrame, families: Mapping[str, str], ylabel: str) -> bytes | None:
    """The distribution study: Delta_m over seeds of every random-weighting variant (one panel per
    problem), as in the RLW paper's figure comparing sampling distributions."""
    sub = trials[trials["method"].isin(list(families))]
    if sub["method"].nunique() < 2:
        return None
    problems = sorted(sub["problem"].unique())
    fig, axes = plt.subplots(1, len(problems), figsize=(max(4.5, 3.2 * len(problems)), 3.6), squeeze=False)
    for ax, p in zip(axes[0], problems):
        sp = sub[sub["problem"] == p]
        ms = sorted(sp["method"].unique(), key=lambda m: families[m])
        ax.boxplot([sp.loc[sp["method"] == m, "delta_m"].dropna().to_numpy() for m in ms], widths=0.5,
                   medianprops={"color": "black"})
        ax.set_xticks(range(1, len(ms) + 1), [families[m] for m in ms], rotation=30, ha="right", fontsize=8)
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_title(p, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle("Random-weighting distributions: Δm over seeds", fontsize=10)
    return _png(fig)


def overall_iqm_plot(overall: pd.DataFrame, methods: Sequence[str], reference: str | None, xlabel: str) -> bytes | None:
    """IQM of Delta_m over all (problem, seed) runs with stratified-bootstrap CIs."""
    sub = overall.set_index("method")
    ms = [m for m in methods if m in sub.index and np.isfinite(sub.loc[m, "iqm"])]
    if not ms:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(ms) + 1.2))
    for i, m in enumerate(ms):
        r = sub.loc[m]
        c = REF_COLOR if m == reference else _color(m, methods)
        if np.isfinite(r["iqm_ci_low"]):
            ax.plot([r["iqm_ci_low"], r["iqm_ci_high"]], [i, i], color=c, lw=2.5)
        ax.plot([r["iqm"]], [i], "o", color=c)
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_yticks(range(len(ms)), [_short(m) + (" (ref)" if m == reference else "") for m in ms])
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title("IQM of Δm over (problem, seed) with stratified bootstrap CI")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _short(label: str, width: int = 28) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"
