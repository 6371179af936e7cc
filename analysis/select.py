"""Model selection: which epoch of each trial is reported.

Criteria (``--select``):

* ``delta_m`` (default): the epoch with the best validation Delta_m against the Delta_m reference
  method (its validation metrics at its trials' last epoch, averaged over its seeds);
* ``metric:NAME``: the best validation value of a named metric (``accuracy``: averaged over the tasks
  that have it; ``TASK/METRIC``: one task's metric; ``loss``: summed validation loss), in its direction;
* ``last``: the last epoch a trial reached.

Ties go to the earliest epoch. Selection reads validation rows only; a problem without a validation
split is selected on its test rows and the report says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.scores import delta_m_frame

TRIAL_KEYS = ["study", "trial_id"]


def parse_criterion(text: str) -> tuple[str, str | None]:
    text = str(text).strip()
    if text in ("delta_m", "last"):
        return text, None
    if text.startswith("metric:") and len(text) > len("metric:"):
        return "metric", text[len("metric:"):]
    raise AnalysisError(f"--select must be delta_m, last or metric:NAME (e.g. metric:accuracy), got {text!r}")


def last_epoch_rows(rows: pd.DataFrame, trial_keys: list[str] = TRIAL_KEYS) -> pd.DataFrame:
    """The rows of each trial's last epoch."""
    last = rows.groupby(trial_keys, observed=True)["epoch"].transform("max")
    return rows[rows["epoch"].to_numpy() == last.to_numpy()]


def epoch_scores(rows: pd.DataFrame, criterion: str, reference: pd.DataFrame | None = None,
                 convention: str = "per-task", trial_keys: list[str] = TRIAL_KEYS) -> pd.DataFrame:
    """A score per (trial, epoch), higher is better; ``rows`` are the split selected on.

    ``trial_keys`` name the columns that identify a trial (the pipeline uses one integer key)."""
    kind, name = parse_criterion(criterion)
    keys = list(trial_keys) + ["epoch"]
    if kind == "last":
        out = rows[keys].drop_duplicates()
        return out.assign(score=out["epoch"].astype(float))
    if kind == "delta_m":
        if reference is None:
            raise ValueError("delta_m selection needs reference values")
        out = delta_m_frame(rows, reference, keys, convention, what="validation reference")
        out["score"] = out["delta_m"] * (-1.0 if convention == "all-metrics" else 1.0)
        return out[keys + ["score"]]
    metric = rows["metric"].astype(str)
    pick = metric == name
    if not pick.any() and "/" in name:
        pick = (rows["task"].astype(str) + "/" + metric) == name
    if not pick.any():
        names = sorted(set(metric) | set(rows["task"].astype(str) + "/" + metric))
        raise AnalysisError(f"--select metric:{name}: no such validation metric; valid: {', '.join(names)}")
    sel = rows[pick.to_numpy()]
    signed = np.where(sel["higher_is_better"].to_numpy(dtype=bool), 1.0, -1.0) * sel["value"].to_numpy(dtype=float)
    work = sel[keys].assign(score=signed)
    return work.groupby(keys, observed=True, sort=False)["score"].mean().reset_index()


def best_epochs(scores: pd.DataFrame, trial_keys: list[str] = TRIAL_KEYS) -> pd.DataFrame:
    """Per trial, the epoch with the highest finite score (earliest on ties); trials with none are dropped."""
    keys = list(trial_keys)
    finite = scores[np.isfinite(scores["score"].to_numpy(dtype=float))]
    finite = finite.sort_values(keys + ["epoch"], kind="stable")
    idx = finite.groupby(keys, observed=True, sort=False)["score"].idxmax()
    return finite.loc[idx.to_numpy(), keys + ["epoch", "score"]].reset_index(drop=True)
