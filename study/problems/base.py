"""The problem interface: data, encoder, decoders, losses and metrics of one MTL benchmark.

A problem is cheap to construct (it only stores and checks its parameters); data is read by
:meth:`Problem.load`, models are built by :meth:`Problem.build_encoder` / :meth:`Problem.build_decoder`.

Batches:
* single-input problems yield ``(x, {task: y})`` from one loader;
* multi-input problems (``multi_input = True``: each task has its own images, e.g. Office-31)
  yield ``{task: (x, y)}``, one loader per task zipped together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Metric:
    """One metric of one task and its direction."""

    name: str
    higher_is_better: bool


class MetricAccumulator(Protocol):
    """Accumulates a task's metrics over a whole split (never an average of per-batch averages)."""

    def update(self, output: Tensor, target: Tensor) -> None: ...

    def compute(self) -> dict[str, float]: ...


class AccuracyMeter:
    """Top-1 accuracy pooled over the split."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def update(self, output: Tensor, target: Tensor) -> None:
        self.correct += int((output.argmax(dim=-1) == target).sum())
        self.total += int(target.numel())

    def compute(self) -> dict[str, float]:
        if self.total == 0:
            raise ValueError("accuracy of an empty split is undefined")
        return {"accuracy": self.correct / self.total}


class Problem:
    """Base class of every problem. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    #: task names, in a fixed order (the order of the loss vector)
    tasks: tuple[str, ...] = ()
    #: each task its own input batch (Office, XTREME) vs one shared input (NYUv2, CelebA)
    multi_input: ClassVar[bool] = False
    #: training defaults from the paper, overridable in the spec's ``train`` section
    defaults: ClassVar[dict[str, Any]] = {}
    #: resources a trial of this problem asks Ray for by default
    resources: ClassVar[dict[str, float]] = {"cpu": 1, "gpu": 0}
    #: encoder kinds (for architectures that need stage-wise access); see study.architectures
    encoder_kind: ClassVar[str] = "cnn"

    # -- description -------------------------------------------------------------------------
    def metrics(self) -> dict[str, tuple[Metric, ...]]:
        """Per task, its metrics with direction, in report order."""
        raise NotImplementedError

    def describe(self) -> str:
        return (self.__doc__ or "").strip().splitlines()[0] if self.__doc__ else self.name

    # -- data --------------------------------------------------------------------------------
    def check(self) -> None:
        """Cheap validation of parameters and data paths at spec load. Raise DataError/SpecError."""

    def load(self, seed: int) -> dict[str, Any]:
        """Return ``{"train": ds, "val": ds, "test": ds}``; multi-input problems return per-task dicts."""
        raise NotImplementedError

    # -- model -------------------------------------------------------------------------------
    def build_encoder(self) -> nn.Module:
        raise NotImplementedError

    def encoder_out_features(self) -> int:
        raise NotImplementedError

    def build_decoder(self, task: str) -> nn.Module:
        raise NotImplementedError

    # -- objectives --------------------------------------------------------------------------
    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def new_meter(self, task: str) -> MetricAccumulator:
        raise NotImplementedError

    # -- iteration ---------------------------------------------------------------------------
    #: DataLoader workers for file-backed datasets
    num_workers: int = 0

    def batches(self, data: Any, batch_size: int, *, shuffle: bool, generator: torch.Generator | None):
        """Iterate one split (or, for multi-input problems, one task's split) in batches."""
        if isinstance(data, TensorPairs):
            yield from in_memory_batches(data, batch_size, shuffle=shuffle, generator=generator)
            return
        from torch.utils.data import DataLoader

        loader = DataLoader(
            data, batch_size=batch_size, shuffle=shuffle, generator=generator,
            num_workers=self.num_workers, persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )
        yield from loader


class TensorPairs(Dataset):
    """A dataset of (x, {task: y}) held in memory as tensors."""

    def __init__(self, x: Tensor, targets: dict[str, Tensor]):
        self.x = x
        self.targets = targets

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int):
        return self.x[i], {t: y[i] for t, y in self.targets.items()}


def in_memory_batches(ds: TensorPairs, batch_size: int, *, shuffle: bool, generator: torch.Generator | None):
    """Yield batches by slicing in-memory tensors: no per-sample Python work."""
    n = len(ds)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield ds.x[idx], {t: y[idx] for t, y in ds.targets.items()}
