"""The frame of the mixture-of-experts architectures (MMoE, CGC, PLE, DSelect-k).

Experts are copies of the problem's encoder (built by its factory, as in LibMTL). Gates are task-specific
and read the *input*: a linear layer on the flattened sample (``prod(input_shape)`` features) followed by a
softmax (or DSelect-k's selector), as in MMoE's gate ``g^k(x) = softmax(W_gk x)``. This needs the
problem's ``input_shape`` and inputs that are float tensors (images, feature vectors), hence the encoder
kinds below; token ids (transformers) or graphs have no meaningful flattening.

Task ``t``'s representation is its gate's mixture of expert outputs, so the decoders read different
tensors computed with task-specific gate parameters: these architectures have no shared representation
(``has_shared_representation = False``) and representation-level gradient methods do not apply; use
parameter-level methods, whose shared parameters are the experts (and PLE's shared gates).

Multi-input problems: each task's batch goes through the experts and only that task's gate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

from torch import Tensor, nn

from study.architectures._common import require_input_shape
from study.architectures.base import Inputs, MTLArchitecture, Rep

GATED_KINDS = ("cnn", "resnet", "mlp")


class GatedArchitecture(MTLArchitecture):
    has_shared_representation: ClassVar[bool] = False
    encoder_kinds: ClassVar[tuple[str, ...] | None] = GATED_KINDS
    encoder_requirement: ClassVar[str] = ("gates on the flattened input sample, which needs image or "
                                          "feature-vector inputs")
    needs_input_shape: ClassVar[bool] = True

    def gate_features(self, encoder_factory: Callable[[], nn.Module], expert: nn.Module | None) -> int:
        shape = require_input_shape(encoder_factory, expert, self.name, "size its gates")
        self.input_shape = shape
        return math.prod(shape)

    def run(self, x: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        raise NotImplementedError

    def encode(self, x: Inputs) -> Rep:
        if isinstance(x, dict):
            return {t: self.run(xt, [t])[t] for t, xt in x.items()}
        return self.run(x, self.tasks)
