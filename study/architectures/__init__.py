"""Architecture registry. Every module in this package registers its architectures on import."""

from __future__ import annotations

import importlib
import pkgutil

from study.architectures.base import MTLArchitecture
from study.registry import Registry

ARCHITECTURES: Registry[MTLArchitecture] = Registry("architecture")


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()


def build_model(problem, architecture: str, params: dict | None = None, key: str = "architecture"):
    """Build the MTL model of ``problem`` with the named architecture and its hyperparameters."""
    from study.registry import instantiate

    cls = ARCHITECTURES.get(architecture, key)
    decoders = {t: problem.build_decoder(t) for t in problem.tasks}
    return instantiate(cls, params, key, problem.build_encoder, decoders, tuple(problem.tasks), problem.multi_input)


__all__ = ["ARCHITECTURES", "MTLArchitecture", "build_model"]
