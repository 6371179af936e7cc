"""Multi-Task Attention Network (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from study.architectures import ARCHITECTURES
from study.architectures._common import (
    ChannelBatchNorm,
    Pointwise,
    check_int,
    probe,
    require_input_shape,
    stages_of,
)
from study.architectures.base import Inputs, MTLArchitecture, Rep


def _parts(stage: nn.Module) -> list[nn.Module] | None:
    return list(stage) if isinstance(stage, nn.Sequential) and len(stage) >= 2 else None


def _run_stage(stage: nn.Module, h: Tensor, split: bool) -> tuple[Tensor, Tensor]:
    """``(u, p)``: the stage's intermediate feature (input of the attention mask) and its output."""
    if not split:
        p = stage(h)
        return p, p
    *head, tail = list(stage)
    u = h
    for m in head:
        u = m(u)
    p = tail(u.clone() if getattr(tail, "inplace", False) else u)
    return u, p


class AttentionModule(nn.Sequential):
    """``g``: [1x1 conv, BN, ReLU, 1x1 conv, BN, sigmoid] (the paper's attention module), rank-agnostic."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__(
            Pointwise(in_channels, mid_channels), ChannelBatchNorm(mid_channels), nn.ReLU(),
            Pointwise(mid_channels, out_channels), ChannelBatchNorm(out_channels), nn.Sigmoid(),
        )


class Bridge(nn.Module):
    """``f``: the shared 3x3 conv (+BN, ReLU) taking stage j's attended features to stage j+1's intermediate
    shape; spatial sizes are matched by adaptive max pooling (the paper's pooling between blocks). A map
    going into a vector stage is global-average-pooled and mapped by a linear layer instead."""

    def __init__(self, src: tuple[int, ...], dst: tuple[int, ...], arch: str, index: int):
        super().__init__()
        cin, cout = src[0], dst[0]
        src_rank, dst_rank = len(src) + 1, len(dst) + 1
        if src_rank == 2 and dst_rank > 2:
            raise ValueError(f"{arch}: stage {index} outputs vectors but stage {index + 1} works on maps")
        if dst_rank > 2 and src_rank != dst_rank:
            raise ValueError(f"{arch}: stages {index} and {index + 1} output maps of different ranks")
        self.pool_first = src_rank > 2 and dst_rank == 2
        if dst_rank == 2:
            layer: nn.Module = nn.Linear(cin, cout)
        elif dst_rank == 3:
            layer = nn.Conv1d(cin, cout, 3, padding=1)
        elif dst_rank == 4:
            layer = nn.Conv2d(cin, cout, 3, padding=1)
        else:
            raise ValueError(f"{arch}: stage {index + 1} outputs maps of rank {dst_rank}; supported: 2, 3, 4")
        self.layer = layer
        self.bn = ChannelBatchNorm(cout)

    def forward(self, x: Tensor, like: Tensor) -> Tensor:
        if self.pool_first:
            x = x.flatten(2).mean(dim=2)
        y = torch.relu(self.bn(self.layer(x)))
        if y.dim() > 2 and y.shape[2:] != like.shape[2:]:
            pool = F.adaptive_max_pool2d if y.dim() == 4 else F.adaptive_max_pool1d
            y = pool(y, like.shape[2:])
        return y


@ARCHITECTURES.register("mtan")
class MTAN(MTLArchitecture):
    """Multi-Task Attention Network (Liu et al., CVPR 2019): one shared encoder, per-task soft attention per stage.

    The task-specific attention module of the paper: at stage ``j`` task ``i`` computes a mask
    ``a_i^j = g_i^j([u^j ; f^{j-1}(a^_i^{j-1})])`` (``[u^j]`` alone at the first stage) and its attended
    features ``a^_i^j = a_i^j * p^j``, where ``p^j`` is the shared stage output, ``u^j`` the shared feature
    inside the stage (the output of all but the last module of a stage that is an ``nn.Sequential``, e.g. a
    ResNet layer minus its last block, when that keeps the spatial size; else ``p^j`` itself), ``g``
    [1x1 conv, BN, ReLU, 1x1 conv, BN, sigmoid] with ``C_p / attention_reduction`` hidden channels (1 as in
    the paper's SegNet-MTAN; LibMTL's ResNet-50 MTAN uses 4) and ``f`` a shared [3x3 conv, BN, ReLU] plus
    pooling to the next stage's size. Task ``i``'s representation is ``a^_i`` at the last stage.

    Shapes are found by a probe at construction (one forward of zeros of the problem's ``input_shape``).
    Task parameters: the task's attention modules and decoder; the encoder and the ``f`` bridges are shared.
    """

    has_shared_representation = False
    encoder_kinds = ("cnn", "resnet")
    encoder_requirement = "attends to the outputs of the stages of a staged encoder"
    needs_input_shape = True

    def __init__(self, encoder_factory: Callable[[], nn.Module], decoders: dict[str, nn.Module],
                 tasks: tuple[str, ...], multi_input: bool, attention_reduction: int = 1):
        attention_reduction = check_int("attention_reduction", attention_reduction)
        super().__init__(encoder_factory, decoders, tasks, multi_input)
        self.attention_reduction = attention_reduction
        self.encoder = encoder_factory()
        stages = stages_of(self.encoder, self.name)
        shape = require_input_shape(encoder_factory, self.encoder, self.name, "probe the shapes of its stages")

        def inspect(stage: nn.Module, h: Tensor):
            split = False
            if _parts(stage) is not None:
                u, p = _run_stage(stage, h, True)
                split = u.dim() == p.dim() and u.shape[2:] == p.shape[2:]
            if not split:
                p = stage(h)
                u = p
            return p, (split, tuple(u.shape[1:]), tuple(p.shape[1:]))

        info = probe(self.encoder, shape, self.name, inspect)
        self.split = [s for s, _, _ in info]
        u_shapes = [u for _, u, _ in info]
        p_shapes = [p for _, _, p in info]
        self.attention = nn.ModuleDict({
            t: nn.ModuleList(
                AttentionModule(u_shapes[j][0] * (1 if j == 0 else 2), max(1, p_shapes[j][0] // attention_reduction),
                                p_shapes[j][0])
                for j in range(len(stages))
            )
            for t in self.tasks
        })
        self.bridges = nn.ModuleList(Bridge(p_shapes[j], u_shapes[j + 1], self.name, j) for j in range(len(stages) - 1))

    def run(self, x: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        attended: dict[str, Tensor] = {}
        h = x
        for j, stage in enumerate(self.encoder.stages):
            u, p = _run_stage(stage, h, self.split[j])
            for t in tasks:
                inp = u if j == 0 else torch.cat([u, self.bridges[j - 1](attended[t], u)], dim=1)
                attended[t] = self.attention[t][j](inp) * p
            h = p
        return attended

    def encode(self, x: Inputs) -> Rep:
        if isinstance(x, dict):
            return {t: self.run(xt, [t])[t] for t, xt in x.items()}
        return self.run(x, self.tasks)

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {t: list(self.decoders[t].parameters()) + list(self.attention[t].parameters()) for t in self.tasks}
