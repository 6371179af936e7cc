"""Hard parameter sharing (Caruana, 1993): one shared encoder, one decoder per task."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from study.architectures import ARCHITECTURES
from study.architectures.base import Inputs, MTLArchitecture, Rep


@ARCHITECTURES.register("hps")
class HPS(MTLArchitecture):
    """Hard parameter sharing (Caruana, 1993): one shared encoder, ``y_t = decoder_t(encoder(x))``.

    Works with any encoder. The encoder output is the shared representation (one tensor; for multi-input
    problems one tensor per task, each from the same shared encoder); all encoder parameters are shared.
    """

    def __init__(self, encoder_factory: Callable[[], nn.Module], decoders: dict[str, nn.Module],
                 tasks: tuple[str, ...], multi_input: bool):
        super().__init__(encoder_factory, decoders, tasks, multi_input)
        self.encoder = encoder_factory()

    def encode(self, x: Inputs) -> Rep:
        if isinstance(x, dict):
            return {t: self.encoder(xt) for t, xt in x.items()}
        return self.encoder(x)
