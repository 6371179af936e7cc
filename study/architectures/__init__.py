"""Architecture registry. Every module in this package registers its architectures on import.

HPS works with any encoder. Cross-stitch, NDDR-CNN, LTB, MTAN and PLE work between the stages of a
*staged encoder* (``encoder_kind`` ``cnn`` or ``resnet``: an encoder with ``stages``); MMoE, CGC and
DSelect-k gate on the flattened input (kinds ``cnn``, ``resnet``, ``mlp``) and, like MTAN and PLE, need
the problem's ``input_shape``. ``ARCHITECTURES.get(name).applicable(problem)`` says why one does not apply.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from study.architectures.base import EncoderFactory, MTLArchitecture
from study.registry import Registry, discover

ARCHITECTURES: Registry[MTLArchitecture] = Registry("architecture")


discover(__name__, __path__)


def encoder_factory(problem) -> EncoderFactory:
    """The problem's encoder factory with its encoder kind and per-sample input shape attached."""
    return EncoderFactory(problem.build_encoder, kind=getattr(problem, "encoder_kind", None),
                          input_shape=getattr(problem, "input_shape", None))


def build_model(problem, architecture: str, params: dict | None = None, key: str = "architecture"):
    """Build the MTL model of ``problem`` with the named architecture and its hyperparameters.

    Raises :class:`~study.errors.SpecError` (one line, naming ``key``) when the architecture does not
    apply to the problem or a hyperparameter is invalid.
    """
    from study.errors import SpecError
    from study.registry import instantiate

    cls = ARCHITECTURES.get(architecture, key)
    check = getattr(cls, "applicable", None)
    reason = check(problem) if callable(check) else None
    if reason:
        raise SpecError(key, f"architecture {getattr(cls, 'name', cls.__name__)!r} does not apply to problem "
                             f"{getattr(problem, 'name', type(problem).__name__)!r}: {reason}")
    decoders = {t: problem.build_decoder(t) for t in problem.tasks}
    return instantiate(cls, params, key, encoder_factory(problem), decoders, tuple(problem.tasks),
                       problem.multi_input)


def describe_architectures() -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, first line of the docstring, {hyperparameter: default})`` of every architecture, by name."""
    out = []
    for name in ARCHITECTURES.names():
        cls = ARCHITECTURES.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        out.append((name, doc[0] if doc else "", cls.hyperparameters()))
    return out


__all__ = ["ARCHITECTURES", "EncoderFactory", "MTLArchitecture", "build_model", "describe_architectures",
           "encoder_factory"]
