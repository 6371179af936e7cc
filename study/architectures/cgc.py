"""Customized Gate Control (Tang, Liu, Zhao & Gong, RecSys 2020), the single-level PLE."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from study.architectures import ARCHITECTURES
from study.architectures._common import check_int, flat, mixture
from study.architectures._gated import GatedArchitecture


@ARCHITECTURES.register("cgc")
class CGC(GatedArchitecture):
    """Customized Gate Control (Tang et al., RecSys 2020): shared and task-specific experts, one gate per task.

    The CGC equations of the PLE paper: ``y^k = t^k(g^k(x))``, ``g^k(x) = w^k(x) S^k(x)`` where ``S^k(x)``
    stacks task ``k``'s ``num_task_experts`` experts and the ``num_shared_experts`` shared experts and
    ``w^k(x) = softmax(W_g^k x)`` reads the flattened input. Experts are copies of the encoder. Defaults:
    one shared and one task expert (LibMTL has no default). Task parameters: the task's experts, gate and
    decoder; the shared experts are shared.
    """

    def __init__(self, encoder_factory: Callable[[], nn.Module], decoders: dict[str, nn.Module],
                 tasks: tuple[str, ...], multi_input: bool, num_shared_experts: int = 1, num_task_experts: int = 1):
        num_shared_experts = check_int("num_shared_experts", num_shared_experts)
        num_task_experts = check_int("num_task_experts", num_task_experts)
        super().__init__(encoder_factory, decoders, tasks, multi_input)
        self.shared_experts = nn.ModuleList([encoder_factory() for _ in range(num_shared_experts)])
        self.task_experts = nn.ModuleDict({
            t: nn.ModuleList([encoder_factory() for _ in range(num_task_experts)]) for t in self.tasks
        })
        d = self.gate_features(encoder_factory, self.shared_experts[0])
        self.gates = nn.ModuleDict({t: nn.Linear(d, num_task_experts + num_shared_experts) for t in self.tasks})

    def run(self, x: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        shared = [e(x) for e in self.shared_experts]
        g = flat(x)
        return {
            t: mixture(self.gates[t](g).softmax(dim=-1), [e(x) for e in self.task_experts[t]] + shared)
            for t in tasks
        }

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {
            t: list(self.decoders[t].parameters()) + list(self.task_experts[t].parameters())
            + list(self.gates[t].parameters())
            for t in self.tasks
        }
