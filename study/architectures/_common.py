"""Building blocks shared by the architectures: staged-encoder access, shape probes, rank-agnostic layers.

Staged encoders
    A *staged encoder* has ``stages: nn.ModuleList`` and applying the stages in order equals ``forward``
    (see :class:`study.encoders.StagedEncoder` and the demo's ``DigitsCNN``). Stage outputs are maps
    ``(N, C, *spatial)`` or vectors ``(N, C)``; channels are always dimension 1.

Shapes
    Units between stages are sized from the encoder's ``stage_channels`` attribute when it has one;
    otherwise (and always for MTAN, which also needs ranks and intermediate shapes) by a *probe*: one
    forward of a zero batch of two samples of the problem's ``input_shape`` through the stages, in eval
    mode and without gradients, at construction. The probe costs one encoder forward per model build.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


# -- parameter checks (ValueError("<param> must be ..., got ...")) ---------------------------------------
def check_int(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_float(name: str, value: Any, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


# -- encoders ----------------------------------------------------------------------------------------
def stages_of(encoder: nn.Module, arch: str) -> nn.ModuleList:
    """The encoder's ``stages``, or ValueError naming ``arch`` and the reason."""
    stages = getattr(encoder, "stages", None)
    if not isinstance(stages, nn.ModuleList) or len(stages) == 0:
        raise ValueError(f"{arch}: needs a staged encoder (an `stages` ModuleList applied in order) to work "
                         f"between its stages; {type(encoder).__name__} has none")
    return stages


def input_shape_of(factory: Callable[[], nn.Module], encoder: nn.Module | None = None) -> tuple[int, ...] | None:
    """Per-sample input shape from the factory (the problem's ``input_shape``) or the encoder."""
    for source in (factory, encoder):
        shape = getattr(source, "input_shape", None)
        if shape is not None:
            return tuple(int(s) for s in shape)
    return None


def require_input_shape(factory: Callable[[], nn.Module], encoder: nn.Module | None, arch: str,
                        purpose: str) -> tuple[int, ...]:
    shape = input_shape_of(factory, encoder)
    if shape is None:
        raise ValueError(f"{arch}: needs the per-sample input shape to {purpose}; the problem declares no "
                         f"`input_shape` (e.g. input_shape = (3, 224, 224))")
    return shape


@torch.no_grad()
def probe(encoder: nn.Module, input_shape: Sequence[int], arch: str,
          fn: Callable[[nn.Module, Tensor], list[tuple[int, ...]]] | None = None) -> list[Any]:
    """Per-stage output shapes (without the batch dimension) of a zero batch of two samples.

    ``fn(stage, h) -> (h_out, info)`` may replace the plain stage call to collect more (MTAN).
    """
    stages = stages_of(encoder, arch)
    param = next(encoder.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = encoder.training
    encoder.eval()
    h = torch.zeros(2, *input_shape, device=device, dtype=dtype)
    out = []
    try:
        for stage in stages:
            if fn is None:
                h = stage(h)
                out.append(tuple(h.shape[1:]))
            else:
                h, info = fn(stage, h)
                out.append(info)
    except Exception as exc:  # a wrong input_shape shows up as a shape error in some stage
        raise ValueError(f"{arch}: probing the encoder's stages with a zero input of shape "
                         f"{tuple(input_shape)} failed ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    finally:
        encoder.train(was_training)
    return out


def stage_channels(encoder: nn.Module, factory: Callable[[], nn.Module], arch: str) -> list[int]:
    """Output channels of every stage: ``encoder.stage_channels`` if present, else from a probe."""
    stages = stages_of(encoder, arch)
    declared = getattr(encoder, "stage_channels", None)
    if declared is not None:
        channels = [int(c) for c in declared]
        if len(channels) != len(stages):
            raise ValueError(f"{arch}: the encoder declares {len(channels)} stage_channels for {len(stages)} stages")
        return channels
    shape = require_input_shape(factory, encoder, arch, "size the units between encoder stages")
    return [s[0] for s in probe(encoder, shape, arch)]


def build_columns(factory: Callable[[], nn.Module], n: int, arch: str) -> nn.ModuleList:
    """``n`` encoders from the factory (one per task/expert), all staged with the same number of stages."""
    cols = nn.ModuleList([factory() for _ in range(n)])
    depth = {len(stages_of(c, arch)) for c in cols}
    if len(depth) != 1:
        raise ValueError(f"{arch}: the encoder factory returned encoders with different numbers of stages {sorted(depth)}")
    return cols


# -- rank-agnostic layers -----------------------------------------------------------------------------
class ChannelBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over dimension 1 of ``(N, C, *)`` inputs of any rank >= 2."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an (N, C, ...) input, got shape {tuple(input.shape)}")


class Pointwise(nn.Module):
    """A 1x1 convolution over dimension 1 for inputs of any rank >= 2 (a Linear layer on vectors)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear / nn.Conv2d default
        if self.bias is not None:
            bound = 1 / math.sqrt(in_channels)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return F.linear(x, self.weight, self.bias)
        if x.dim() == 4:
            return F.conv2d(x, self.weight[:, :, None, None], self.bias)
        if x.dim() == 3:
            return F.conv1d(x, self.weight[:, :, None], self.bias)
        y = torch.einsum("oc,nc...->no...", self.weight, x)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, *([1] * (x.dim() - 2)))
        return y


def channel_view(v: Tensor, rank: int) -> Tensor:
    """Reshape a per-channel vector ``(C,)`` to broadcast against an ``(N, C, *)`` tensor of ``rank``."""
    return v.view(1, -1, *([1] * (rank - 2)))


# -- mixtures of experts --------------------------------------------------------------------------------
def mixture(weights: Tensor, outputs: Sequence[Tensor]) -> Tensor:
    """``sum_e weights[:, e] * outputs[e]``; ``weights`` is ``(N, E)``, each output ``(N, ...)``."""
    stacked = torch.stack(list(outputs), dim=1)  # (N, E, ...)
    return (weights.view(*weights.shape, *([1] * (stacked.dim() - 2))) * stacked).sum(dim=1)


def flat(x: Tensor) -> Tensor:
    """The gate input: the batch flattened to ``(N, prod(input_shape))``."""
    return torch.flatten(x, start_dim=1)
