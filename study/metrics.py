"""Dense-prediction metrics, accumulated over a whole split (never averaged over batches).

Every meter implements ``update(output, target)`` / ``compute() -> dict``. ``update`` only adds to
running sums on the output's device (no host synchronisation); ``compute`` reads them once.

* :class:`SegmentationMeter` - mean IoU and pixel accuracy from one confusion matrix pooled over the
  split. Pixels labelled ``ignore_index`` (-1) are left out whatever the prediction there. A class
  absent from both the labels and the predictions of the *whole split* (empty union) is left out of the
  mean, so labels ``[[0, -1], [1, -1]]`` predicted ``[[0, 0], [1, 1]]`` give mIoU 1.0.
* :class:`DepthMeter` - absolute error ``mean |d^ - d|`` and relative error ``mean |d^ - d| / |d|``
  over the valid (non-zero) depth pixels of the split. A split with no valid pixel is an error.
* :class:`NormalMeter` - angle between predicted and true normals, in degrees, via ``acos`` of the
  clamped dot product of the unit vectors (computed in float64, so identical directions give 0).
  A pixel is valid when *any* component of its label is non-zero (a sum test would drop e.g.
  ``(0.7071, -0.7071, 0)``). Reports the mean and the median angle and the fraction of valid pixels
  with angle < 11.25, 22.5 and 30 degrees. The median comes from a histogram of the angles with
  bins of ``1e-3`` degree that also sums the angles falling in each bin; the median is reported as
  the mean angle of the bin holding the middle order statistic(s), so it is within 1e-3 degree of the
  exact median of the split (exact when that bin holds one distinct value), and a split's angles are
  never all held in memory.

These are the NYUv2 / CityScapes metrics of MTAN (Liu et al., CVPR 2019) as used by the RLW paper
(Lin et al., TMLR 2022, Sec. 5), with the pooling and masking stated above.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)


def _threshold_name(t: float) -> str:
    return f"within_{t:g}"


class SegmentationMeter:
    """mIoU and pixel accuracy from a ``C x C`` confusion matrix (rows: label, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = -1):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion: Tensor | None = None
        self.out_of_range: Tensor | None = None

    def update(self, output: Tensor, target: Tensor) -> None:
        """``output``: logits ``(B, C, H, W)`` (or predicted labels ``(B, H, W)``); ``target``: ``(B, H, W)``."""
        c = self.num_classes
        pred = output.argmax(dim=1) if output.dim() == target.dim() + 1 else output
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
        if self.confusion is None:
            self.confusion = torch.zeros(c * c, dtype=torch.long, device=target.device)
            self.out_of_range = torch.zeros((), dtype=torch.long, device=target.device)
        labelled = target != self.ignore_index
        in_range = labelled & (target >= 0) & (target < c) & (pred >= 0) & (pred < c)
        self.out_of_range += (labelled & ~in_range).sum()
        index = torch.where(in_range, target * c + pred, torch.zeros_like(target))
        self.confusion.scatter_add_(0, index, in_range.long())

    def matrix(self) -> Tensor:
        """The pooled confusion matrix (rows: label, columns: prediction), on the CPU."""
        if self.confusion is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        return self.confusion.view(self.num_classes, self.num_classes).cpu()

    def compute(self) -> dict[str, float]:
        if self.out_of_range is not None and int(self.out_of_range) > 0:
            raise ValueError(
                f"segmentation: {int(self.out_of_range)} labels or predictions outside 0..{self.num_classes - 1} "
                f"(and not the ignore label {self.ignore_index}); run `litmus check-data` on the data folder"
            )
        conf = self.matrix().double()
        total = conf.sum()
        if total == 0:
            raise ValueError("segmentation: no labelled pixel in the split (all ignored); mIoU is undefined")
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        present = union > 0
        iou = tp[present] / union[present]
        return {"miou": float(iou.mean()), "pixel_accuracy": float(tp.sum() / total)}


