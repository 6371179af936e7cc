"""``litmus best``: stage 2 of a tuned study - each method's best setting, written as a seed-sweep spec.

A tuned study (a spec with a ``tune`` section, e.g. ``search_spaces/tune_baselines.yaml``) gives every
method the same number of Optuna trials with one seed. Its best trials are single draws, so the
comparison the analysis needs comes from a second study: each method at its best setting, over seeds::

    litmus best litmus_results/tune_baselines --seeds 5 --out tune_baselines_best.yaml
    litmus run tune_baselines_best.yaml

What is read: ``study.json`` (the study must be ``finished``), ``spec.yaml`` (the spec it ran; it must
have ``tune``), the trial status rows in ``trials/`` (each holds the trial's full config as JSON,
including ``tuned`` - the sampled values - and ``cell`` - its grid cell) and the validation rows of
``results/``.

Selection rule (the trial metric is not stored, so it is recomputed from the results):

* A trial's score at an epoch is the study's ``tune.metric``: for ``val_score`` (the default) the mean
  over tasks of each task's *first* metric (the problem's declared order, the one the trainer reports as
  ``val_score``), each signed so that higher is better; for ``split/task/metric``, that value signed by its
  direction. Rows come from :func:`analysis.select.epoch_scores`.
* A trial's score is its best epoch's score (:func:`analysis.select.best_epochs`; ties: earliest epoch),
  the same epoch rule the analysis applies to every trial of the follow-up study. Optuna's sampler saw
  the last epoch's value instead; the two agree whenever validation keeps improving.
* Only trials whose status is ``completed`` or ``early_stopped`` (stopped by an ASHA/HyperBand scheduler)
  count; errored and diverged trials never win. A method with no such trial is an error.
* With ``scheduler: pbt`` a member's tuned ``train.*`` values change as it runs (and after an exploit it
  carries on from another member of its cell): its status row's config holds ``tuned_history``
  (``[[first_epoch, tuned], ...]``) and the setting taken is the one its best epoch ran with. The
  follow-up runs that setting fixed from the start, not PBT's schedule.
* A method's best setting is its highest-scoring trial over all its trials (all seeds of stage 1 if it
  had several); ties go to the smaller trial id. The setting is the trial's method (with its tuned
  ``method.*``/``weighting.*``/``aggregator.*`` values), its tuned ``train.*`` values as the method's own
  ``train:`` entry, and its label, unchanged. Tuned ``problem.*``/``architecture.*`` values go to the
  problem / architecture when every method's best agrees, else ``litmus best`` stops (one follow-up grid
  has one problem and architecture entry for all methods).

The follow-up keeps everything else of the tuned spec (problem, architecture, ``train``, ``resources``,
``run``), drops ``tune`` and ``scheduler`` and sets ``seeds: [0, ..., N-1]``. A tuned study over several
problems or architectures gives one follow-up per (problem, architecture): choose with ``--problem`` and
``--architecture``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.errors import LitmusError, SpecError

SELECTABLE = ("completed", "early_stopped")


@dataclass
class Choice:
    """The best trial of one method (one grid cell, or several if stage 1 had several seeds)."""

    label: str
    method: dict                  # canonical method dict of the best trial (tuned values included)
    train: dict                   # the method's own training settings: its spec entry's plus tuned train.*
    tuned: dict                   # every value Optuna set in that trial
    score: float                  # higher is better (signed as the analysis signs)
    value: float                  # the metric's own value (unsigned)
    epoch: int
    trial_id: str
    candidates: int               # trials of the method that could be chosen
    others: dict = field(default_factory=dict)  # tuned problem.* / architecture.* values of the best trial


@dataclass
class Best:
    study: str
    metric: str
    choices: list[Choice]
    raw: dict                     # the follow-up spec
    text: str                     # the follow-up spec as written
    warnings: list[str]


# -- reading the study --------------------------------------------------------------------------
def _read_study(study_dir: str) -> tuple[Any, str, dict, dict]:
    from analysis.schema import STUDY_FILE
    from study.results import exists, join, read_json, resolve_fs

    fs, root = resolve_fs(str(study_dir))
    meta = read_json(fs, join(root, STUDY_FILE)) if exists(fs, root) else None
    if meta is None:
        raise LitmusError(f"no study at {study_dir}: expected {study_dir}/{STUDY_FILE}; give the folder "
                          f"`litmus run` printed (STORAGE/NAME, e.g. litmus_results/tune_baselines)")
    name = str(meta.get("name") or Path(root).name)
    spec_path = join(root, "spec.yaml")
    if not exists(fs, spec_path):
        raise LitmusError(f"study {name!r} at {study_dir} has no spec.yaml; `litmus best` needs the spec the "
                          f"study ran")
    import yaml

    with fs.open_input_stream(spec_path) as f:
        raw = yaml.safe_load(f.readall().decode())
    if not isinstance(raw, dict):
        raise LitmusError(f"{study_dir}/spec.yaml is not a study spec (a YAML mapping)")
    if not raw.get("tune"):
        raise LitmusError(f"study {name!r} was not tuned (its spec has no tune section), so every method "
                          f"already has one fixed setting; run its spec with more seeds instead")
    status = meta.get("status", "unknown")
    if status != "finished":
        raise LitmusError(f"study {name!r} is not finished (status: {status}); let it end or resume it "
                          f"with `litmus run SPEC --resume`, then run litmus best")
    return (fs, root), name, meta, raw


def _read_trials(fs, root: str) -> list[dict]:
    import pyarrow.dataset as pads

    from analysis.schema import TRIAL_SCHEMA, TRIALS_DIR
    from study.results import exists, join

    path = join(root, TRIALS_DIR)
    if not exists(fs, path):
        return []
    data = pads.dataset(path, filesystem=fs, format="parquet", schema=TRIAL_SCHEMA, ignore_prefixes=[".", "_"])
    cols = ["trial_id", "status", "config", "problem", "method", "seed"]
    return data.to_table(columns=cols).to_pylist()


def _read_rows(fs, root: str, split: str, trial_ids: list[str]):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.dataset as pads

    from analysis.schema import RESULT_SCHEMA, RESULTS_DIR
    from study.results import exists, join

    cols = ["trial_id", "epoch", "task", "metric", "value", "higher_is_better"]
    path = join(root, RESULTS_DIR)
    if not trial_ids or not exists(fs, path):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    data = pads.dataset(path, filesystem=fs, format="parquet", schema=RESULT_SCHEMA, ignore_prefixes=[".", "_"])
    flt = (pads.field("split") == split) & pads.field("trial_id").isin(pa.array(sorted(trial_ids), pa.string()))
    return data.to_table(columns=cols, filter=flt).to_pandas()


# -- scoring ------------------------------------------------------------------------------------
def _first_metrics(config: dict, cache: dict) -> list[tuple[str, str]]:
    """``(task, metric)`` of each task's first metric: the pairs ``val_score`` averages."""
    key = json.dumps([config["problem"], config.get("problem_params") or {}], sort_keys=True, default=str)
    if key not in cache:
        from study.problems import PROBLEMS
        from study.registry import instantiate

        problem = instantiate(PROBLEMS.get(config["problem"], "problem"), config.get("problem_params") or {},
                              "problem")
        cache[key] = [(task, ms[0].name) for task, ms in problem.metrics().items() if ms]
    return cache[key]


