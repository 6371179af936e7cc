"""Problem registry. Every module in this package registers its problems on import."""

from __future__ import annotations

import importlib
import pkgutil

from study.problems.base import Metric, Problem
from study.registry import Registry

PROBLEMS: Registry[Problem] = Registry("problem")


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()

__all__ = ["PROBLEMS", "Metric", "Problem"]