class DepthMeter:
    """Absolute and relative depth error over the valid (non-zero) pixels of a split."""

    def __init__(self) -> None:
        self.abs_sum: Tensor | None = None
        self.rel_sum: Tensor | None = None
        self.count: Tensor | None = None

    def update(self, output: Tensor, target: Tensor) -> None:
        """``output`` and ``target``: ``(B, 1, H, W)`` (or any equal shapes); zero target = no depth."""
        if output.shape != target.shape:
            raise ValueError(f"depth: prediction shape {tuple(output.shape)} != label shape {tuple(target.shape)}")
        out, tgt = output.double(), target.double()
        valid = tgt != 0
        diff = (out - tgt).abs()
        if self.count is None:
            zero = torch.zeros((), dtype=torch.float64, device=tgt.device)
            self.abs_sum, self.rel_sum, self.count = zero.clone(), zero.clone(), zero.clone()
        self.abs_sum += torch.where(valid, diff, 0.0).sum()
        self.rel_sum += torch.where(valid, diff / torch.where(valid, tgt.abs(), 1.0), 0.0).sum()
        self.count += valid.sum()

    def compute(self) -> dict[str, float]:
        n = 0.0 if self.count is None else float(self.count)
        if n == 0:
            raise ValueError("depth: no valid (non-zero) depth pixel in the split; abs/rel errors are undefined")
        return {"abs_err": float(self.abs_sum) / n, "rel_err": float(self.rel_sum) / n}


class NormalMeter:
    """Angle errors (degrees) of surface normals over the valid pixels of a split."""

    BIN = 1e-3  # degrees per histogram bin for the median

    def __init__(self, thresholds: tuple[float, ...] = NORMAL_THRESHOLDS):
        self.thresholds = tuple(float(t) for t in thresholds)
        self.n_bins = int(math.ceil(180.0 / self.BIN)) + 1
        self.hist: Tensor | None = None
        self.bin_sum: Tensor | None = None
        self.angle_sum: Tensor | None = None
        self.within: Tensor | None = None

    @staticmethod
    def angles(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Per-pixel angle in degrees (float64) and validity mask; channel dimension 1."""
        valid = (target != 0).any(dim=1)
        p = F.normalize(output.double(), dim=1)
        g = F.normalize(target.double(), dim=1)
        cos = (p * g).sum(dim=1).clamp(-1.0, 1.0)
        return torch.rad2deg(torch.acos(cos)), valid

    def update(self, output: Tensor, target: Tensor) -> None:
        """``output`` and ``target``: ``(B, 3, H, W)``; an all-zero label vector = no normal."""
        if output.shape != target.shape:
            raise ValueError(f"normal: prediction shape {tuple(output.shape)} != label shape {tuple(target.shape)}")
        ang, valid = self.angles(output, target)
        ang, valid = ang.reshape(-1), valid.reshape(-1)
        if self.hist is None:
            dev = ang.device
            self.hist = torch.zeros(self.n_bins, dtype=torch.long, device=dev)
            self.bin_sum = torch.zeros(self.n_bins, dtype=torch.float64, device=dev)
            self.angle_sum = torch.zeros((), dtype=torch.float64, device=dev)
            self.within = torch.zeros(len(self.thresholds), dtype=torch.long, device=dev)
        bins = (ang / self.BIN).floor().long().clamp(0, self.n_bins - 1)
        self.hist.scatter_add_(0, bins, valid.long())
        self.bin_sum.scatter_add_(0, bins, torch.where(valid, ang, 0.0))
        self.angle_sum += torch.where(valid, ang, 0.0).sum()
        for k, t in enumerate(self.thresholds):
            self.within[k] += (valid & (ang < t)).sum()

    def _median(self, hist: Tensor, bin_sum: Tensor, n: int) -> float:
        cum = hist.cumsum(0)
        # as numpy.median: the mean of the order statistics k_lo and k_hi (1-based; equal when n is odd),
        # each estimated by the mean angle of the bin that holds it
        k_lo, k_hi = (n + 1) // 2, n // 2 + 1
        b_lo = int(torch.searchsorted(cum, torch.tensor(k_lo)))
        b_hi = int(torch.searchsorted(cum, torch.tensor(k_hi)))
        v_lo = float(bin_sum[b_lo]) / int(hist[b_lo])
        v_hi = float(bin_sum[b_hi]) / int(hist[b_hi])
        return (v_lo + v_hi) / 2

    def compute(self) -> dict[str, float]:
        if self.hist is None or int(self.hist.sum()) == 0:
            raise ValueError("normal: no valid (non-zero) normal label in the split; angle errors are undefined")
        hist = self.hist.cpu()
        n = int(hist.sum())
        out = {"mean_angle": float(self.angle_sum) / n, "median_angle": self._median(hist, self.bin_sum.cpu(), n)}
        for k, t in enumerate(self.thresholds):
            out[_threshold_name(t)] = int(self.within[k]) / n
        return out
