"""Learning to Branch (Guo, Lee & Ulbricht, ICML 2020)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from study.architectures import ARCHITECTURES
from study.architectures._columns import ColumnArchitecture
from study.architectures._common import check_float


@ARCHITECTURES.register("ltb")
class LTB(ColumnArchitecture):
    """Learning to Branch (Guo et al., ICML 2020): each stage's node picks its parent by Gumbel-softmax.

    A tree-structured super-network with one node (a copy of the stage) per task at every stage; node ``i``
    of stage ``b + 1`` reads ``sum_j w_ij x_j`` from the nodes of stage ``b``, where ``w_i`` is a hard
    (straight-through) Gumbel-softmax sample of learned logits ``alpha_i`` (the paper's branching operation), so
    gradients reach both the weights and the branching distribution. Schedule as in LibMTL's LTB, which
    the RLW paper's code base uses: for the first ``warmup_fraction`` of the epochs the weights are uniform
    (``1/T``; LibMTL sums instead) and the logits untrained; afterwards the temperature is
    ``tau = tau_scale * epochs / sqrt(epoch + 1)``. In evaluation mode after warm-up each node takes the
    argmax parent (the tree learned so far). The trainer reports epochs through :meth:`set_epoch`;
    until it is called the network stays in warm-up. Not implemented: the paper's retraining of the found
    tree from scratch.
    """

    def __init__(self, encoder_factory: Callable[[], nn.Module], decoders: dict[str, nn.Module],
                 tasks: tuple[str, ...], multi_input: bool, warmup_fraction: float = 0.01, tau_scale: float = 0.05):
        warmup_fraction = check_float("warmup_fraction", warmup_fraction, 0.0, 1.0)
        tau_scale = check_float("tau_scale", tau_scale, 0.0, low_open=True)
        super().__init__(encoder_factory, decoders, tasks, multi_input)
        self.warmup_fraction, self.tau_scale = warmup_fraction, tau_scale
        n = len(self.tasks)
        self.logits = nn.ModuleList(
            nn.ParameterList(nn.Parameter(torch.zeros(n)) for _ in range(n)) for _ in range(self.n_stages - 1)
        )
        self.epoch: int = 0
        self.epochs: int | None = None

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.epoch, self.epochs = int(epoch), int(epochs)

    def in_warmup(self) -> bool:
        return self.epochs is None or self.epoch < self.warmup_fraction * self.epochs

    def temperature(self) -> float:
        if self.epochs is None:
            return float("inf")
        return self.tau_scale * self.epochs / math.sqrt(self.epoch + 1)

    def branch_weights(self, boundary: int, row: int) -> Tensor:
        """Weights of the parents of node ``row`` after ``boundary`` (a one-hot vector after warm-up)."""
        logits = self.logits[boundary][row]
        n = logits.shape[0]
        if self.in_warmup():
            return torch.full_like(logits, 1.0 / n).detach()
        if self.training:
            return F.gumbel_softmax(logits, tau=self.temperature(), hard=True)
        return F.one_hot(logits.detach().argmax(), n).to(logits.dtype)

    def mix(self, boundary: int, feats: list[Tensor], rows: Sequence[int]) -> dict[int, Tensor]:
        out = {}
        for r in rows:
            w = self.branch_weights(boundary, r)
            acc = None
            for j, f in enumerate(feats):
                acc = w[j] * f if acc is None else acc + w[j] * f
            out[r] = acc
        return out

    def mix_parameters(self, boundary: int, row: int) -> list[nn.Parameter]:
        return [self.logits[boundary][row]]

    def branches(self) -> list[list[int]]:
        """The current tree: for each boundary, the argmax parent of each node."""
        return [[int(p.detach().argmax()) for p in rows] for rows in self.logits]
