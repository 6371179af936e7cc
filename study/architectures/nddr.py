"""NDDR-CNN (Gao, Ma, Zhao, Liu & Yuille, CVPR 2019)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from study.architectures import ARCHITECTURES
from study.architectures._columns import ColumnArchitecture
from study.architectures._common import ChannelBatchNorm, Pointwise, check_float, stage_channels


class NDDRUnit(nn.Module):
    """One task's NDDR layer: 1x1 conv of the channel-concatenated task features, BatchNorm, ReLU."""

    def __init__(self, n_tasks: int, channels: int, own: int, init_self: float, init_other: float):
        super().__init__()
        self.conv = Pointwise(n_tasks * channels, channels, bias=False)
        self.bn = ChannelBatchNorm(channels)
        with torch.no_grad():
            eye = torch.eye(channels)
            weight = torch.cat([eye * (init_self if j == own else init_other) for j in range(n_tasks)], dim=1)
            self.conv.weight.copy_(weight)

    def forward(self, concatenated: Tensor) -> Tensor:
        return torch.relu(self.bn(self.conv(concatenated)))


@ARCHITECTURES.register("nddr", "nddr_cnn", "nddr-cnn")
class NDDR(ColumnArchitecture):
    """NDDR-CNN (Gao et al., CVPR 2019): per-task encoders fused between stages by learned 1x1 convolutions.

    Between two stages, column ``i`` receives ``ReLU(BN_i(W_i [x_1; ...; x_T]))`` (the paper's
    "neural discriminative dimensionality reduction" layer): the task features concatenated along channels and
    reduced back to ``C`` channels by a 1x1 convolution ``W_i`` (``C x TC``). ``W_i`` starts as
    ``[init_other * I, ..., init_self * I, ..., init_other * I]`` with ``init_self = 0.9`` on its own task
    and ``init_other = 0.1`` elsewhere, the paper's initialisation. Layers sit between consecutive stages of
    the staged encoder; channel counts come from ``stage_channels`` or a probe (see
    :mod:`study.architectures._common`). Not implemented: the paper's larger learning rate for NDDR layers.
    """

    def __init__(self, encoder_factory: Callable[[], nn.Module], decoders: dict[str, nn.Module],
                 tasks: tuple[str, ...], multi_input: bool, init_self: float = 0.9, init_other: float = 0.1):
        init_self = check_float("init_self", init_self)
        init_other = check_float("init_other", init_other)
        super().__init__(encoder_factory, decoders, tasks, multi_input)
        self.init_self, self.init_other = init_self, init_other
        n = len(self.tasks)
        channels = stage_channels(self.columns[0], encoder_factory, self.name) if self.n_stages > 1 else []
        self.units = nn.ModuleList(
            nn.ModuleList(NDDRUnit(n, channels[b], i, init_self, init_other) for i in range(n))
            for b in range(self.n_stages - 1)
        )

    def mix(self, boundary: int, feats: list[Tensor], rows: Sequence[int]) -> dict[int, Tensor]:
        concatenated = torch.cat(feats, dim=1)
        return {r: self.units[boundary][r](concatenated) for r in rows}

    def mix_parameters(self, boundary: int, row: int) -> list[nn.Parameter]:
        return list(self.units[boundary][row].parameters())
