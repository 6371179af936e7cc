"""Study specs: YAML -> a validated :class:`StudySpec`, checked before Ray starts.

Schema (see ``search_spaces/README.md`` for the full reference)::

    name: demo                         # study name (default: the file's stem)
    description: one line
    problem: multidigits               # a name or {name: ..., params...}; `problems: [...]` for a grid
    architecture: hps                  # a name or {name: ..., hyperparameters...}; `architectures: [...]`
    methods: [ew, rlw, {name: rlw, distribution: dirichlet, alpha: 1.0}, uw]
    seeds: [0, 1, 2]                   # or an integer n, meaning seeds 0..n-1
    train: {epochs: 5, batch_size: 128, optimizer: adam, lr: 1.0e-3}   # missing keys: the problem's defaults
    resources: {cpu: 1, gpu: 0}        # per trial; missing: the problem's defaults
    run: {max_failures: 1, max_concurrent: null}

Every error is a one-line :class:`~study.errors.SpecError` naming the key and the valid choices.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from study.errors import SpecError
from study.problems import PROBLEMS
from study.registry import instantiate

TOP_KEYS = {
    "name", "description", "problem", "problems", "architecture", "architectures", "methods", "seeds",
    "train", "resources", "run", "tune", "scheduler",
}
TRAIN_KEYS = {
    "optimizer", "lr", "weight_decay", "batch_size", "eval_batch_size", "epochs", "scheduler", "device",
    "nan_check_every", "grad_clip", "amp", "channels_last",
}
RESOURCE_KEYS = {"cpu", "gpu", "memory_gb"}
RUN_KEYS = {"max_failures", "max_concurrent", "fail_fast", "checkpoint_every", "reuse_actors"}


@dataclass
class StudySpec:
    name: str
    description: str
    problems: list[dict]
    architectures: list[dict]
    methods: list[dict]
    seeds: list[int]
    train: dict
    resources: dict
    run: dict
    raw: dict = field(repr=False)
    source: str | None = None
    tune: dict | None = None
    scheduler: dict | None = None
    method_train: list[dict] = field(default_factory=list)  # per-method `train` overrides, by method index

    @property
    def spec_hash(self) -> str:
        """Hash of everything that defines the study's trials (not its name or description)."""
        payload = {k: v for k, v in self.raw.items() if k not in ("name", "description")}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def trial_configs(self) -> list[dict]:
        """The grid: problem x architecture x method x seed, as full trial configs."""
        out = []
        for prob in self.problems:
            pparams = {k: v for k, v in prob.items() if k != "name"}
            train = {**PROBLEMS.get(prob["name"]).defaults, **self.train}
            for arch in self.architectures:
                aparams = {k: v for k, v in arch.items() if k != "name"}
                for j, method in enumerate(self.methods):
                    mtrain = self.method_train[j] if j < len(self.method_train) else {}
                    for seed in self.seeds:
                        out.append({
                            "study": self.name,
                            "spec_hash": self.spec_hash,
                            "problem": prob["name"],
                            "problem_params": copy.deepcopy(pparams),
                            "architecture": arch["name"],
                            "architecture_params": copy.deepcopy(aparams),
                            "method": copy.deepcopy(method),
                            "seed": seed,
                            "train": copy.deepcopy({**train, **mtrain}),
                        })
        return out

    def trial_resources(self, problem: str) -> dict:
        res = {**PROBLEMS.get(problem).resources, **self.resources}
        return res


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with the safe loader; syntax errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(None, f"spec file {str(p)!r} does not exist; pass the path of a YAML study spec "
                              f"(e.g. search_spaces/demo.yaml)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SpecError(None, f"{p}{line}: YAML syntax error: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise SpecError(None, f"{p}: YAML error: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(None, f"{p}: a study spec is a YAML mapping (key: value), got {type(data).__name__}")
    return data


def load_spec(path: str | Path, *, name: str | None = None, check_data: bool = True) -> StudySpec:
    raw = read_yaml(path)
    spec = parse_spec(raw, default_name=Path(path).stem, check_data=check_data)
    spec.source = str(path)
    if name:
        spec.name = _check_name(name, "--name")
    return spec


def _check_name(name: Any, key: str) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ \t\n") or name.startswith("."):
        raise SpecError(key, f"a study name is a non-empty word without slashes or spaces, got {name!r}")
    return name


def _named_list(raw: dict, single: str, plural: str, default: str | None) -> list[dict]:
    if single in raw and plural in raw:
        raise SpecError(plural, f"give either {single!r} or {plural!r}, not both")
    if plural in raw:
        items = raw[plural]
        key = plural
        if not isinstance(items, list):
            raise SpecError(plural, f"expected a list, got {type(items).__name__}")
        if not items:
            raise SpecError(plural, "the grid is empty; list at least one entry")
    elif single in raw:
        items, key = [raw[single]], single
    elif default is not None:
        items, key = [default], single
    else:
        raise SpecError(single, f"missing; every spec names a {single}")
    out = []
    for i, item in enumerate(items):
        k = f"{key}[{i}]" if key == plural else key
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item or not isinstance(item["name"], str):
            raise SpecError(k, f"expected a name or a mapping with 'name', got {item!r}")
        out.append(dict(item))
    return out


def _number(section: dict, key: str, full: str, *, kind=float, low=None, low_inclusive=True, allow_none=False):
    if key not in section:
        return
    v = section[key]
    if v is None and allow_none:
        return
    if isinstance(v, str) and kind is float:
        try:
            float(v)
        except ValueError:
            pass
        else:  # PyYAML (YAML 1.1) reads 1e-3 as a string: a float needs a dot, as in 1.0e-3
            raise SpecError(full, f"YAML reads {v} as a string, not a number; write it with a decimal point, "
                                  f"e.g. {v.lower().replace('e', '.0e', 1) if '.' not in v else v}")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
        raise SpecError(full, f"expected {'an integer' if kind is int else 'a number'}, got {v!r}")
    if low is not None and (v < low or (v == low and not low_inclusive)):
        raise SpecError(full, f"must be {'>=' if low_inclusive else '>'} {low}, got {v!r}")


def parse_spec(raw: dict, *, default_name: str = "study", check_data: bool = True) -> StudySpec:
    from study.architectures import ARCHITECTURES
    from study.weighting.method import build_method, normalize_method

    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(TOP_KEYS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(unknown[0], f"unknown key{hint}; valid: {', '.join(sorted(TOP_KEYS))}")
    name = _check_name(raw.get("name", default_name), "name")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SpecError("description", f"expected a string, got {description!r}")

    # problems
    problems = _named_list(raw, "problem", "problems", None)
    problem_objs = []
    for i, prob in enumerate(problems):
        key = "problems" if "problems" in raw else "problem"
        key = f"{key}[{i}]" if "problems" in raw else key
        cls = PROBLEMS.get(prob["name"], f"{key}.name")
        prob["name"] = cls.name
        obj = instantiate(cls, {k: v for k, v in prob.items() if k != "name"}, key)
        problem_objs.append(obj)

    # architectures
    archs = _named_list(raw, "architecture", "architectures", "hps")
    for i, arch in enumerate(archs):
        key = f"architectures[{i}]" if "architectures" in raw else "architecture"
        cls = ARCHITECTURES.get(arch["name"], f"{key}.name")
        arch["name"] = cls.name
        hp = cls.hyperparameters() if hasattr(cls, "hyperparameters") else {}
        bad = sorted(set(arch) - {"name"} - set(hp))
        if bad:
            raise SpecError(f"{key}.{bad[0]}", f"unknown hyperparameter of {cls.name!r}; valid: "
                                               f"{', '.join(sorted(hp)) or 'none'}")
        for prob in problem_objs:
            reason = _applicable(cls, prob)
            if reason:
                raise SpecError(key, f"architecture {cls.name!r} does not apply to problem {prob.name!r}: {reason}")

    # methods
    methods_raw = raw.get("methods")
    if methods_raw is None:
        raise SpecError("methods", "missing; list the weighting methods to compare, e.g. [ew, rlw]")
    if not isinstance(methods_raw, list):
        raise SpecError("methods", f"expected a list, got {type(methods_raw).__name__}")
    if not methods_raw:
        raise SpecError("methods", "the grid is empty; list at least one method, e.g. [ew, rlw]")
    # a method entry may carry `train: {...}`: training settings for that method only (e.g. its tuned lr)
    method_train: list[dict] = []
    for i, m in enumerate(methods_raw):
        mtrain = m.get("train") if isinstance(m, dict) else None
        if mtrain is not None:
            check_train(mtrain, f"methods[{i}].train")
        method_train.append(dict(mtrain or {}))
    methods = [normalize_method({k: v for k, v in m.items() if k != "train"} if isinstance(m, dict) else m,
                                f"methods[{i}]") for i, m in enumerate(methods_raw)]
    labels: dict[str, int] = {}
    for i, m in enumerate(methods):
        if m["label"].lower() in labels:
            raise SpecError(f"methods[{i}]", f"duplicate method {m['label']!r} (same as methods["
                                             f"{labels[m['label'].lower()]}]); give one a distinct 'label'")
        labels[m["label"].lower()] = i
        for prob in problem_objs:
            build_method(m, len(prob.tasks), f"methods[{i}]")
            _check_method_architecture(m, archs, f"methods[{i}]", prob)

    # seeds
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, bool):
        raise SpecError("seeds", f"expected a list of integers or a count, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise SpecError("seeds", f"a seed count must be >= 1, got {seeds}")
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds:
        raise SpecError("seeds", f"expected a non-empty list of integers or a count, got {seeds!r}")
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise SpecError(f"seeds[{i}]", f"seeds are non-negative integers, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise SpecError("seeds", f"duplicate seeds in {seeds}")

    # train
    train = raw.get("train", {}) or {}
    check_train(train, "train")

    # resources
    resources = raw.get("resources", {}) or {}
    if not isinstance(resources, dict):
        raise SpecError("resources", f"expected a mapping, got {type(resources).__name__}")
    bad = sorted(set(resources) - RESOURCE_KEYS)
    if bad:
        raise SpecError(f"resources.{bad[0]}", f"unknown resource; valid: {', '.join(sorted(RESOURCE_KEYS))}")
    _number(resources, "cpu", "resources.cpu", low=0, low_inclusive=False)
    _number(resources, "gpu", "resources.gpu", low=0)
    _number(resources, "memory_gb", "resources.memory_gb", low=0, low_inclusive=False)
    gpu = resources.get("gpu", 0)
    if gpu and gpu > 1 and gpu != int(gpu):
        raise SpecError("resources.gpu", f"more than one GPU must be a whole number, got {gpu}")

    run = raw.get("run", {}) or {}
    if not isinstance(run, dict):
        raise SpecError("run", f"expected a mapping, got {type(run).__name__}")
    bad = sorted(set(run) - RUN_KEYS)
    if bad:
        raise SpecError(f"run.{bad[0]}", f"unknown run setting; valid: {', '.join(sorted(RUN_KEYS))}")
    _number(run, "max_failures", "run.max_failures", kind=int, low=0)
    _number(run, "max_concurrent", "run.max_concurrent", kind=int, low=1, allow_none=True)
    if "reuse_actors" in run and not isinstance(run["reuse_actors"], bool):
        raise SpecError("run.reuse_actors", f"expected true or false, got {run['reuse_actors']!r}")

    for i, t in [(None, train), *enumerate(method_train)]:
        device = str(t.get("device", "auto"))
        key = "train.device" if i is None else f"methods[{i}].train.device"
        for prob in problem_objs:
            if device.startswith("cuda") and not {**prob.resources, **resources}.get("gpu", 0):
                raise SpecError(key, f"{device} needs a GPU for each trial, but resources.gpu is 0 for problem "
                                     f"{prob.name!r}: set resources.gpu (e.g. 1, or 0.5 to share a GPU) or "
                                     f"device: auto")

    spec = StudySpec(
        name=name, description=description, problems=problems, architectures=archs, methods=methods,
        seeds=seeds, train=dict(train), resources=dict(resources), run=dict(run), raw=copy.deepcopy(raw),
        method_train=method_train,
    )
    from study.search import parse_scheduler, parse_tune

    spec.tune = parse_tune(raw.get("tune"), spec.trial_configs())
    spec.scheduler = parse_scheduler(raw.get("scheduler"), spec.tune)
    if check_data:  # last: the configuration is right, now is the data where it says?
        for obj in problem_objs:
            obj.check()
    return spec


def check_train(train: Any, key: str = "train") -> None:
    """Validate a ``train`` section (also used on tuned values)."""
    if not isinstance(train, dict):
        raise SpecError(key, f"expected a mapping, got {type(train).__name__}")
    bad = sorted(set(train) - TRAIN_KEYS)
    if bad:
        raise SpecError(f"{key}.{bad[0]}", f"unknown training setting; valid: {', '.join(sorted(TRAIN_KEYS))}")
    _number(train, "epochs", f"{key}.epochs", kind=int, low=1)
    _number(train, "batch_size", f"{key}.batch_size", kind=int, low=1)
    _number(train, "eval_batch_size", f"{key}.eval_batch_size", kind=int, low=1)
    _number(train, "lr", f"{key}.lr", low=0, low_inclusive=False)
    _number(train, "weight_decay", f"{key}.weight_decay", low=0)
    _number(train, "nan_check_every", f"{key}.nan_check_every", kind=int, low=1)
    _number(train, "grad_clip", f"{key}.grad_clip", low=0, low_inclusive=False, allow_none=True)
    if "optimizer" in train and str(train["optimizer"]).lower() not in ("adam", "adamw", "sgd"):
        raise SpecError(f"{key}.optimizer", f"unknown optimizer {train['optimizer']!r}; valid: adam, adamw, sgd")
    if "device" in train and not (train["device"] in ("auto", "cpu") or str(train["device"]).startswith("cuda")):
        raise SpecError(f"{key}.device", f"expected auto, cpu or cuda[:N], got {train['device']!r}")
    if train.get("amp") == "fp16":
        raise SpecError(f"{key}.amp", "fp16 autocast needs loss scaling, which would change the losses and "
                                      "gradients that weighting methods see; use amp: bf16")
    if "amp" in train and train["amp"] not in (True, False, None, "bf16"):
        raise SpecError(f"{key}.amp", f"expected true, false or bf16, got {train['amp']!r}")
    if "channels_last" in train and train["channels_last"] not in (True, False, None):
        raise SpecError(f"{key}.channels_last", f"expected true/false, got {train['channels_last']!r}")
    sched = train.get("scheduler")
    if sched is not None:
        if not isinstance(sched, dict) or str(sched.get("name", "step")).lower() not in ("step", "cosine"):
            raise SpecError(f"{key}.scheduler", f"expected {{name: step|cosine, ...}}, got {sched!r}")


def _applicable(arch_cls, problem) -> str | None:
    check = getattr(arch_cls, "applicable", None)
    if callable(check):
        return check(problem)
    kinds = getattr(arch_cls, "encoder_kinds", None)
    if kinds is not None and getattr(problem, "encoder_kind", "cnn") not in kinds:
        return f"it needs an encoder of kind {', '.join(kinds)}, the problem's is {problem.encoder_kind!r}"
    return None


def _check_method_architecture(method: dict, archs: list[dict], key: str, problem=None) -> None:
    from study.architectures import ARCHITECTURES
    from study.weighting.method import build_method  # noqa: F401

    agg = method.get("aggregator")
    if not agg:
        return
    from study.weighting import AGGREGATORS

    cls = AGGREGATORS.get(agg["name"], key)
    level = agg.get("level") or cls.levels[0]
    if level == "representation":
        if problem is not None and getattr(problem, "multi_input", False):
            fix = "use level: parameters" if "parameters" in cls.levels else "leave it out"
            raise SpecError(key, f"{agg['name']} at level 'representation' needs one input batch shared by all "
                                 f"tasks; problem {problem.name!r} is multi-input (each task its own batch): {fix}")
        for arch in archs:
            acls = ARCHITECTURES.get(arch["name"])
            if not getattr(acls, "has_shared_representation", False):
                raise SpecError(key, f"{agg['name']} at level 'representation' needs an architecture with one "
                                     f"shared representation; {acls.name!r} has none (use level: parameters)")