def trial_scores(rows, configs: dict[str, dict], metric: str) -> dict[str, tuple[float, int, float]]:
    """``trial_id -> (score, epoch, value)`` at each trial's best epoch (score: higher is better)."""
    import numpy as np
    import pandas as pd

    from analysis.select import best_epochs, epoch_scores

    if rows.empty:
        return {}
    rows = rows.assign(trial_id=rows["trial_id"].astype(str), task=rows["task"].astype(str),
                       metric=rows["metric"].astype(str))
    if metric == "val_score":
        cache: dict = {}
        pairs = pd.DataFrame([(t, task, m) for t, cfg in configs.items() for task, m in _first_metrics(cfg, cache)],
                             columns=["trial_id", "task", "metric"])
        rows = rows.merge(pairs, on=["trial_id", "task", "metric"], how="inner")
        if rows.empty:
            return {}
        rows = rows.assign(metric="val_score")
        criterion = "metric:val_score"
    else:
        _, task, name = metric.split("/")
        rows = rows[(rows["task"] == task).to_numpy() & (rows["metric"] == name).to_numpy()]
        if rows.empty:
            return {}
        criterion = f"metric:{task}/{name}"
    scores = epoch_scores(rows, criterion, trial_keys=["trial_id"])
    best = best_epochs(scores, trial_keys=["trial_id"])
    sign = 1.0
    if metric != "val_score":
        sign = 1.0 if bool(rows["higher_is_better"].iloc[0]) else -1.0
    out = {}
    for r in best.itertuples(index=False):
        s = float(r.score)
        if np.isfinite(s):
            out[str(r.trial_id)] = (s, int(r.epoch), sign * s)
    return out


