"""Synthetic study results in exactly the layout of :mod:`analysis.schema`, for tests and benchmarks.

``write_study`` writes ``STORAGE/NAME/study.json``, one ``results/part-TRIAL.parquet`` of tidy metric
rows per trial (train loss per task; val and test: every task metric plus ``loss``) and one
``trials/TRIAL.parquet`` status row per trial. No torch, no Ray.

Default values follow a simple model: a metric's value is its base value moved by the method's true
effect (in percent, positive = better) plus seed noise, times a learning curve that rises and then
slightly overfits, so the best validation epoch is not always the last one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.schema import RESULT_SCHEMA, RESULTS_DIR, STUDY_FILE, TRIAL_SCHEMA, TRIALS_DIR

#: problem -> task -> [(metric, higher_is_better)]
MULTIDIGITS = {"multidigits": {"left": [("accuracy", True)], "right": [("accuracy", True)]}}
NYUV2 = {"nyuv2": {
    "segmentation": [("mIoU", True), ("pixAcc", True)],
    "depth": [("abs_err", False), ("rel_err", False)],
    "normal": [("mean", False), ("median", False), ("<11.25", True), ("<22.5", True), ("<30", True)],
}}
NYUV2_BASE = [0.3830, 0.6376, 0.6754, 0.2780, 25.01, 19.21, 0.3014, 0.5720, 0.6915]

ValueFn = Callable[[str, str, str, str, int, int, str], float]
"""(problem, task, metric, method, seed, epoch, split) -> value."""


def _base_value(metric: str, hib: bool) -> float:
    if metric == "loss":
        return 0.5
    return 0.8 if hib else 0.3


def default_values(problems: Mapping, effects: Mapping[str, float], epochs: int, noise: float = 0.5,
                   rng_seed: int = 0) -> ValueFn:
    """The value model described in the module docstring, deterministic in ``rng_seed``."""

    def fn(problem: str, task: str, metric: str, method: str, seed: int, epoch: int, split: str) -> float:
        key = f"{rng_seed}|{problem}|{method}|{seed}"
        eps = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)).normal(0.0, noise)
        key2 = f"{rng_seed}|{problem}|{task}|{metric}|{method}|{seed}|{epoch}|{split}"
        jitter = np.random.default_rng(int(hashlib.sha256(key2.encode()).hexdigest()[:12], 16)).normal(0.0, noise / 4)
        hib = metric != "loss" and dict(problems[problem][task]).get(metric, True)
        curve = 1.0 - 0.3 * np.exp(-epoch / 2.0) - 0.02 * max(0.0, epoch - 0.7 * epochs) / max(epochs, 1)
        gain = (effects.get(method, 0.0) + eps + jitter) / 100.0
        base = _base_value(metric, hib)
        if hib:
            return float(base * (1.0 + gain) * curve)
        return float(base * (1.0 - gain) / curve)

    return fn


def write_study(storage: str | os.PathLike, name: str = "demo", *,
                problems: Mapping[str, Mapping[str, Sequence[tuple[str, bool]]]] = MULTIDIGITS,
                methods: Mapping[str, float] | Sequence[str] = ("EW", "RLW", "RLW-dirichlet(alpha=1)", "UW"),
                seeds: int | Sequence[int] = 3, epochs: int = 5, architecture: str = "hps",
                statuses: Mapping[tuple[str, int], tuple[str, int]] | None = None,
                values: ValueFn | None = None, splits: Sequence[str] = ("train", "val", "test"),
                noise: float = 0.5, gpus: float = 0.0, time_epoch_s: float = 2.0,
                method_params: Mapping[str, dict] | None = None, status: str = "finished",
                rng_seed: int = 0) -> str:
    """Write one synthetic study; return its folder.

    ``methods`` maps a display label to its true effect in percent (or lists labels with effect 0).
    ``statuses`` maps ``(method, seed)`` to ``(status, epochs_done)`` for incomplete trials.
    ``values`` overrides the value model; ``splits`` drops e.g. ``val`` to mimic a problem without one.
    """
    effects = dict(methods) if isinstance(methods, Mapping) else dict.fromkeys(methods, 0.0)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    fn = values or default_values(problems, effects, epochs, noise, rng_seed)
    statuses = dict(statuses or {})
    root = os.path.join(os.fspath(storage), name)
    os.makedirs(os.path.join(root, RESULTS_DIR), exist_ok=True)
    os.makedirs(os.path.join(root, TRIALS_DIR), exist_ok=True)
    spec_hash = hashlib.sha256(name.encode()).hexdigest()[:12]
    with open(os.path.join(root, STUDY_FILE), "w") as f:
        json.dump({"name": name, "spec_hash": spec_hash, "status": status, "created": "2024-01-01T00:00:00Z"}, f)
    n = 0
    for problem, tasks in problems.items():
        for label in effects:
            weighting, params = _method_fields(label, (method_params or {}).get(label))
            for seed in seed_list:
                n += 1
                trial_id = f"{n:05d}"
                state, done = statuses.get((label, seed), ("completed", epochs))
                rows: dict[str, list] = {f.name: [] for f in RESULT_SCHEMA}
                for epoch in range(1, done + 1):
                    for split in splits:
                        for task, metrics in tasks.items():
                            ms = [("loss", False)] if split == "train" else [*metrics, ("loss", False)]
                            for metric, hib in ms:
                                for k, v in (("study", name), ("spec_hash", spec_hash), ("trial_id", trial_id),
                                             ("problem", problem), ("architecture", architecture),
                                             ("method", label), ("weighting", weighting), ("aggregator", ""),
                                             ("method_params", params), ("seed", seed), ("epoch", epoch),
                                             ("split", split), ("task", task), ("metric", metric),
                                             ("value", fn(problem, task, metric, label, seed, epoch, split)),
                                             ("higher_is_better", bool(hib)), ("time_epoch_s", time_epoch_s),
                                             ("time_step_s", time_epoch_s / 100.0)):
                                    rows[k].append(v)
                _write(pa.table(rows, schema=RESULT_SCHEMA), os.path.join(root, RESULTS_DIR, f"part-{trial_id}.parquet"))
                trial = {"study": name, "spec_hash": spec_hash, "trial_id": trial_id, "problem": problem,
                         "architecture": architecture, "method": label, "weighting": weighting, "aggregator": "",
                         "method_params": params, "seed": seed, "status": state,
                         "reason": "" if state == "completed" else f"{state} at epoch {done}",
                         "epochs_done": done, "epochs_planned": epochs, "device": "cuda" if gpus else "cpu",
                         "gpus": float(gpus), "time_total_s": time_epoch_s * done, "config": "{}"}
                _write(pa.Table.from_pylist([trial], schema=TRIAL_SCHEMA), os.path.join(root, TRIALS_DIR, f"{trial_id}.parquet"))
    return root


def _method_fields(label: str, params: dict | None) -> tuple[str, str]:
    weighting = label.split("-")[0].split("(")[0].lower()
    if params is None:
        params = {"weighting": {"name": weighting}}
    return weighting, json.dumps(params, sort_keys=True, separators=(",", ":"))


def _write(table: pa.Table, path: str) -> None:
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path))
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_large_study(storage: str | os.PathLike, name: str = "bench", *, trials: int = 1000, epochs: int = 100,
                      problems: int = 10, tasks: int = 2, methods: int = 10, rng_seed: int = 0) -> tuple[str, int]:
    """A big study written with vectorised numpy, for the scale benchmark; returns (folder, rows).

    Each trial's epoch has ``tasks`` train-loss rows and, for val and test, an accuracy and a loss row
    per task: ``5 * tasks`` rows per epoch (10 with two tasks).
    """
    rng = np.random.default_rng(rng_seed)
    root = os.path.join(os.fspath(storage), name)
    os.makedirs(os.path.join(root, RESULTS_DIR), exist_ok=True)
    os.makedirs(os.path.join(root, TRIALS_DIR), exist_ok=True)
    with open(os.path.join(root, STUDY_FILE), "w") as f:
        json.dump({"name": name, "spec_hash": "bench", "status": "finished"}, f)
    labels = ["EW", "RLW"] + [f"M{i}" for i in range(methods - 2)]
    effects = rng.normal(0, 1, methods)
    layout = [("train", f"t{t}", "loss", False) for t in range(tasks)]
    for split in ("val", "test"):
        for t in range(tasks):
            layout += [(split, f"t{t}", "accuracy", True), (split, f"t{t}", "loss", False)]
    per_epoch = len(layout)
    ep = np.repeat(np.arange(1, epochs + 1, dtype=np.int32), per_epoch)
    lay = layout * epochs
    split_col = pa.array([x[0] for x in lay], pa.string())
    task_col = pa.array([x[1] for x in lay], pa.string())
    metric_col = pa.array([x[2] for x in lay], pa.string())
    hib_col = pa.array([x[3] for x in lay], pa.bool_())
    is_acc = np.array([x[2] == "accuracy" for x in lay])
    curve = 1.0 - 0.3 * np.exp(-ep / 10.0) - 0.02 * np.maximum(0, ep - 0.7 * epochs) / epochs
    n_rows = 0
    per_cell = max(trials // (problems * methods), 1)
    k = 0
    for p in range(problems):
        for m in range(methods):
            for s in range(per_cell):
                k += 1
                tid = f"{k:06d}"
                gain = (effects[m] + rng.normal(0, 0.5)) / 100
                noise = rng.normal(0, 0.002, ep.shape)
                value = np.where(is_acc, 0.8 * (1 + gain) * curve, 0.5 * (1 - gain) / curve) + noise
                const = {"study": name, "spec_hash": "bench", "trial_id": tid, "problem": f"p{p}",
                         "architecture": "hps", "method": labels[m], "weighting": labels[m].lower(),
                         "aggregator": "", "method_params": "{}"}
                n = len(ep)
                cols = {c: pa.array([v] * n, pa.string()) for c, v in const.items()}
                cols.update(seed=pa.array(np.full(n, s, np.int64)), epoch=pa.array(ep), split=split_col,
                            task=task_col, metric=metric_col, value=pa.array(value), higher_is_better=hib_col,
                            time_epoch_s=pa.array(np.full(n, 30.0)), time_step_s=pa.array(np.full(n, 0.1)))
                pq.write_table(pa.table([cols[f.name] for f in RESULT_SCHEMA], schema=RESULT_SCHEMA),
                               os.path.join(root, RESULTS_DIR, f"part-{tid}.parquet"))
                trial = {**const, "seed": s, "status": "completed", "reason": "", "epochs_done": epochs,
                         "epochs_planned": epochs, "device": "cuda", "gpus": 1.0, "time_total_s": 30.0 * epochs,
                         "config": "{}"}
                pq.write_table(pa.Table.from_pylist([trial], schema=TRIAL_SCHEMA),
                               os.path.join(root, TRIALS_DIR, f"{tid}.parquet"))
                n_rows += n
    return root, n_rows
