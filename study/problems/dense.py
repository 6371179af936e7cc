"""NYUv2 and CityScapes: dense scene understanding from the widely used preprocessed ``.npy`` release.

Problems ``nyuv2`` (13-class segmentation, depth, surface normals; 3x288x384) and ``cityscapes``
(7-class segmentation, depth; 3x128x256), set up as in the RLW paper (Lin et al., TMLR 2022, Sec. 5.1,
following MTAN, Liu et al., CVPR 2019, and LibMTL): a dilated ResNet-50 encoder (output stride 8,
ImageNet weights by default) shared by one ASPP head per task (DeepLabV3 head: ASPP with atrous rates
12/24/36, 3x3 conv, BN, ReLU, 1x1 conv), its output upsampled bilinearly to the input size; normals
are L2-normalised. Losses: cross-entropy ignoring label -1; L1 over the pixels with non-zero depth;
``1 - cos`` over the pixels whose normal label has any non-zero component. Metrics: see
:mod:`study.metrics` (pooled over the whole split).

On-disk format (the preprocessed release; ``val/`` is the *test* split)::

    root/{train,val}/image/{i}.npy    H x W x 3 float
    root/{train,val}/label/{i}.npy    H x W, class index, -1 = ignore   (CityScapes: label/ or label_7/)
    root/{train,val}/depth/{i}.npy    H x W x 1 (or H x W), 0 = no depth
    root/{train,val}/normal/{i}.npy   H x W x 3 (NYUv2 only), all-zero = no normal

Validation split rule (identical for every method and seed): the sample indices of ``root/train`` are
sorted, permuted with ``numpy.random.default_rng(split_seed)`` (``split_seed`` 0 by default) and the first
``max(1, round(val_fraction * n))`` of the permutation (``val_fraction`` 0.1 by default) form the
validation split; the rest is the training split. ``val_fraction: 0`` trains on all of ``train`` with no validation.

Reading: each sample's arrays are memory-mapped (``np.load(mmap_mode="r")``) and copied once into a
tensor inside DataLoader workers (``num_workers``); ``in_memory: true`` instead reads each split once
into contiguous tensors and batches by slicing (no per-sample work during training). No augmentation.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from study.encoders import BACKBONES, resnet_backbone
from study.errors import DataError
from study.metrics import NORMAL_THRESHOLDS, DepthMeter, NormalMeter, SegmentationMeter
from study.problems import PROBLEMS
from study.problems.base import Metric, Problem, TensorPairs

IGNORE = -1
DENSE_SPLITS = ("train", "val")  # folders on disk; val/ is the test split


def sample_ids(folder: str) -> list[int]:
    """Integer ids of the ``{i}.npy`` files in ``folder``, sorted."""
    ids = []
    for name in os.listdir(folder):
        stem, ext = os.path.splitext(name)
        if ext == ".npy" and stem.isdigit():
            ids.append(int(stem))
    return sorted(ids)


def carve_validation(ids: list[int], val_fraction: float, split_seed: int) -> tuple[list[int], list[int]]:
    """The documented validation rule: (train ids, validation ids), both sorted."""
    ids = sorted(ids)
    n_val = max(1, int(round(val_fraction * len(ids)))) if val_fraction > 0 and len(ids) > 1 else 0
    order = np.random.default_rng(split_seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


class NpyDenseDataset(Dataset):
    """Samples ``(image (3,H,W) float32, {task: target})`` from per-sample ``.npy`` files."""

    def __init__(self, split_dir: str, ids: list[int], folders: dict[str, str]):
        self.split_dir = split_dir
        self.ids = list(ids)
        self.folders = dict(folders)  # task -> folder name

    def __len__(self) -> int:
        return len(self.ids)

    def _load(self, folder: str, i: int) -> np.ndarray:
        return np.load(os.path.join(self.split_dir, folder, f"{i}.npy"), mmap_mode="r")

    def __getitem__(self, k: int):
        i = self.ids[k]
        image = torch.from_numpy(np.array(np.moveaxis(self._load("image", i), -1, 0), dtype=np.float32, order="C"))
        targets: dict[str, Tensor] = {}
        for task, folder in self.folders.items():
            a = self._load(folder, i)
            if task == "segmentation":
                targets[task] = torch.from_numpy(np.asarray(a).astype(np.int64))
            elif a.ndim == 2:  # depth stored H x W
                targets[task] = torch.from_numpy(np.array(a, dtype=np.float32, order="C")).unsqueeze(0)
            else:
                targets[task] = torch.from_numpy(np.array(np.moveaxis(a, -1, 0), dtype=np.float32, order="C"))
        return image, targets


class DenseHead(nn.Module):
    """DeepLabV3 head (Chen et al., 2017): ASPP, 3x3 conv-BN-ReLU, 1x1 conv; then bilinear upsampling
    to ``out_size`` (and L2 normalisation over channels when ``normalize``)."""

    def __init__(self, in_channels: int, out_channels: int, out_size: tuple[int, int],
                 channels: int = 256, atrous_rates: tuple[int, ...] = (12, 24, 36), normalize: bool = False):
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import ASPP

        self.body = nn.Sequential(
            ASPP(in_channels, list(atrous_rates), channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, out_channels, 1),
        )
        self.out_size = tuple(int(s) for s in out_size)
        self.normalize = normalize

    def forward(self, features: Tensor) -> Tensor:
        out = F.interpolate(self.body(features), size=self.out_size, mode="bilinear", align_corners=True)
        return F.normalize(out, p=2, dim=1) if self.normalize else out


def _slice_batches(ds: TensorPairs, batch_size: int, shuffle: bool, generator, drop_last: bool):
    n = len(ds)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield ds.x[idx], {t: y[idx] for t, y in ds.targets.items()}


def loader_batches(data, batch_size: int, *, shuffle: bool, generator, num_workers: int, drop_last: bool):
    """Batches of a file-backed dataset (DataLoader with workers) or of in-memory tensors (slicing)."""
    if isinstance(data, TensorPairs):
        yield from _slice_batches(data, batch_size, shuffle, generator, drop_last)
        return
    yield from DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          num_workers=num_workers, drop_last=drop_last,
                          pin_memory=torch.cuda.is_available(), persistent_workers=False)


def drop_incomplete(n: int, batch_size: int, shuffle: bool) -> bool:
    """Training drops the last incomplete batch (as LibMTL does): a batch of one sample would break the
    BatchNorm after ASPP's image pooling (and of Office's FC head). Evaluation keeps every sample."""
    return shuffle and n >= batch_size


class DenseProblem(Problem):
    """Shared reader, model and objectives of the preprocessed NYUv2 / CityScapes release."""

    num_classes: ClassVar[int]
    #: task -> folder(s) accepted on disk, first found wins
    task_folders: ClassVar[dict[str, tuple[str, ...]]]
    paper_sizes: ClassVar[tuple[int, int]]  # (train, test) of the standard release
    paper_shape: ClassVar[tuple[int, int]]
    resources: ClassVar[dict[str, float]] = {"cpu": 4, "gpu": 1}

    def __init__(self, root: str | None = None, backbone: str = "resnet50_dilated", pretrained: bool = True,
                 val_fraction: float = 0.1, split_seed: int = 0, num_workers: int = 4, in_memory: bool = False,
                 head_channels: int = 256, atrous_rates: list[int] | tuple[int, ...] = (12, 24, 36)):
        if root is not None and (not isinstance(root, str) or not root):
            raise ValueError(f"root must be a path to the {self.name} folder, got {root!r}")
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        if not isinstance(pretrained, bool):
            raise ValueError(f"pretrained must be true or false, got {pretrained!r}")
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
        for key, v, lo in (("split_seed", split_seed, 0), ("num_workers", num_workers, 0),
                           ("head_channels", head_channels, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{key} must be an integer >= {lo}, got {v!r}")
        if not isinstance(in_memory, bool):
            raise ValueError(f"in_memory must be true or false, got {in_memory!r}")
        rates = tuple(atrous_rates) if isinstance(atrous_rates, (list, tuple)) else None
        if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
            raise ValueError(f"atrous_rates must be a list of positive integers, got {atrous_rates!r}")
        self.root = os.path.expanduser(root) if root else None
        self.backbone = backbone
        self.pretrained = pretrained
        self.val_fraction = float(val_fraction)
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.in_memory = in_memory
        self.head_channels = head_channels
        self.atrous_rates = rates

    # -- description ------------------------------------------------------------------------
    def metrics(self) -> dict[str, tuple[Metric, ...]]:
        all_metrics = {
            "segmentation": (Metric("miou", True), Metric("pixel_accuracy", True)),
            "depth": (Metric("abs_err", False), Metric("rel_err", False)),
            "normal": (Metric("mean_angle", False), Metric("median_angle", False),
                       *(Metric(f"within_{t:g}", True) for t in NORMAL_THRESHOLDS)),
        }
        return {t: all_metrics[t] for t in self.tasks}

    # -- data -------------------------------------------------------------------------------
    def _require_root(self) -> str:
        if not self.root:
            raise DataError(f"{self.name}: problem.root is not set; point it at the folder holding train/ and val/")
        return self.root

    def folder_of(self, split_dir: str, task: str) -> str | None:
        """The folder name holding ``task``'s labels in ``split_dir`` (None if none of the accepted ones)."""
        for name in self.task_folders[task]:
            if os.path.isdir(os.path.join(split_dir, name)):
                return name
        return None

    def _expected(self) -> str:
        folders = ",".join(["image"] + [f[0] for f in self.task_folders.values()])
        return f"expected root/{{train,val}}/{{{folders}}}/{{i}}.npy (the preprocessed {self.name} release)"

    def check(self) -> None:
        """Folders present and non-empty, with the same number of files per folder; cheap (listdir only)."""
        root = self._require_root()
        if not os.path.isdir(root):
            raise DataError(f"{self.name}: data folder {root} does not exist; {self._expected()}")
        for split in DENSE_SPLITS:
            split_dir = os.path.join(root, split)
            counts = {}
            for task, names in [("image", ("image",)), *self.task_folders.items()]:
                folder = names[0] if task == "image" else self.folder_of(split_dir, task)
                path = os.path.join(split_dir, folder or names[0])
                if not os.path.isdir(path):
                    raise DataError(f"{self.name}: {path} is missing; {self._expected()}")
                counts[path] = len(sample_ids(path))
            if not any(counts.values()):
                raise DataError(f"{self.name}: no {{i}}.npy files under {split_dir}; {self._expected()}")
            if len(set(counts.values())) > 1:
                detail = ", ".join(f"{os.path.basename(p)}: {c}" for p, c in counts.items())
                raise DataError(f"{self.name}: {split_dir} folders hold different numbers of samples ({detail}); "
                                f"run `litmus check-data {self.name} {root}`")

    @cached_property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the images, read from the header of the first training image."""
        train_image = os.path.join(self._require_root(), "train", "image")
        try:
            first = sample_ids(train_image)[0]
            shape = np.load(os.path.join(train_image, f"{first}.npy"), mmap_mode="r").shape
        except (OSError, IndexError, ValueError) as exc:
            raise DataError(
                f"{self.name}: cannot read an image under {train_image} ({exc}); {self._expected()}"
            ) from None
        if len(shape) != 3 or shape[2] != 3:
            raise DataError(f"{self.name}: images must be H x W x 3 arrays, {train_image}/{first}.npy is {shape}")
        return int(shape[0]), int(shape[1])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Per-sample input shape: ``(3, H, W)`` of the data when readable, else the paper's."""
        try:
            return (3, *self.image_hw)
        except DataError:
            return (3, *self.paper_shape)

    def split_ids(self) -> dict[str, tuple[str, list[int]]]:
        """``{split: (folder on disk, sample ids)}`` for train / val / test after the validation rule."""
        root = self._require_root()
        train_ids = sample_ids(os.path.join(root, "train", "image"))
        test_ids = sample_ids(os.path.join(root, "val", "image"))
        train, val = carve_validation(train_ids, self.val_fraction, self.split_seed)
        return {"train": ("train", train), "val": ("train", val), "test": ("val", test_ids)}

    def load(self, seed: int) -> dict[str, Any]:
        self.check()
        out: dict[str, Any] = {}
        for split, (folder, ids) in self.split_ids().items():
            if not ids:
                out[split] = None
                continue
            split_dir = os.path.join(self.root, folder)
            folders = {t: self.folder_of(split_dir, t) for t in self.tasks}
            ds = NpyDenseDataset(split_dir, ids, folders)
            out[split] = self._materialize(ds) if self.in_memory else ds
        return out

    def _materialize(self, ds: NpyDenseDataset) -> TensorPairs:
        xs, ys = [], {t: [] for t in self.tasks}
        for x, y in DataLoader(ds, batch_size=32, num_workers=self.num_workers):
            xs.append(x)
            for t in self.tasks:
                ys[t].append(y[t])
        return TensorPairs(torch.cat(xs), {t: torch.cat(v) for t, v in ys.items()})

    def batches(self, data, batch_size: int, *, shuffle: bool, generator):
        yield from loader_batches(data, batch_size, shuffle=shuffle, generator=generator,
                                  num_workers=self.num_workers,
                                  drop_last=drop_incomplete(len(data), batch_size, shuffle))

    # -- model ------------------------------------------------------------------------------
    def build_encoder(self) -> nn.Module:
        return resnet_backbone(self.backbone, pretrained=self.pretrained)

    def encoder_out_features(self) -> int:
        return 512 if self.backbone == "resnet18" else 2048

    def out_channels(self, task: str) -> int:
        return {"segmentation": self.num_classes, "depth": 1, "normal": 3}[task]

    def build_decoder(self, task: str) -> nn.Module:
        return DenseHead(self.encoder_out_features(), self.out_channels(task), self.image_hw,
                         channels=self.head_channels, atrous_rates=self.atrous_rates,
                         normalize=task == "normal")

    # -- objectives -------------------------------------------------------------------------
    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        if task == "segmentation":
            labelled = (target != IGNORE).sum().clamp(min=1)
            return F.cross_entropy(output, target, ignore_index=IGNORE, reduction="sum") / labelled
        if task == "depth":
            valid = target != 0
            return torch.where(valid, (output - target).abs(), 0.0).sum() / valid.sum().clamp(min=1)
        if task == "normal":
            valid = (target != 0).any(dim=1)
            cos = (output * target).sum(dim=1)
            return 1 - torch.where(valid, cos, 0.0).sum() / valid.sum().clamp(min=1)
        raise KeyError(task)

    def new_meter(self, task: str):
        if task == "segmentation":
            return SegmentationMeter(self.num_classes, ignore_index=IGNORE)
        if task == "depth":
            return DepthMeter()
        return NormalMeter()