# -- choosing -----------------------------------------------------------------------------------
def _cell_positions(spec) -> list[tuple[int, int, int, int]]:
    """``(problem, architecture, method, seed)`` indices of each cell, in ``trial_configs`` order."""
    return [(p, a, m, s) for p in range(len(spec.problems)) for a in range(len(spec.architectures))
            for m in range(len(spec.methods)) for s in range(len(spec.seeds))]


def _select_group(spec, positions, problem: str | None, architecture: str | None) -> tuple[int, int]:
    groups = sorted({(p, a) for p, a, _, _ in positions})
    names = [(spec.problems[p]["name"], spec.architectures[a]["name"]) for p, a in groups]
    keep = [g for g, (pn, an) in zip(groups, names)
            if (problem is None or pn == problem.lower()) and (architecture is None or an == architecture.lower())]
    if len(keep) == 1:
        return keep[0]
    listing = ", ".join(f"--problem {pn} --architecture {an}" for pn, an in names)
    if not keep:
        raise LitmusError(f"no (problem, architecture) of the study matches "
                          f"{'--problem ' + problem if problem else ''} "
                          f"{'--architecture ' + architecture if architecture else ''}; choose one of: {listing}")
    raise LitmusError(f"the study tuned {len(keep)} (problem, architecture) pairs and a follow-up grid has one "
                      f"setting per method: write one follow-up per pair with one of: {listing}"
                      if len(set(names)) == len(names) else
                      f"the study has several problem or architecture entries of the same name; litmus best "
                      f"cannot tell them apart ({listing})")


def choose(spec, trials: list[dict], scores: dict, group: tuple[int, int]) -> list[Choice]:
    cells = spec.trial_configs()
    positions = _cell_positions(spec)
    by_method: dict[int, list[tuple[dict, dict]]] = {}
    for t in trials:
        cfg = t["config"]
        i = cfg.get("cell")
        if not isinstance(i, int) or not 0 <= i < len(cells):
            raise LitmusError(f"trial {t['trial_id']} has no grid cell in its config: was the study run by "
                              f"`litmus run` with a tune section?")
        cell = cells[i]
        if (cell["problem"], cell["architecture"], cell["method"]["label"], cell["seed"]) != (
                cfg["problem"], cfg["architecture"], cfg["method"]["label"], cfg["seed"]):
            raise LitmusError(f"trial {t['trial_id']} does not match cell {i} of the study's spec.yaml; the spec "
                              f"was changed after the study ran")
        p, a, m, _ = positions[i]
        if (p, a) == group:
            by_method.setdefault(m, []).append((t, cfg))
    out = []
    for m, method in enumerate(spec.methods):
        entries = by_method.get(m, [])
        usable = [(t, cfg) for t, cfg in entries if t["status"] in SELECTABLE and t["trial_id"] in scores]
        if not usable:
            statuses = ", ".join(sorted({t["status"] for t, _ in entries})) or "none ran"
            raise LitmusError(f"method {method['label']!r} has no completed trial with validation results "
                              f"({len(entries)} trials: {statuses}); fix the cause and resume the study with "
                              f"`litmus run SPEC --resume --retry-errored`")
        t, cfg = min(usable, key=lambda tc: (-scores[tc[0]["trial_id"]][0], tc[0]["trial_id"]))
        score, epoch, value = scores[t["trial_id"]]
        tuned = dict(cfg.get("tuned") or {})
        history = cfg.get("tuned_history") or []
        if history:  # PBT changed the trial's values as it ran: take those its best epoch ran with
            from study.search import apply_params

            tuned = dict(max((h for h in history if int(h[0]) <= epoch), key=lambda h: int(h[0]),
                             default=history[0])[1])
            cfg = {**apply_params(cells[cfg["cell"]], tuned), "tuned": tuned}
        base_train = dict(spec.method_train[m]) if m < len(getattr(spec, "method_train", [])) else {}
        train = {**base_train, **{k.split(".", 1)[1]: cfg["train"][k.split(".", 1)[1]]
                                  for k in tuned if k.startswith("train.")}}
        others = {k: v for k, v in tuned.items() if k.startswith(("problem.", "architecture."))}
        out.append(Choice(label=method["label"], method=copy.deepcopy(cfg["method"]), train=train, tuned=tuned,
                          score=score, value=value, epoch=epoch, trial_id=t["trial_id"], candidates=len(usable),
                          others=others))
    return out


