"""Multi-gate Mixture-of-Experts (Ma, Zhao, Yi, Chen, Hong & Chi, KDD 2018)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from study.architectures import ARCHITECTURES
from study.architectures._common import check_int, flat, mixture
from study.architectures._gated import GatedArchitecture


@ARCHITECTURES.register("mmoe")
class MMoE(GatedArchitecture):
    """Multi-gate Mixture-of-Experts (Ma et al., KDD 2018): shared experts, one softmax gate per task.

    The MMoE equations: ``f^k(x) = sum_i g^k(x)_i f_i(x)`` with ``g^k(x) = softmax(W_gk x)``; the
    experts ``f_i`` are ``num_experts`` copies of the encoder and the gate reads the flattened input (see
    :mod:`study.architectures._gated`). The paper tunes the number of experts; LibMTL has no default; 4
    here. Task parameters: the task's gate and decoder.
    """

    def __init__(self, encoder_factory: Callable[[], nn.Module], decoders: dict[str, nn.Module],
                 tasks: tuple[str, ...], multi_input: bool, num_experts: int = 4):
        num_experts = check_int("num_experts", num_experts)
        super().__init__(encoder_factory, decoders, tasks, multi_input)
        self.experts = nn.ModuleList([encoder_factory() for _ in range(num_experts)])
        d = self.gate_features(encoder_factory, self.experts[0])
        self.gates = nn.ModuleDict({t: nn.Linear(d, num_experts) for t in self.tasks})

    def gate_weights(self, task: str, x: Tensor) -> Tensor:
        return self.gates[task](flat(x)).softmax(dim=-1)

    def run(self, x: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        outs = [e(x) for e in self.experts]
        return {t: mixture(self.gate_weights(t, x), outs) for t in tasks}

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {t: list(self.decoders[t].parameters()) + list(self.gates[t].parameters()) for t in self.tasks}
