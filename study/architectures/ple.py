"""Progressive Layered Extraction (Tang, Liu, Zhao & Gong, RecSys 2020)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from study.architectures import ARCHITECTURES
from study.architectures._common import build_columns, check_int, flat, mixture
from study.architectures._gated import GatedArchitecture


@ARCHITECTURES.register("ple")
class PLE(GatedArchitecture):
    """Progressive Layered Extraction (Tang et al., RecSys 2020): CGC stacked over the encoder's stages.

    The paper's multi-level extraction network: extraction level ``j`` (one per stage of the staged encoder) has shared experts
    and per-task experts (copies of stage ``j``); task ``k``'s experts read ``g^{k,j-1}``, the shared ones
    ``g^{s,j-1}`` (both the input at the first level). Its gates ``g^{k,j} = w^{k,j} S^{k,j}`` mixes task
    ``k``'s and the shared experts; the shared gate ``g^{s,j}`` mixes all experts of the level and exists
    below the last level only. Gates read the flattened input at every level (the paper's gates read the
    previous level's output; flattening intermediate feature maps would make gates of millions of inputs
    per expert). Defaults: one shared and one task expert per level.

    Task parameters (what only task ``k``'s output depends on): its experts and gate at the last level, its
    gate at the level below (which feeds only its own last-level experts), and its decoder. Lower task
    experts also feed the shared gate and are shared.
    """

    encoder_kinds = ("cnn", "resnet")
    encoder_requirement = "stacks extraction levels over the stages of a staged encoder"

    def __init__(self, encoder_factory: Callable[[], nn.Module], decoders: dict[str, nn.Module],
                 tasks: tuple[str, ...], multi_input: bool, num_shared_experts: int = 1, num_task_experts: int = 1):
        num_shared_experts = check_int("num_shared_experts", num_shared_experts)
        num_task_experts = check_int("num_task_experts", num_task_experts)
        super().__init__(encoder_factory, decoders, tasks, multi_input)
        self.shared_experts = build_columns(encoder_factory, num_shared_experts, self.name)
        self.task_experts = nn.ModuleDict({
            t: build_columns(encoder_factory, num_task_experts, self.name) for t in self.tasks
        })
        self.n_levels = len(self.shared_experts[0].stages)
        if any(len(c.stages) != self.n_levels for cs in self.task_experts.values() for c in cs):
            raise ValueError(f"{self.name}: the encoder factory returned encoders with different numbers of stages")
        d = self.gate_features(encoder_factory, self.shared_experts[0])
        n_tasks = len(self.tasks)
        self.task_gates = nn.ModuleDict({
            t: nn.ModuleList(nn.Linear(d, num_task_experts + num_shared_experts) for _ in range(self.n_levels))
            for t in self.tasks
        })
        self.shared_gates = nn.ModuleList(
            nn.Linear(d, n_tasks * num_task_experts + num_shared_experts) for _ in range(self.n_levels - 1)
        )

    def run(self, x: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        g = flat(x)
        h_shared = x
        h = dict.fromkeys(self.tasks, x)
        last = self.n_levels - 1
        for level in range(self.n_levels):
            active = tasks if level == last else self.tasks
            shared = [e.stages[level](h_shared) for e in self.shared_experts]
            own = {t: [e.stages[level](h[t]) for e in self.task_experts[t]] for t in active}
            new_h = {t: mixture(self.task_gates[t][level](g).softmax(dim=-1), own[t] + shared) for t in active}
            if level < last:
                every = [o for t in self.tasks for o in own[t]] + shared
                h_shared = mixture(self.shared_gates[level](g).softmax(dim=-1), every)
            h = new_h
        return {t: h[t] for t in tasks}

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        last = self.n_levels - 1
        result = {}
        for t in self.tasks:
            params = list(self.decoders[t].parameters())
            for e in self.task_experts[t]:
                params += list(e.stages[last].parameters())
            params += list(self.task_gates[t][last].parameters())
            if last >= 1:
                params += list(self.task_gates[t][last - 1].parameters())
            result[t] = params
        return result
