"""``multidigits``: two overlapping handwritten digits per image, one task per digit.

Built from scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits, shipped with the package,
so the demo needs no download), composed the way MultiMNIST composes MNIST: one digit in the top-left
corner of a 12x12 canvas, another in the bottom-right corner, overlapping by 4x4 pixels (pixel-wise max).
Tasks: ``left`` and ``right`` digit, 10 classes each, accuracy.

Split rule (identical for every method and seed): the source images are permuted with
``numpy.random.default_rng(split_seed)`` and cut 60/20/20 into train/val/test; every pair in a split is
composed only from that split's source images, so no source image is seen in two splits. Pairs are drawn
with ``default_rng(split_seed + k)`` (k = 1, 2, 3 for train, val, test).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from study.problems import PROBLEMS
from study.problems.base import AccuracyMeter, Metric, Problem, TensorPairs

CANVAS = 12
OFFSET = 4  # the right digit starts at (4, 4): the two 8x8 digits share a 4x4 block
SPLITS = ("train", "val", "test")


def split_sources(n: int, split_seed: int, fractions=(0.6, 0.2, 0.2)) -> dict[str, np.ndarray]:
    """Disjoint index sets over ``n`` source images, by the documented rule."""
    order = np.random.default_rng(split_seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train:n_train + n_val]),
        "test": np.sort(order[n_train + n_val:]),
    }


def compose(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Compose two batches of 8x8 images (N, 8, 8) into (N, 12, 12) canvases, pixel-wise max."""
    n = left.shape[0]
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.float32)
    canvas[:, :8, :8] = left
    canvas[:, OFFSET:OFFSET + 8, OFFSET:OFFSET + 8] = np.maximum(
        canvas[:, OFFSET:OFFSET + 8, OFFSET:OFFSET + 8], right
    )
    return canvas


def make_split(images: np.ndarray, labels: np.ndarray, sources: np.ndarray, n_pairs: int, seed: int):
    """Draw ``n_pairs`` (left, right) pairs from ``sources``; return x (N,1,12,12) in [0,1] and labels."""
    rng = np.random.default_rng(seed)
    li = rng.choice(sources, size=n_pairs, replace=True)
    ri = rng.choice(sources, size=n_pairs, replace=True)
    x = compose(images[li], images[ri]) / 16.0
    return (
        torch.from_numpy(x).unsqueeze(1),
        {"left": torch.from_numpy(labels[li].astype(np.int64)), "right": torch.from_numpy(labels[ri].astype(np.int64))},
        (li, ri),
    )


class DigitsCNN(nn.Module):
    """A small CNN in stages (so stage-wise architectures can hook between them)."""

    def __init__(self, width: int = 32, out_features: int = 128):
        super().__init__()
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
            nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                          nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                          nn.MaxPool2d(2)),
            nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 3 * 3, out_features), nn.ReLU()),
        ])
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


@PROBLEMS.register("multidigits")
class MultiDigits(Problem):
    """Two overlapping scikit-learn digits per 12x12 image; tasks: left digit, right digit (accuracy)."""

    tasks = ("left", "right")
    input_shape = (1, CANVAS, CANVAS)  # per-sample shape, used by architectures that size gates/units from it
    defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 128, "epochs": 5,
    }
    resources: ClassVar[dict[str, float]] = {"cpu": 1, "gpu": 0}

    def __init__(self, n_train: int = 6000, n_val: int = 1500, n_test: int = 1500, split_seed: int = 0,
                 width: int = 32):
        for k, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{k} must be a positive integer, got {v!r}")
        if not isinstance(split_seed, int) or isinstance(split_seed, bool):
            raise ValueError(f"split_seed must be an integer, got {split_seed!r}")
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.split_seed = split_seed
        self.width = width

    def metrics(self) -> dict[str, tuple[Metric, ...]]:
        return {t: (Metric("accuracy", True),) for t in self.tasks}

    def load(self, seed: int) -> dict[str, TensorPairs]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.images.astype(np.float32)
        labels = digits.target
        sources = split_sources(len(images), self.split_seed)
        out = {}
        for k, split in enumerate(SPLITS, start=1):
            x, y, _ = make_split(images, labels, sources[split], self.sizes[split], self.split_seed + k)
            out[split] = TensorPairs(x, y)
        return out

    def build_encoder(self) -> nn.Module:
        return DigitsCNN(self.width)

    def encoder_out_features(self) -> int:
        return 128

    def build_decoder(self, task: str) -> nn.Module:
        return nn.Linear(self.encoder_out_features(), 10)

    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def new_meter(self, task: str) -> AccuracyMeter:
        return AccuracyMeter()
