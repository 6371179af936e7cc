"""Fault injection for tests: user classes referenced from specs as ``tests.faults:Class``."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from study.weighting.base import LossWeighting


class NaNAfter(LossWeighting):
    """Equal weights for ``steps`` training steps, then NaN: the trial diverges at a known epoch."""

    def __init__(self, num_tasks: int, steps: int = 4):
        super().__init__(num_tasks)
        self.steps = steps
        self.calls = 0

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        self.calls += 1
        w = torch.ones_like(losses)
        return w * float("nan") if self.calls > self.steps else w


class RaiseAt(LossWeighting):
    """Equal weights, then a crash (not a divergence) at step ``step``: an errored trial."""

    def __init__(self, num_tasks: int, step: int = 2, kind: str = "runtime"):
        super().__init__(num_tasks)
        self.step = step
        self.kind = kind
        self.calls = 0

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        self.calls += 1
        if self.calls >= self.step:
            if self.kind == "oom":  # what the CUDA caching allocator raises
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                             "capacity of 79.19 GiB of which 1.06 GiB is free.")
            if self.kind == "data":  # what a problem's reader raises when a file is missing on this node
                from study.errors import DataError

                raise DataError("nyuv2: /data/nyuv2/train/depth/17.npy is missing on this node")
            raise RuntimeError(f"injected failure at step {self.calls}")
        return torch.ones_like(losses)


class CrashOnce(LossWeighting):
    """Equal weights; at training step ``at_step``, once per ``marker`` file: truncate every checkpoint
    file (``state.pt``) under ``truncate_under``, then SIGKILL this process (a node dying mid-epoch right
    after a crash damaged its last checkpoint). Without the marker's absence it is plain EW."""

    def __init__(self, num_tasks: int, at_step: int = 10, marker: str = "", truncate_under: str = ""):
        super().__init__(num_tasks)
        self.at_step, self.marker, self.truncate_under = at_step, marker, truncate_under
        self.calls = 0

    def forward(self, losses: Tensor, rng: np.random.Generator) -> Tensor:
        import os
        import signal
        from pathlib import Path

        self.calls += 1
        if self.calls == self.at_step and self.marker and not os.path.exists(self.marker):
            Path(self.marker).write_text("crashed")
            if self.truncate_under:
                for f in Path(self.truncate_under).rglob("state.pt"):
                    f.write_bytes(f.read_bytes()[:100])
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.ones_like(losses)