# -- writing the follow-up ----------------------------------------------------------------------
def method_entry(choice: Choice) -> dict:
    """The spec entry of a chosen method: the short ``{name: ...}`` form when it reads back the same."""
    from study.weighting.method import normalize_method

    m = choice.method
    w, a = m.get("weighting"), m.get("aggregator")
    entry: dict | None = None
    if (w is None) != (a is None):
        part = w or a
        flat = {"name": part["name"], **{k: v for k, v in part.items() if k != "name"}, "label": choice.label}
        try:
            if normalize_method(flat) == {"label": choice.label, "weighting": w, "aggregator": a}:
                entry = flat
        except SpecError:
            entry = None
    if entry is None:
        entry = {**({"weighting": w} if w else {}), **({"aggregator": a} if a else {}), "label": choice.label}
    if choice.train:
        entry["train"] = dict(choice.train)
    return entry


def _fixed_sections(spec_raw: dict, spec, group: tuple[int, int], choices: list[Choice]) -> tuple[Any, Any]:
    p, a = group
    prob = spec_raw["problems"][p] if "problems" in spec_raw else spec_raw["problem"]
    arch = (spec_raw["architectures"][a] if "architectures" in spec_raw
            else spec_raw.get("architecture", "hps"))
    prob = copy.deepcopy(prob) if isinstance(prob, dict) else {"name": prob}
    arch = copy.deepcopy(arch) if isinstance(arch, dict) else {"name": arch}
    keys = sorted({k for c in choices for k in c.others})
    for key in keys:
        values = {json.dumps(c.others.get(key), sort_keys=True) for c in choices}
        if len(values) > 1:
            raise LitmusError(f"{key} was tuned and the methods' best trials disagree on it "
                              f"({', '.join(sorted(values))}); a follow-up grid has one {key.split('.')[0]} "
                              f"entry for all methods: fix {key} in the tuned spec or write the follow-up by hand")
        section, _, pname = key.partition(".")
        (prob if section == "problem" else arch)[pname] = choices[0].others[key]
    simple = lambda d: d["name"] if set(d) == {"name"} else d  # noqa: E731
    return simple(prob), simple(arch)