_TRAIN_DEFAULTS = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5, "epochs": 200,
                   "scheduler": {"name": "step", "step_size": 100, "gamma": 0.5}}


@PROBLEMS.register("nyuv2", "nyu")
class NYUv2(DenseProblem):
    """NYUv2 (Silberman et al., ECCV 2012): 13-class segmentation, depth and surface normals, 288x384."""

    tasks = ("segmentation", "depth", "normal")
    num_classes = 13
    task_folders = {"segmentation": ("label",), "depth": ("depth",), "normal": ("normal",)}
    paper_sizes = (795, 654)
    paper_shape = (288, 384)
    # evaluate in batches of 32 (not the trainer's default of 256): bounds the memory of full-size ResNet-50 maps
    defaults: ClassVar[dict[str, Any]] = {**_TRAIN_DEFAULTS, "batch_size": 8, "eval_batch_size": 32}


@PROBLEMS.register("cityscapes")
class CityScapes(DenseProblem):
    """CityScapes (Cordts et al., CVPR 2016): 7-class segmentation and depth, 128x256."""

    tasks = ("segmentation", "depth")
    num_classes = 7
    task_folders = {"segmentation": ("label", "label_7"), "depth": ("depth",)}
    paper_sizes = (2975, 500)
    paper_shape = (128, 256)
    defaults: ClassVar[dict[str, Any]] = {**_TRAIN_DEFAULTS, "batch_size": 64, "eval_batch_size": 128}
