"""Weighting methods: loss weightings and gradient aggregators, one registry each.

Every module in this package registers its classes on import.
"""

from __future__ import annotations


from study.registry import Registry, discover
from study.weighting.base import GradAggregator, LossWeighting

WEIGHTINGS: Registry[LossWeighting] = Registry("loss weighting")
AGGREGATORS: Registry[GradAggregator] = Registry("gradient method")

_SKIP = {"base", "distributions", "method", "step"}


discover(__name__, __path__, _SKIP)

__all__ = ["AGGREGATORS", "WEIGHTINGS", "GradAggregator", "LossWeighting"]
