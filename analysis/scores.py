"""Delta_m, the multi-task score of Maninis et al. (CVPR 2019) as used by Lin et al. (RLW, TMLR 2022, Sec. 5).

Default convention ("per-task")::

    Delta_m = 1/T sum_t 1/N_t sum_i (-1)^{l_{t,i}} (M_{t,i} - M^ref_{t,i}) / M^ref_{t,i} x 100

with ``l = 1`` when lower is better, so a positive Delta_m is better than the reference. The
"all-metrics" convention (LibMTL's older tables) averages over all metrics flat and flips the sign,
so a positive value is *worse*; every table names the convention it uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError

CONVENTIONS = {
    "per-task": ("Δm (%) = mean over tasks of the mean over each task's metrics of "
                 "±(M − M_ref)/M_ref × 100 (sign + when higher is better); positive = better than the reference"),
    "all-metrics": ("Δm (%) = mean over all metrics of ∓(M − M_ref)/M_ref × 100 (sign − when higher is better); "
                    "positive = WORSE than the reference"),
}

#: the short name of each convention, put in every table header and tidy table that carries Delta_m
CONVENTION_TAGS = {
    "per-task": "per-task mean, + = better",
    "all-metrics": "mean of all metrics, + = worse",
}

#: metrics that are never part of Delta_m (the training objective is not a quality metric)
EXCLUDED_METRICS = frozenset({"loss"})


def delta_m(values: Sequence[float], reference: Sequence[float], higher_is_better: Sequence[bool],
            tasks: Sequence[str], convention: str = "per-task") -> float:
    """Delta_m (%) of one set of metric values against reference values (aligned sequences)."""
    v = np.asarray(values, dtype=float)
    r = np.asarray(reference, dtype=float)
    hib = np.asarray(higher_is_better, dtype=bool)
    tasks = np.asarray(tasks)
    if not (v.shape == r.shape == hib.shape == tasks.shape) or v.ndim != 1 or v.size == 0:
        raise ValueError("values, reference, higher_is_better and tasks must be equal-length non-empty sequences")
    if np.any(r == 0):
        i = int(np.flatnonzero(r == 0)[0])
        raise AnalysisError(f"Delta_m reference value is 0 for task {tasks[i]!r} (metric #{i}); "
                            "relative change is undefined: choose another --delta-reference")
    rel = np.where(hib, 1.0, -1.0) * (v - r) / np.abs(r) * 100.0
    if convention == "per-task":
        return float(np.mean([rel[tasks == t].mean() for t in dict.fromkeys(tasks.tolist())]))
    if convention == "all-metrics":
        return float(-rel.mean())
    raise ValueError(f"convention must be one of {sorted(CONVENTIONS)}, got {convention!r}")


def lookup(frame: pd.DataFrame, keys: list[str], table: pd.DataFrame, column: str) -> np.ndarray:
    """``table[column]`` for each row of ``frame``, matched on ``keys`` (NaN where absent).

    Vectorised for large categorical frames: the few distinct key combinations are matched as strings,
    then broadcast to the rows through group numbers.
    """
    if frame.empty:
        return np.empty(0)
    ids = frame.groupby(keys, observed=True, sort=False, dropna=False).ngroup().to_numpy()
    first = ~pd.Series(ids).duplicated().to_numpy()
    combos = frame.loc[first, keys].copy()
    combos["_id"] = ids[first]
    for k in keys:
        combos[k] = combos[k].astype(str)
    t = table[keys + [column]].copy()
    for k in keys:
        t[k] = t[k].astype(str)
    matched = combos.merge(t, on=keys, how="left").drop_duplicates("_id")
    values = np.full(int(ids.max()) + 1, np.nan)
    values[matched["_id"].to_numpy()] = matched[column].to_numpy(dtype=float)
    return values[ids]


def relative_change(frame: pd.DataFrame, reference: pd.DataFrame, what: str = "reference") -> pd.Series:
    """Signed relative change (%) of each row of ``frame`` against ``reference``, positive = better.

    ``frame`` has columns problem, task, metric, value, higher_is_better; ``reference`` has problem,
    task, metric, ref. Rows whose reference is missing get NaN; a zero reference raises.
    """
    ref = lookup(frame, ["problem", "task", "metric"], reference, "ref")
    zero = ref == 0
    if zero.any():
        i = int(np.flatnonzero(zero)[0])
        row = frame.iloc[i]
        raise AnalysisError(f"Delta_m reference value is 0 for problem {row['problem']!r}, task {row['task']!r}, "
                            f"metric {row['metric']!r} ({what}); relative change is undefined: "
                            "choose another --delta-reference")
    sign = np.where(frame["higher_is_better"].to_numpy(dtype=bool), 1.0, -1.0)
    return pd.Series(sign * (frame["value"].to_numpy(dtype=float) - ref) / np.abs(ref) * 100.0, index=frame.index)


def delta_m_frame(frame: pd.DataFrame, reference: pd.DataFrame, keys: Sequence[str],
                  convention: str = "per-task", what: str = "reference") -> pd.DataFrame:
    """Delta_m per group of ``keys`` (e.g. a trial, or a trial and epoch) over tidy metric rows.

    Returns a frame with ``keys`` plus ``delta_m``; also ``per_task`` rows are available through
    :func:`task_delta_frame`. Rows of excluded metrics (``loss``) are ignored.
    """
    keys = list(keys)
    rows = frame[~frame["metric"].isin(EXCLUDED_METRICS)]
    rel = relative_change(rows, reference, what)
    work = rows[keys + ["task"]].copy()
    work["rel"] = rel.to_numpy()
    if convention == "per-task":
        per_task = work.groupby(keys + ["task"], observed=True, sort=False)["rel"].mean()
        out = per_task.groupby(level=list(range(len(keys))), sort=False).mean()
    elif convention == "all-metrics":
        out = -work.groupby(keys, observed=True, sort=False)["rel"].mean()
    else:
        raise ValueError(f"convention must be one of {sorted(CONVENTIONS)}, got {convention!r}")
    return out.rename("delta_m").reset_index()


def task_delta_frame(frame: pd.DataFrame, reference: pd.DataFrame, keys: Sequence[str], what: str = "reference") -> pd.DataFrame:
    """Per-task relative improvement (%) per group of ``keys``: the mean over the task's metrics."""
    keys = list(keys)
    rows = frame[~frame["metric"].isin(EXCLUDED_METRICS)]
    work = rows[keys + ["task"]].copy()
    work["rel"] = relative_change(rows, reference, what).to_numpy()
    return work.groupby(keys + ["task"], observed=True, sort=False)["rel"].mean().rename("task_delta").reset_index()
