"""Weighting methods: loss weightings and gradient aggregators, one registry each.

Every module in this package registers its classes on import.
"""

from __future__ import annotations

import importlib
import pkgutil

from study.registry import Registry
from study.weighting.base import GradAggregator, LossWeighting

WEIGHTINGS: Registry[LossWeighting] = Registry("loss weighting")
AGGREGATORS: Registry[GradAggregator] = Registry("gradient method")

_SKIP = {"base", "distributions", "method", "step"}


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SKIP and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()

__all__ = ["AGGREGATORS", "WEIGHTINGS", "GradAggregator", "LossWeighting"]