def _dump(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def followup_spec(spec_raw: dict, spec, study: str, group: tuple[int, int], choices: list[Choice], seeds: int,
                  name: str) -> dict:
    problem, architecture = _fixed_sections(spec_raw, spec, group, choices)
    out: dict[str, Any] = {
        "name": name,
        "description": f"Seed sweep of each method's best setting in tuned study {study} (litmus best)",
        "problem": problem,
        "architecture": architecture,
        "methods": [method_entry(c) for c in choices],
        "seeds": list(range(seeds)),
    }
    for key in ("train", "resources", "run"):
        if spec_raw.get(key):
            out[key] = copy.deepcopy(spec_raw[key])
    return out


def render(raw: dict, header: list[str], comments: list[str]) -> str:
    import yaml

    lines = [f"# {h}" for h in header]
    for key, value in raw.items():
        if key == "methods":
            lines.append("methods:")
            for entry, comment in zip(value, comments):
                lines.append(f"  - {_dump(entry)}   # {comment}")
        elif isinstance(value, dict):
            lines.append(f"{key}:")
            body = yaml.safe_dump(value, default_flow_style=False, sort_keys=False, width=10**6, allow_unicode=True)
            lines += ["  " + ln for ln in body.rstrip("\n").splitlines()]
        else:
            lines.append(f"{key}: {_dump(value)}")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def best(study_dir: str, *, seeds: int = 3, name: str | None = None, problem: str | None = None,
         architecture: str | None = None) -> Best:
    """Read a finished tuned study and build the follow-up spec (nothing is written)."""
    from study.spec import parse_spec

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise LitmusError(f"--seeds is the number of seeds of the follow-up (0..N-1), at least 1; got {seeds!r}")
    (fs, root), study, meta, spec_raw = _read_study(study_dir)
    try:
        spec = parse_spec(copy.deepcopy(spec_raw), default_name=study, check_data=False)
    except SpecError as exc:
        raise LitmusError(f"the spec of study {study!r} no longer loads ({exc}); fix {study_dir}/spec.yaml "
                          f"or run litmus best with the version of mtl-litmus that ran it") from None
    trials = _read_trials(fs, root)
    if not trials:
        raise LitmusError(f"study {study!r} has no trial status rows in {study_dir}/trials; nothing ran")
    running = [t["trial_id"] for t in trials if t["status"] == "running"]
    if running:
        raise LitmusError(f"study {study!r} is not finished: {len(running)} trials are still marked running "
                          f"(e.g. {running[0]}); resume it with `litmus run SPEC --resume`, then run litmus best")
    for t in trials:
        t["config"] = json.loads(t["config"] or "{}")
    metric = spec.tune["metric"]
    warnings = []
    if metric == "val_score" and spec.tune["mode"] == "min":
        warnings.append("tune.mode is min but val_score is higher-is-better; choosing the highest val_score")
    selectable = {t["trial_id"]: t["config"] for t in trials if t["status"] in SELECTABLE}
    split = "val" if metric == "val_score" else metric.split("/")[0]
    rows = _read_rows(fs, root, split, list(selectable))
    if metric != "val_score" and not rows.empty:
        _, task, mname = metric.split("/")
        hib = rows.loc[(rows["task"].astype(str) == task).to_numpy() & (rows["metric"].astype(str) == mname).to_numpy(),
                       "higher_is_better"]
        if len(hib) and bool(hib.iloc[0]) != (spec.tune["mode"] == "max"):
            warnings.append(f"tune.mode is {spec.tune['mode']} but {metric} is "
                            f"{'higher' if bool(hib.iloc[0]) else 'lower'}-is-better; choosing by its direction")
    scores = trial_scores(rows, selectable, metric)
    group = _select_group(spec, _cell_positions(spec), problem, architecture)
    choices = choose(spec, trials, scores, group)

    out_name = name or f"{study}_best"
    raw = followup_spec(spec_raw, spec, study, group, choices, seeds, out_name)
    comments = []
    for c in choices:
        tuned = ", ".join(f"{k}={_fmt(v)}" for k, v in c.tuned.items())
        comments.append(f"{metric} {c.value:.4f} at epoch {c.epoch}, trial {c.trial_id}, best of {c.candidates}"
                        + (f"; tuned {tuned}" if tuned else ""))
    header = [
        f"Written by `litmus best` on {time.strftime('%Y-%m-%d %H:%M')} from the tuned study {study!r}",
        f"(spec hash {meta.get('spec_hash', '?')}): each method at the setting of its best trial, the highest",
        f"{metric} at the trial's best epoch among its completed or early-stopped trials; labels as in the",
        "tuned study. A method's own train: entry (its tuned learning rate...) overrides the shared train.",
        f"Run it: litmus run <this file>; then: litmus analyze STORAGE/{out_name}",
    ]
    text = render(raw, header, comments)
    check = parse_spec(_yaml_load(text), default_name=out_name, check_data=False)
    for c, cfg in zip(choices, [check.trial_configs()[i * seeds] for i in range(len(choices))]):
        if cfg["method"] != c.method:  # the written entry must read back as the chosen method
            raise RuntimeError(f"follow-up entry of {c.label} reads back as {cfg['method']}, not {c.method}")
    return Best(study=study, metric=metric, choices=choices, raw=raw, text=text, warnings=warnings)


def _yaml_load(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def run(study_dir: str, *, seeds: int, out: str | None, name: str | None = None, problem: str | None = None,
        architecture: str | None = None, force: bool = False) -> int:
    """The ``litmus best`` command: choose, print the choices, write the follow-up spec."""
    result = best(study_dir, seeds=seeds, name=name, problem=problem, architecture=architecture)
    out_path = Path(out or f"{result.raw['name']}.yaml")
    if out_path.exists() and not force:
        raise LitmusError(f"{out_path} already exists; pass --force to replace it or --out NEW.yaml")
    for w in result.warnings:
        print(f"litmus: warning: {w}")
    print(f"best settings in tuned study {result.study!r} ({result.metric} at each trial's best epoch):")
    width = max(len(c.label) for c in result.choices)
    for c in result.choices:
        tuned = ", ".join(f"{k}={_fmt(v)}" for k, v in c.tuned.items()) or "(nothing tuned)"
        print(f"  {c.label:<{width}}  {result.metric} {c.value:.4f} (epoch {c.epoch}, best of {c.candidates})  {tuned}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(result.text)
    n = len(result.choices)
    print(f"wrote {out_path}: {n} methods x {seeds} seeds = {n * seeds} trials; next: litmus run {out_path}")
    return 0


__all__ = ["Best", "Choice", "best", "choose", "followup_spec", "method_entry", "run", "trial_scores"]
