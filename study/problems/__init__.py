"""Problem registry. Every module in this package registers its problems on import."""

from __future__ import annotations

from study.problems.base import Metric, Problem
from study.registry import Registry, discover

PROBLEMS: Registry[Problem] = Registry("problem")


discover(__name__, __path__)

__all__ = ["PROBLEMS", "Metric", "Problem"]
