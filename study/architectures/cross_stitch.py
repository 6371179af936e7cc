"""Cross-stitch networks (Misra, Shrivastava, Gupta & Hebert, CVPR 2016)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from study.architectures import ARCHITECTURES
from study.architectures._columns import ColumnArchitecture
from study.architectures._common import channel_view, check_bool, check_float, stage_channels


@ARCHITECTURES.register("cross_stitch", "cross-stitch", "crossstitch")
class CrossStitch(ColumnArchitecture):
    """Cross-stitch networks (Misra et al., CVPR 2016): per-task encoders linearly mixed between stages.

    Eq. (1) of the paper, for T tasks: between two stages, column ``i`` receives
    ``x~_i = sum_j alpha_ij x_j``, where ``x_j`` is column ``j``'s stage output and ``alpha`` a learned
    T x T matrix per boundary (``channel_wise: true``: one such matrix per channel). Initialisation as in
    the paper's initialisation ablation, generalised to T tasks as a convex combination:
    ``alpha_ii = alpha_self`` (0.9, the paper's best), ``alpha_ij = (1 - alpha_self) / (T - 1)``.
    ``alpha_self: 1.0`` starts from independent task networks.

    Units sit between consecutive stages of the staged encoder (not after the last one: its output is each
    task's representation); see :mod:`study.architectures._columns`. Not implemented: the paper's larger
    learning rate for the alphas (the trainer uses one learning rate for every parameter).
    """

    def __init__(self, encoder_factory: Callable[[], nn.Module], decoders: dict[str, nn.Module],
                 tasks: tuple[str, ...], multi_input: bool, alpha_self: float = 0.9, channel_wise: bool = False):
        alpha_self = check_float("alpha_self", alpha_self, 0.0, 1.0)
        channel_wise = check_bool("channel_wise", channel_wise)
        super().__init__(encoder_factory, decoders, tasks, multi_input)
        self.alpha_self = alpha_self
        self.channel_wise = channel_wise
        n = len(self.tasks)
        diagonal = alpha_self if n > 1 else 1.0
        other = (1.0 - alpha_self) / (n - 1) if n > 1 else 0.0
        channels = stage_channels(self.columns[0], encoder_factory, self.name) if channel_wise else None
        self.units = nn.ModuleList()
        for b in range(self.n_stages - 1):
            rows = nn.ParameterList()
            for i in range(n):
                row = torch.full((n,), other)
                row[i] = diagonal
                if channels is not None:
                    row = row[:, None].repeat(1, channels[b])
                rows.append(nn.Parameter(row))
            self.units.append(rows)

    def mix(self, boundary: int, feats: list[Tensor], rows: Sequence[int]) -> dict[int, Tensor]:
        out = {}
        for r in rows:
            alpha = self.units[boundary][r]
            acc = None
            for j, f in enumerate(feats):
                w = alpha[j] if alpha.dim() == 1 else channel_view(alpha[j], f.dim())
                acc = w * f if acc is None else acc + w * f
            out[r] = acc
        return out

    def mix_parameters(self, boundary: int, row: int) -> list[nn.Parameter]:
        return [self.units[boundary][row]]

    def alphas(self, boundary: int) -> Tensor:
        """The T x T (x C) cross-stitch matrix at ``boundary`` (row i: weights of column i's input)."""
        return torch.stack([p.detach() for p in self.units[boundary]])
