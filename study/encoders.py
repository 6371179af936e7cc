"""Staged torchvision ResNet encoders for the vision problems.

Every encoder here is an ``nn.Module`` with ``stages: nn.ModuleList`` such that applying the stages in
order *is* ``forward`` (stage-wise architectures such as Cross-stitch, MTAN or NDDR-CNN hook between
them), plus ``out_features`` (channels of the output map, or width of the output vector) and
``stage_channels`` (output channels of each stage).

* :func:`resnet_backbone` - ResNet-18/50 (He et al., CVPR 2016) from torchvision, cut into
  ``[stem, layer1, layer2, layer3, layer4]``; with ``dilated=True`` the last two stages use dilation
  instead of stride (output stride 8, as in DeepLabV3 / the "dilated ResNet-50" of MTAN and LibMTL,
  which the RLW paper uses for NYUv2 and CityScapes). ``pooled=True`` appends a global-average-pool +
  flatten stage (the 512-d feature of CelebA's ResNet-18).
* ``head=(width, dropout)`` appends the shared ``FC(width)-BN-ReLU-Dropout`` stage the RLW paper
  puts on top of ResNet-18 for Office-31 / Office-Home.

Pretrained ImageNet weights are requested the standard torchvision way (``ResNet18_Weights.IMAGENET1K_V1``,
``ResNet50_Weights.IMAGENET1K_V1``); they are read from torch.hub's cache
(``$TORCH_HOME/hub/checkpoints/<file>``) and downloaded only when absent. When that fails the error is a
one-line :class:`~study.errors.DataError` saying where to put the file.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from study.errors import DataError

BACKBONES = ("resnet18", "resnet50", "resnet50_dilated")


class StagedEncoder(nn.Module):
    """A sequence of stages; ``forward(x)`` applies them in order and nothing else."""

    def __init__(self, stages: list[nn.Module], stage_channels: list[int]):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.stage_channels = tuple(int(c) for c in stage_channels)
        self.out_features = self.stage_channels[-1]

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


def weights_enum(depth: int):
    """The torchvision ImageNet weights the paper's setting uses (the original V1 release)."""
    from torchvision.models import ResNet18_Weights, ResNet50_Weights

    return {18: ResNet18_Weights.IMAGENET1K_V1, 50: ResNet50_Weights.IMAGENET1K_V1}[depth]


def weights_cache_path(weights) -> str:
    """Where torch.hub keeps (and looks for) the file of ``weights``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def _download(weights) -> dict[str, Any]:
    return weights.get_state_dict(progress=False, check_hash=True)


def load_pretrained_state(depth: int) -> dict[str, Any]:
    """ImageNet state dict of ResNet-``depth``: from torch.hub's cache, else downloaded; else DataError."""
    weights = weights_enum(depth)
    path = weights_cache_path(weights)
    if os.path.isfile(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file
            raise DataError(
                f"pretrained ResNet-{depth} weights at {path} cannot be read ({type(exc).__name__}: {exc}); "
                f"replace the file with {weights.url} or set pretrained: false"
            ) from None
    try:
        return _download(weights)
    except Exception as exc:
        raise DataError(
            f"pretrained ImageNet weights for ResNet-{depth} ({weights.url}) cannot be downloaded here "
            f"({type(exc).__name__}); place the file at {path} (torch.hub cache, set TORCH_HOME to move it) "
            f"or set pretrained: false"
        ) from None


def resnet_backbone(name: str = "resnet18", *, pretrained: bool = False, pooled: bool = False,
                    head: tuple[int, float] | None = None) -> StagedEncoder:
    """A staged torchvision ResNet: ``resnet18``, ``resnet50`` or ``resnet50_dilated`` (output stride 8).

    ``pooled`` appends global average pooling + flatten; ``head=(width, p)`` further appends
    ``Linear(width)-BatchNorm1d-ReLU-Dropout(p)`` (implies ``pooled``).
    """
    from torchvision.models import resnet18, resnet50

    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
    depth = 18 if name == "resnet18" else 50
    dilation = [False, True, True] if name.endswith("_dilated") else [False, False, False]
    net = resnet18() if depth == 18 else resnet50(replace_stride_with_dilation=dilation)
    if pretrained:
        net.load_state_dict(load_pretrained_state(depth))
    expansion = 1 if depth == 18 else 4
    stages: list[nn.Module] = [
        nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
        net.layer1, net.layer2, net.layer3, net.layer4,
    ]
    channels = [64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    if pooled or head is not None:
        stages.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
        channels.append(channels[-1])
    if head is not None:
        width, p = head
        stages.append(nn.Sequential(nn.Linear(channels[-1], width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
                                    nn.Dropout(p)))
        channels.append(width)
    return StagedEncoder(stages, channels)


def output_stride(name: str) -> int:
    """Spatial downsampling of the backbone's feature map."""
    return 8 if name.endswith("_dilated") else 32
