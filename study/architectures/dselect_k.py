"""DSelect-k (Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong & Chi, NeurIPS 2021)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from study.architectures import ARCHITECTURES
from study.architectures._common import check_float, check_int, flat, mixture
from study.architectures._gated import GatedArchitecture


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """The cubic smooth-step function of DSelect-k: 0 below -gamma/2, 1 above gamma/2,
    ``-2/gamma^3 t^3 + 3/(2 gamma) t + 1/2`` in between (continuously differentiable)."""
    cubic = (-2.0 / gamma ** 3) * t ** 3 + (3.0 / (2.0 * gamma)) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


def binary_codes(m: int) -> Tensor:
    """``(2^m, m)`` bool: row ``c`` is ``c`` in binary, most significant bit first."""
    c = torch.arange(2 ** m)
    return torch.stack([(c >> (m - 1 - j)) & 1 for j in range(m)], dim=1).bool()


@ARCHITECTURES.register("dselect_k", "dselect-k", "dselectk")
class DSelectK(GatedArchitecture):
    """DSelect-k (Hazimeh et al., NeurIPS 2021): shared experts, per-task differentiable top-k selection gates.

    Each task's gate has ``num_nonzeros`` (k) selectors. Selector ``i`` reads ``z_i = Z_i x`` (``m =
    ceil(log2 n)`` logits for ``n`` experts) and puts weight ``r_i(z)_l = prod_j S(z_ij)^{b_lj}
    (1 - S(z_ij))^{1 - b_lj}`` on the expert whose binary code is ``b_l`` (the paper's single-expert selector, ``S``
    its smooth-step with ``gamma``); the gate is ``sum_i softmax(W x)_i r_i(z)`` (its k-selector gate), with per-example
    ("input-dependent") selectors on the flattened input. Defaults ``k = 2``, ``gamma = 1`` (LibMTL's and
    the official code's); ``Z`` starts in ``U(-gamma/100, gamma/100)`` and ``W`` in ``U(-0.05, 0.05)`` as
    in the official code. When ``n`` is not a power of two, code ``c`` selects expert ``c mod n`` (the
    official code instead penalises weight on unused codes with an extra loss); the entropy regulariser
    is not used.
    """

    def __init__(self, encoder_factory: Callable[[], nn.Module], decoders: dict[str, nn.Module],
                 tasks: tuple[str, ...], multi_input: bool, num_experts: int = 4, num_nonzeros: int = 2,
                 gamma: float = 1.0):
        num_experts = check_int("num_experts", num_experts, low=2)
        num_nonzeros = check_int("num_nonzeros", num_nonzeros)
        if num_nonzeros > num_experts:
            raise ValueError(f"num_nonzeros must be <= num_experts ({num_experts}), got {num_nonzeros}")
        gamma = check_float("gamma", gamma, 0.0, low_open=True)
        super().__init__(encoder_factory, decoders, tasks, multi_input)
        self.num_experts, self.num_nonzeros, self.gamma = num_experts, num_nonzeros, gamma
        self.num_bits = math.ceil(math.log2(num_experts))
        codes = binary_codes(self.num_bits)
        fold = torch.zeros(2 ** self.num_bits, num_experts)
        fold[torch.arange(2 ** self.num_bits), torch.arange(2 ** self.num_bits) % num_experts] = 1.0
        self.register_buffer("codes", codes, persistent=False)
        self.register_buffer("fold", fold, persistent=False)
        self.experts = nn.ModuleList([encoder_factory() for _ in range(num_experts)])
        d = self.gate_features(encoder_factory, self.experts[0])
        self.z_logits = nn.ModuleDict({t: nn.Linear(d, num_nonzeros * self.num_bits) for t in self.tasks})
        self.w_logits = nn.ModuleDict({t: nn.Linear(d, num_nonzeros) for t in self.tasks})
        with torch.no_grad():
            for p in self.z_logits.parameters():
                p.uniform_(-gamma / 100, gamma / 100)
            for p in self.w_logits.parameters():
                p.uniform_(-0.05, 0.05)

    def selector_weights(self, z: Tensor) -> Tensor:
        """``(N, k, m)`` selector logits -> ``(N, k, n)`` weights of each selector over the experts."""
        s = smooth_step(z, self.gamma).unsqueeze(-2)  # (N, k, 1, m)
        per_code = torch.where(self.codes, s, 1.0 - s).prod(dim=-1)  # (N, k, 2^m)
        return per_code @ self.fold

    def gate_weights(self, task: str, x: Tensor) -> Tensor:
        g = flat(x)
        z = self.z_logits[task](g).view(-1, self.num_nonzeros, self.num_bits)
        r = self.selector_weights(z)
        w = self.w_logits[task](g).softmax(dim=-1)
        return (w.unsqueeze(-1) * r).sum(dim=1)

    def run(self, x: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        outs = [e(x) for e in self.experts]
        return {t: mixture(self.gate_weights(t, x), outs) for t in tasks}

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {
            t: list(self.decoders[t].parameters()) + list(self.z_logits[t].parameters())
            + list(self.w_logits[t].parameters())
            for t in self.tasks
        }
