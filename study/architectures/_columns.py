"""One encoder copy ("column") per task, mixed between stages: the common frame of Cross-stitch, NDDR-CNN, LTB.

Column ``i`` is task ``i``'s copy of the staged encoder (built by the problem's encoder factory, so each
copy gets the factory's initialisation, e.g. ImageNet weights). Between stage ``b`` and stage ``b + 1``
(boundaries ``b = 0 .. L-2`` for ``L`` stages) a subclass computes every column's next input from all
columns' outputs (:meth:`ColumnArchitecture.mix`). Task ``i``'s representation is column ``i``'s last stage
output; nothing is mixed after the last stage.

Parameter partition: column ``i``'s last stage and the mixing parameters of the last boundary that produce
column ``i``'s input feed only task ``i`` and are task-specific; every earlier stage and boundary feeds all
tasks (through the later mixing) and is shared.

Multi-input problems: task ``t``'s batch runs through the whole multi-column network (every column is
needed up to the last boundary) and only column ``t`` is evaluated at the last stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from torch import Tensor, nn

from study.architectures._common import build_columns
from study.architectures.base import Inputs, MTLArchitecture, Rep


class ColumnArchitecture(MTLArchitecture):
    has_shared_representation: ClassVar[bool] = False
    encoder_kinds: ClassVar[tuple[str, ...] | None] = ("cnn", "resnet")
    encoder_requirement: ClassVar[str] = ("mixes one encoder copy per task between encoder stages, which needs "
                                          "a staged encoder")

    def __init__(self, encoder_factory: Callable[[], nn.Module], decoders: dict[str, nn.Module],
                 tasks: tuple[str, ...], multi_input: bool):
        super().__init__(encoder_factory, decoders, tasks, multi_input)
        self.columns = build_columns(encoder_factory, len(self.tasks), self.name)
        self.n_stages = len(self.columns[0].stages)

    # -- what a subclass defines ------------------------------------------------------------------
    def mix(self, boundary: int, feats: list[Tensor], rows: Sequence[int]) -> dict[int, Tensor]:
        """Inputs of stage ``boundary + 1`` of the columns ``rows``, from all columns' stage-``boundary`` outputs."""
        raise NotImplementedError

    def mix_parameters(self, boundary: int, row: int) -> list[nn.Parameter]:
        """The mixing parameters used only to compute column ``row``'s input at ``boundary``."""
        raise NotImplementedError

    # -- the frame ---------------------------------------------------------------------------------
    def run(self, x: Tensor, rows: Sequence[int]) -> dict[int, Tensor]:
        """Last-stage outputs of the columns ``rows`` for input ``x``."""
        last = self.n_stages - 1
        if last == 0:
            return {r: self.columns[r].stages[0](x) for r in rows}
        feats = [col.stages[0](x) for col in self.columns]
        everyone = range(len(self.tasks))
        for stage in range(1, last + 1):
            wanted = rows if stage == last else everyone
            inputs = self.mix(stage - 1, feats, wanted)
            out = {r: self.columns[r].stages[stage](inputs[r]) for r in wanted}
            if stage == last:
                return out
            feats = [out[r] for r in everyone]
        raise AssertionError("unreachable")

    def encode(self, x: Inputs) -> Rep:
        if isinstance(x, dict):
            return {t: self.run(xt, [self.tasks.index(t)])[self.tasks.index(t)] for t, xt in x.items()}
        out = self.run(x, range(len(self.tasks)))
        return {t: out[i] for i, t in enumerate(self.tasks)}

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        result = {}
        for i, t in enumerate(self.tasks):
            params = list(self.decoders[t].parameters()) + list(self.columns[i].stages[-1].parameters())
            if self.n_stages > 1:
                params += self.mix_parameters(self.n_stages - 2, i)
            result[t] = params
        return result
