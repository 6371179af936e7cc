"""A *method* of a study: an optional loss weighting, an optional gradient aggregator, and a label.

Spec forms (YAML):

* ``ew`` / ``rlw`` / ``cagrad`` - a registered name with default hyperparameters;
* ``{name: rlw, distribution: dirichlet, alpha: 0.5}`` - a name plus its hyperparameters;
* ``{weighting: {name: rlw}, aggregator: {name: cagrad, c: 0.4}}`` - a combination (RLW + CAGrad);
* any of these with ``label: "My name"`` to set the name shown in reports;
* a preset name standing for a combination: ``mgda_ub`` (MGDA at the representation), ``imtl`` (the
  paper's hybrid IMTL: IMTL-L + IMTL-G at the representation); a preset's extra keys go to its
  aggregator.

Every hyperparameter a method's constructor accepts is a key of its entry, hence searchable from YAML
(e.g. ``{name: cagrad, c: 0.4}``, ``{name: rgw, distribution: dirichlet, alpha: 0.5, level: representation}``).

:func:`normalize_method` turns any form into the canonical dict stored in trial configs and results.
"""

from __future__ import annotations

import json
from typing import Any

from study.errors import SpecError
from study.registry import instantiate
from study.weighting import AGGREGATORS, WEIGHTINGS

#: names that stand for a combination; extra keys of the entry go to the aggregator
PRESETS: dict[str, dict] = {
    "mgda_ub": {"label": "MGDA-UB", "aggregator": {"name": "mgda", "level": "representation"}},
    "imtl": {"label": "IMTL", "weighting": {"name": "imtl_l"},
             "aggregator": {"name": "imtl_g", "level": "representation"}},
}


def _split_name(entry: dict, key: str) -> tuple[str, dict]:
    if "name" not in entry:
        raise SpecError(key, "a method entry needs a 'name' (e.g. {name: rlw, distribution: normal})")
    params = {k: v for k, v in entry.items() if k != "name"}
    return entry["name"], params


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def _part_label(part: dict | None) -> str:
    if not part:
        return ""
    name = part["name"]
    base = name.split(":")[-1] if ":" in name else name.upper()
    params = {k: v for k, v in part.items() if k != "name"}
    dist = params.pop("distribution", None)
    if dist:
        base += f"-{dist}"
    if params:
        base += "(" + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items())) + ")"
    return base


def normalize_method(entry: Any, key: str = "method") -> dict:
    """Canonical ``{"label", "weighting": {name, ...} | None, "aggregator": {name, ...} | None}``."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise SpecError(key, f"a method is a name or a mapping, got {type(entry).__name__} {entry!r}")
    entry = dict(entry)
    label = entry.pop("label", None)
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise SpecError(f"{key}.label", f"must be a non-empty string, got {label!r}")
    weighting: dict | None = None
    aggregator: dict | None = None
    if "weighting" in entry or "aggregator" in entry:
        extra = set(entry) - {"weighting", "aggregator"}
        if extra:
            raise SpecError(key, f"unexpected key {sorted(extra)[0]!r} beside weighting/aggregator")
        for part in ("weighting", "aggregator"):
            val = entry.get(part)
            if val is None:
                continue
            if isinstance(val, str):
                val = {"name": val}
            if not isinstance(val, dict):
                raise SpecError(f"{key}.{part}", f"expected a name or a mapping, got {val!r}")
            name, params = _split_name(val, f"{key}.{part}")
            registry = WEIGHTINGS if part == "weighting" else AGGREGATORS
            registry.get(name, f"{key}.{part}")
            if part == "weighting":
                weighting = {"name": name.lower() if ":" not in name else name, **params}
            else:
                aggregator = {"name": name.lower() if ":" not in name else name, **params}
    else:
        name, params = _split_name(entry, key)
        if isinstance(name, str) and name.lower() in PRESETS:
            preset = PRESETS[name.lower()]
            for k, fixed in preset["aggregator"].items():  # what defines the preset cannot be overridden
                if k != "name" and k in params and params[k] != fixed:
                    raise SpecError(key, f"{name.lower()} is {preset['aggregator']['name']} with {k}: {fixed}, "
                                         f"which contradicts {k}: {params[k]}; drop {k} or use "
                                         f"{{name: {preset['aggregator']['name']}, {k}: {params[k]}}}")
            weighting = dict(preset["weighting"]) if preset.get("weighting") else None
            aggregator = {**preset["aggregator"], **params}
            AGGREGATORS.get(aggregator["name"], key)
            if label is None:
                label = preset["label"] + ("(" + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))
                                           + ")" if params else "")
        elif ":" in name:  # a user class: its base class decides the kind
            kind = getattr(WEIGHTINGS.get(name, key), "kind", None)
            if kind not in ("loss", "gradient"):
                raise SpecError(key, f"{name!r} is neither a LossWeighting nor a GradAggregator subclass")
            if kind == "loss":
                weighting = {"name": name, **params}
            else:
                aggregator = {"name": name, **params}
        elif name.lower() in WEIGHTINGS:
            weighting = {"name": name.lower(), **params}
        elif name.lower() in AGGREGATORS:
            aggregator = {"name": name.lower(), **params}
        else:
            valid = sorted(set(WEIGHTINGS.names()) | set(AGGREGATORS.names()) | set(PRESETS))
            import difflib

            close = difflib.get_close_matches(str(name).lower(), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(key, f"unknown method {name!r}{hint}; valid: {', '.join(valid)}")
    if weighting is None and aggregator is None:
        raise SpecError(key, "a method needs a weighting or an aggregator")
    if label is None:
        parts = [_part_label(weighting), _part_label(aggregator)]
        label = "+".join(p for p in parts if p)
    return {"label": label, "weighting": weighting, "aggregator": aggregator}


def method_json(method: dict) -> str:
    """Canonical JSON used as the method's identity in results."""
    return json.dumps({"weighting": method.get("weighting"), "aggregator": method.get("aggregator")},
                      sort_keys=True)


def build_method(method: dict, num_tasks: int, key: str = "method"):
    """Instantiate ``(weighting, aggregator)`` for a canonical method dict; either may be None."""
    weighting = aggregator = None
    if method.get("weighting"):
        name, params = _split_name(method["weighting"], f"{key}.weighting")
        weighting = instantiate(WEIGHTINGS.get(name, key), params, key, num_tasks)
    if method.get("aggregator"):
        name, params = _split_name(method["aggregator"], f"{key}.aggregator")
        aggregator = instantiate(AGGREGATORS.get(name, key), params, key, num_tasks)
    from study.weighting.step import check_combination

    check_combination(weighting, aggregator, key)
    return weighting, aggregator
