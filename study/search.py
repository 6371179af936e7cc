"""Tuned ranges (Optuna), schedulers (ASHA, HyperBand, PBT) and the cell-wise searcher.

Spec section (all optional)::

    tune:
      num_samples: 8                 # trials per grid cell: every method gets the same tuning budget
      metric: val_score              # a reported key; default val_score (mean of each task's main val metric)
      mode: max
      sampler: {name: tpe, seed: 0}  # tpe (default) | random
      points_to_evaluate:            # evaluated first, in every cell where their keys apply
        - {train.lr: 1.0e-3}
      space:
        train.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
        train.batch_size: {type: categorical, choices: [64, 128]}
        method.alpha: {type: float, low: 0.1, high: 10.0, log: true, when: {distribution: dirichlet}}
        method.c: {type: float, low: 0.1, high: 0.9, step: 0.1, when: {aggregator: cagrad}}
        architecture.num_experts: {type: int, low: 2, high: 8}     # both bounds included
    scheduler: {name: asha, grace_period: 1, reduction_factor: 2}  # or hyperband, pbt

Keys are ``section.parameter`` with section one of train, method, weighting, aggregator, architecture,
problem (``method.X`` goes to the loss weighting if it has X, else to the aggregator). ``when`` makes a
parameter conditional on the cell: keys method (label), weighting, aggregator, distribution,
architecture, problem; a value or a list of values. Integer ranges include both bounds (Optuna's
convention; Ray's ``randint`` excludes the upper one). A ``step`` must divide ``high - low``; on a log
range, ``low`` and ``high`` must be multiples of ``step`` and draws are rounded to the step.

Every cell (problem x architecture x method x seed) gets its own Optuna study with the same budget,
driven by one :class:`CellwiseSearcher`, so the Tuner runs cells side by side and restores all of
their state on ``--resume``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from study.errors import SpecError

SECTIONS = ("train", "method", "weighting", "aggregator", "architecture", "problem")
WHEN_KEYS = ("method", "weighting", "aggregator", "distribution", "architecture", "problem")
TUNE_KEYS = {"num_samples", "metric", "mode", "sampler", "points_to_evaluate", "space"}
SCHEDULERS = ("asha", "hyperband", "pbt")
# train.* settings PBT may change when a trial takes over another's checkpoint: the trainer rescales the
# restored optimizer's learning rate to a new lr (study/training.py) and reads batch_size and grad_clip
# every epoch. Other tuned train.* values (optimizer, weight_decay, ...) are drawn once per member and
# travel unchanged with its checkpoint.
PBT_MUTABLE = ("lr", "batch_size", "grad_clip")


@dataclass(frozen=True)
class Param:
    key: str                 # "train.lr"
    type: str                # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None
    when: tuple[tuple[str, tuple], ...] = ()

    def applies(self, cell: dict) -> bool:
        facts = cell_facts(cell)
        return all(str(facts.get(k)).lower() in {str(v).lower() for v in vals} for k, vals in self.when)

    def suggest(self, trial) -> Any:
        name = self.key
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.type == "int":
            if self.log and self.step and self.step != 1:
                v = trial.suggest_int(name, int(self.low), int(self.high), log=True)
                return int(min(max(round(v / self.step) * self.step, self.low), self.high))
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.log and self.step:
            v = trial.suggest_float(name, self.low, self.high, log=True)
            return float(min(max(round(v / self.step) * self.step, self.low), self.high))
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def clip(self, value: Any) -> Any:
        """``value`` moved into the range: clamped to ``low..high``, rounded to ``step`` (and to an int)."""
        if self.type == "categorical":
            return value if value in self.choices else self.choices[0]
        v = min(max(float(value), float(self.low)), float(self.high))
        if self.step:
            v = round(v / self.step) * self.step if self.log else self.low + round((v - self.low) / self.step) * self.step
            v = min(max(v, self.low), self.high)
        return int(round(v)) if self.type == "int" else float(v)


class _Resample:
    """A fresh draw from a numeric range (PBT's resample step); picklable, uses ``random`` as PBT does."""

    def __init__(self, param: Param):
        self.param = param

    def __call__(self) -> Any:
        import random

        p = self.param
        v = math.exp(random.uniform(math.log(p.low), math.log(p.high))) if p.log else random.uniform(p.low, p.high)
        return p.clip(v)


def cell_facts(cell: dict) -> dict:
    m = cell["method"]
    w = m.get("weighting") or {}
    a = m.get("aggregator") or {}
    return {"method": m["label"], "weighting": w.get("name"), "aggregator": a.get("name"),
            "distribution": w.get("distribution", "normal" if w.get("name") in ("rlw", "rgw") else None),
            "architecture": cell["architecture"], "problem": cell["problem"]}


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_param(key: str, raw: Any) -> Param:
    full = f"tune.space.{key}"
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name:
        raise SpecError(full, f"a tuned key is section.parameter with section one of {', '.join(SECTIONS)}")
    if not isinstance(raw, dict):
        raise SpecError(full, f"expected {{type: float|int|categorical, ...}}, got {raw!r}")
    allowed = {"type", "low", "high", "log", "step", "choices", "when"}
    bad = sorted(set(raw) - allowed)
    if bad:
        raise SpecError(f"{full}.{bad[0]}", f"unknown range setting; valid: {', '.join(sorted(allowed))}")
    kind = raw.get("type", "categorical" if "choices" in raw else "float")
    when = raw.get("when") or {}
    if not isinstance(when, dict):
        raise SpecError(f"{full}.when", f"expected a mapping like {{distribution: dirichlet}}, got {when!r}")
    for k in when:
        if k not in WHEN_KEYS:
            raise SpecError(f"{full}.when.{k}", f"unknown condition; valid: {', '.join(WHEN_KEYS)}")
    when_t = tuple((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in when.items())
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpecError(f"{full}.choices", "a categorical range needs a non-empty list of choices")
        return Param(key, "categorical", choices=tuple(choices), when=when_t)
    if kind not in ("float", "int"):
        raise SpecError(f"{full}.type", f"unknown range type {kind!r}; valid: float, int, categorical")
    low, high = raw.get("low"), raw.get("high")
    for n, v in (("low", low), ("high", high)):
        if not _is_num(v) or (kind == "int" and not isinstance(v, int)):
            raise SpecError(f"{full}.{n}", f"expected {'an integer' if kind == 'int' else 'a number'}, got {v!r}")
    if low >= high:
        raise SpecError(full, f"low must be < high, got low={low}, high={high}")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise SpecError(f"{full}.log", f"expected true or false, got {log!r}")
    if log and low <= 0:
        raise SpecError(f"{full}.low", f"a log range needs low > 0, got {low}")
    step = raw.get("step")
    if step is not None:
        if not _is_num(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
            raise SpecError(f"{full}.step", f"expected a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
        span = (high - low) / step
        if abs(span - round(span)) > 1e-9 * max(1.0, abs(span)):
            raise SpecError(f"{full}.step", f"step {step} does not divide the range {low}..{high}")
        if log:
            for n, v in (("low", low), ("high", high)):
                q = v / step
                if abs(q - round(q)) > 1e-9 * max(1.0, abs(q)):
                    raise SpecError(f"{full}.{n}", f"a quantised log range needs bounds that are multiples of "
                                                   f"step {step}, got {n}={v}")
    return Param(key, kind, low=low, high=high, log=log, step=step, when=when_t)


def parse_tune(raw: Any, cells: list[dict]) -> dict | None:
    """Validate the ``tune`` section against the grid cells; return a normalised dict or None."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError("tune", f"expected a mapping, got {type(raw).__name__}")
    bad = sorted(set(raw) - TUNE_KEYS)
    if bad:
        raise SpecError(f"tune.{bad[0]}", f"unknown tune setting; valid: {', '.join(sorted(TUNE_KEYS))}")
    n = raw.get("num_samples", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SpecError("tune.num_samples", f"expected a positive integer (trials per grid cell), got {n!r}")
    mode = raw.get("mode", "max")
    if mode not in ("min", "max"):
        raise SpecError("tune.mode", f"expected min or max, got {mode!r}")
    metric = raw.get("metric", "val_score")
    if not isinstance(metric, str) or not (metric == "val_score" or metric.count("/") == 2):
        raise SpecError("tune.metric", f"expected val_score or split/task/metric, got {metric!r}")
    sampler = raw.get("sampler", {"name": "tpe"})
    if isinstance(sampler, str):
        sampler = {"name": sampler}
    if not isinstance(sampler, dict) or sampler.get("name", "tpe") not in ("tpe", "random"):
        raise SpecError("tune.sampler", f"expected {{name: tpe|random, seed: N}}, got {sampler!r}")
    seed = sampler.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SpecError("tune.sampler.seed", f"expected an integer, got {seed!r}")
    space_raw = raw.get("space") or {}
    if not isinstance(space_raw, dict) or not space_raw:
        raise SpecError("tune.space", "expected a non-empty mapping of section.parameter: range")
    params = [parse_param(k, v) for k, v in space_raw.items()]
    for p in params:
        applicable = [c for c in cells if p.applies(c)]
        if not applicable:
            raise SpecError(f"tune.space.{p.key}.when", "matches no cell of the grid, so it would never be tuned")
        for c in applicable:
            for value in _probe_values(p):
                check_config(apply_params(c, {p.key: value}), f"tune.space.{p.key}")
    points = raw.get("points_to_evaluate") or []
    if not isinstance(points, list) or not all(isinstance(pt, dict) for pt in points):
        raise SpecError("tune.points_to_evaluate", "expected a list of mappings {section.parameter: value}")
    keys = {p.key for p in params}
    for i, pt in enumerate(points):
        for k in pt:
            if k not in keys:
                raise SpecError(f"tune.points_to_evaluate[{i}].{k}", f"not a tuned key; tuned: {', '.join(sorted(keys))}")
    return {"num_samples": n, "mode": mode, "metric": metric, "sampler": sampler.get("name", "tpe"), "seed": seed,
            "params": params, "points_to_evaluate": points}


def _probe_values(p: Param) -> list:
    if p.type == "categorical":
        return list(p.choices)
    if p.type == "int":
        return [int(p.low), int(p.high)]
    return [float(p.low), float(p.high)]


def apply_params(cell: dict, values: dict[str, Any]) -> dict:
    """A trial config: the cell with tuned values put in their sections."""
    cfg = copy.deepcopy(cell)
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section == "train":
            cfg["train"][name] = value
        elif section == "problem":
            cfg["problem_params"][name] = value
        elif section == "architecture":
            cfg["architecture_params"][name] = value
        else:
            m = cfg["method"]
            target = section
            if section == "method":
                target = "weighting" if m.get("weighting") and _accepts(m["weighting"], name) else "aggregator"
                if not m.get(target):
                    target = "weighting" if m.get("weighting") else "aggregator"
            if not m.get(target):
                raise SpecError(f"tune.space.{key}", f"method {m['label']!r} has no {target}")
            m[target][name] = value
    return cfg


def _accepts(part: dict, name: str) -> bool:
    import inspect

    from study.weighting import WEIGHTINGS
    from study.weighting.distributions import DISTRIBUTIONS

    try:
        cls = WEIGHTINGS.get(part["name"])
    except SpecError:
        return False
    sig = inspect.signature(cls.__init__).parameters
    if name in sig:
        return True
    if "distribution" in sig or any(p.kind is p.VAR_KEYWORD for p in sig.values()):
        dist = part.get("distribution", "normal")
        try:
            return name in inspect.signature(DISTRIBUTIONS.get(dist).__init__).parameters
        except SpecError:
            return False
    return False


def check_config(cfg: dict, key: str) -> None:
    """Validate a trial config's components (problem, architecture, method, train) without data."""
    from study.problems import PROBLEMS
    from study.registry import instantiate
    from study.weighting.method import build_method

    problem = instantiate(PROBLEMS.get(cfg["problem"], key), cfg["problem_params"], key)
    build_method(cfg["method"], len(problem.tasks), key)
    from study.spec import check_train

    check_train(cfg["train"], key)
    from study.architectures import ARCHITECTURES

    cls = ARCHITECTURES.get(cfg["architecture"], key)
    hp = cls.hyperparameters() if hasattr(cls, "hyperparameters") else {}
    bad = sorted(set(cfg["architecture_params"]) - set(hp))
    if bad:
        raise SpecError(key, f"unknown hyperparameter {bad[0]!r} of architecture {cls.name!r}; valid: "
                             f"{', '.join(sorted(hp)) or 'none'}")


# -- the searcher ------------------------------------------------------------------------------
class _CellSpace:
    """Define-by-run space of one cell: only the parameters whose ``when`` holds for it (picklable)."""

    def __init__(self, params: list[Param]):
        self.params = params

    def __call__(self, trial) -> dict:
        return {p.key: p.suggest(trial) for p in self.params}


def make_searcher(tune_cfg: dict, cells: list[dict]):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    class CellwiseSearcher(Searcher):
        """One OptunaSearch per grid cell, each with the same budget; suggestions go round the cells."""

        def __init__(self):
            super().__init__(metric=tune_cfg["metric"], mode=tune_cfg["mode"])
            self.cells = cells
            self.budget = tune_cfg["num_samples"]
            self.planned_epochs = [int(c["train"]["epochs"]) for c in cells]
            self.searchers = []
            for i, cell in enumerate(cells):
                params = [p for p in tune_cfg["params"] if p.applies(cell)]
                keys = {p.key for p in params}
                points = [pt for pt in tune_cfg["points_to_evaluate"] if set(pt) <= keys]
                self.searchers.append(OptunaSearch(
                    space=_CellSpace(params), metric=tune_cfg["metric"], mode=tune_cfg["mode"],
                    sampler=_sampler(tune_cfg["sampler"], tune_cfg["seed"] + i), points_to_evaluate=points,
                ))
            self.count = [0] * len(cells)
            self.trial_cell: dict[str, int] = {}

        def set_search_properties(self, metric, mode, config, **spec):
            return True

        def suggest(self, trial_id):
            open_cells = [i for i, c in enumerate(self.count) if c < self.budget]
            if not open_cells:
                return Searcher.FINISHED
            i = min(open_cells, key=lambda j: (self.count[j], j))
            values = self.searchers[i].suggest(trial_id)
            self.count[i] += 1
            self.trial_cell[trial_id] = i
            cfg = apply_params(self.cells[i], values)
            cfg["tuned"] = values
            cfg["cell"] = i
            return {"trial": cfg}

        def on_trial_result(self, trial_id, result):
            i = self.trial_cell.get(trial_id)
            if i is not None and self.metric in result:
                self.searchers[i].on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id, result=None, error=False):
            i = self.trial_cell.get(trial_id)
            if i is None:
                return
            s = self.searchers[i]
            early = (result is not None and not error and int(result.get("epoch", 0)) < self.planned_epochs[i])
            if early or (result is not None and self.metric not in result):
                # stopped by the scheduler or diverged: recorded in Optuna as PRUNED, never dropped
                from optuna.trial import TrialState

                ot_trial = s._ot_trials[trial_id]  # noqa: SLF001
                s._ot_study.tell(ot_trial, None, state=TrialState.PRUNED)  # noqa: SLF001
                s._completed_trials.add(trial_id)  # noqa: SLF001
            else:
                s.on_trial_complete(trial_id, result=result, error=error)

        def optuna_studies(self):
            return [s._ot_study for s in self.searchers]  # noqa: SLF001

        def save(self, checkpoint_path):
            import pickle

            import ray.cloudpickle

            with open(checkpoint_path, "wb") as f:
                ray.cloudpickle.dump({"count": self.count, "trial_cell": self.trial_cell,
                                      "searchers": [s.__dict__ for s in self.searchers]}, f)
            del pickle

        def restore(self, checkpoint_path):
            import ray.cloudpickle

            with open(checkpoint_path, "rb") as f:
                state = ray.cloudpickle.load(f)
            self.count = state["count"]
            self.trial_cell = state["trial_cell"]
            for s, d in zip(self.searchers, state["searchers"]):
                s.__dict__.update(d)

    return CellwiseSearcher()


def _sampler(name: str, seed: int):
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


# -- schedulers --------------------------------------------------------------------------------
def parse_scheduler(raw: Any, tune_cfg: dict | None) -> dict | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or raw.get("name") not in SCHEDULERS:
        raise SpecError("scheduler", f"expected {{name: {'|'.join(SCHEDULERS)}, ...}}, got {raw!r}")
    allowed = {"asha": {"name", "grace_period", "reduction_factor", "brackets"},
               "hyperband": {"name", "reduction_factor"},
               "pbt": {"name", "perturbation_interval", "quantile_fraction", "resample_probability"}}[raw["name"]]
    bad = sorted(set(raw) - allowed)
    if bad:
        raise SpecError(f"scheduler.{bad[0]}", f"unknown setting for {raw['name']}; valid: {', '.join(sorted(allowed))}")
    for k, v in raw.items():
        if k != "name" and (not _is_num(v) or v <= 0):
            raise SpecError(f"scheduler.{k}", f"expected a positive number, got {v!r}")
    if raw.get("reduction_factor", 2) <= 1:
        raise SpecError("scheduler.reduction_factor", f"must be > 1, got {raw['reduction_factor']}")
    if raw["name"] == "pbt":
        if not tune_cfg or not _pbt_params(tune_cfg):
            raise SpecError("scheduler", f"pbt mutates tuned hyperparameters: add tune.space with "
                                         f"{' or '.join('train.' + k for k in PBT_MUTABLE)} to perturb")
        if tune_cfg["num_samples"] < 2:
            raise SpecError("scheduler", "pbt needs a population: set tune.num_samples >= 2")
    return dict(raw)


def _pbt_params(tune_cfg: dict) -> list[Param]:
    """The tuned ranges PBT perturbs: ``train.lr``, ``train.batch_size``, ``train.grad_clip``."""
    return [p for p in tune_cfg["params"] if p.key.partition(".")[2] in PBT_MUTABLE and p.key.startswith("train.")]


def pbt_population(tune_cfg: dict, cells: list[dict]) -> list[dict]:
    """PBT's initial population: ``num_samples`` members per grid cell, drawn from the cell's tuned ranges.

    Draws use the same range semantics as the Optuna searcher (integer bounds included, steps, log
    scale), from an Optuna RandomSampler seeded with ``tune.sampler.seed + cell index``, so the
    population is the same on every run; ``points_to_evaluate`` that apply to a cell are its first
    members. Each member's config carries ``cell`` and ``tuned`` like a searcher suggestion.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = []
    for i, cell in enumerate(cells):
        params = [p for p in tune_cfg["params"] if p.applies(cell)]
        keys = {p.key for p in params}
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=tune_cfg["seed"] + i))
        for pt in [pt for pt in tune_cfg["points_to_evaluate"] if set(pt) <= keys]:
            study.enqueue_trial(pt)
        for _ in range(tune_cfg["num_samples"]):
            t = study.ask()
            values = {p.key: p.suggest(t) for p in params}
            study.tell(t, 0.0)
            cfg = apply_params(cell, values)
            cfg["tuned"] = values
            cfg["cell"] = i
            out.append(cfg)
    return out


def make_scheduler(sched: dict | None, epochs: int, metric: str, mode: str, tune_cfg: dict | None,
                   cells: list[dict] | None = None):
    if not sched:
        return None
    from ray.tune import schedulers as S

    name = sched["name"]
    if name == "asha":
        return S.ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode, max_t=epochs,
                               grace_period=int(sched.get("grace_period", 1)),
                               reduction_factor=float(sched.get("reduction_factor", 2)),
                               brackets=int(sched.get("brackets", 1)))
    if name == "hyperband":
        return S.HyperBandScheduler(time_attr="training_iteration", metric=metric, mode=mode, max_t=epochs,
                                    reduction_factor=float(sched.get("reduction_factor", 3)))
    return make_pbt(sched, metric, mode, tune_cfg, cells or [])


def _cell_mutations(params: list[Param]) -> dict:
    return {"trial": {"train": {p.key.partition(".")[2]: list(p.choices) if p.type == "categorical" else _Resample(p)
                                for p in params}}}


def next_sync(times: list[float], interval: float) -> float:
    """PBT's next synchronisation time for members at ``times`` (restored on ``--resume``): the first
    multiple of ``interval`` not below the furthest member, or one interval later if all are there."""
    nxt = max(math.ceil(max(times) / interval) * interval, interval)
    return nxt + interval if min(times) >= nxt else nxt


def make_pbt(sched: dict, metric: str, mode: str, tune_cfg: dict, cells: list[dict]):
    """Synchronous PBT with one population per grid cell.

    Ray's PBT ranks all trials of an experiment together and a member copies the *whole* config of the
    one it exploits; across cells that would turn an EW trial into a UW trial. Here a member only ranks
    against, and copies from, members of its own cell, and only that cell's tuned ``train.lr``,
    ``train.batch_size`` and ``train.grad_clip`` are perturbed (x0.8 / x1.2, or redrawn with
    ``resample_probability``; a categorical moves to a neighbouring choice), then put back into their
    ranges. Synchronous: members perturb together every ``perturbation_interval`` epochs, so a trial
    takes over a checkpoint of the same epoch and its result rows have no gap.
    """
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pbt import _explore

    mutable = _pbt_params(tune_cfg)
    per_cell = [[p for p in mutable if p.applies(c)] for c in cells]

    def cell_of(trial) -> Any:
        return trial.config.get("trial", {}).get("cell")

    def at_last_epoch(trial, state) -> bool:
        epochs = trial.config.get("trial", {}).get("train", {}).get("epochs")
        done = (state.last_result or {}).get("epoch", state.last_train_time)
        return isinstance(epochs, int) and isinstance(done, (int, float)) and done >= epochs

    class CellwisePBT(PopulationBasedTraining):
        def _quantiles(self):
            full = self._trial_state
            lower, upper = [], []
            try:
                for cell in {cell_of(t) for t in full}:
                    self._trial_state = {t: s for t, s in full.items() if cell_of(t) == cell}
                    lo, up = PopulationBasedTraining._quantiles(self)
                    lower += lo
                    upper += up
            finally:
                self._trial_state = full
            return lower, upper

        def on_trial_add(self, tune_controller, trial):
            super().on_trial_add(tune_controller, trial)
            # A trial restored by ``--resume`` (the scheduler itself starts afresh) continues its own
            # clock: without this, a member one epoch behind would be ranked against one already past the
            # sync point and could take over a checkpoint a whole interval ahead (a gap in its results).
            last = trial.last_result or {}
            t = last.get(self._time_attr)
            if isinstance(t, (int, float)) and t > 0:
                state = self._trial_state[trial]
                state.last_train_time = state.last_perturbation_time = t
                if self._metric in last and _is_num(last[self._metric]):
                    state.last_score = self._metric_op * last[self._metric]
                    state.last_result = last
            times = [s.last_train_time for tr, s in self._trial_state.items() if not tr.is_finished()]
            if times and max(times) > 0:
                self._next_perturbation_sync = next_sync(times, self._perturbation_interval)

        def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile):
            cell = cell_of(trial)
            # a member that reported its last epoch is done: taking over a checkpoint now would only
            # change the config it is recorded with, never what it trained with
            lower = [t for t in lower_quantile if cell_of(t) == cell and not at_last_epoch(t, self._trial_state[t])]
            out = super()._checkpoint_or_exploit(trial, tune_controller,
                                                 [t for t in upper_quantile if cell_of(t) == cell], lower)
            state = self._trial_state[trial]
            if trial in upper_quantile and state.last_checkpoint is None and trial.checkpoint is not None:
                # a restored member not yet started again has no actor to save: its last checkpoint is it
                state.last_checkpoint = trial.checkpoint
            return out

        def _get_new_config(self, trial, trial_to_clone):
            i = cell_of(trial_to_clone)
            params = per_cell[i] if isinstance(i, int) and i < len(per_cell) else []
            new_config, ops = _explore(trial_to_clone.config, _cell_mutations(params), self._resample_probability,
                                       self._perturbation_factors, None)
            cfg = new_config["trial"]
            for p in params:
                name = p.key.partition(".")[2]
                cfg["train"][name] = p.clip(cfg["train"][name])
                cfg.setdefault("tuned", {})[p.key] = cfg["train"][name]
            return new_config, ops

    return CellwisePBT(time_attr="training_iteration", metric=metric, mode=mode, synch=True,
                       perturbation_interval=int(sched.get("perturbation_interval", 1)),
                       quantile_fraction=float(sched.get("quantile_fraction", 0.25)),
                       resample_probability=float(sched.get("resample_probability", 0.25)),
                       hyperparam_mutations=_cell_mutations(mutable))
