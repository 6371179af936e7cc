"""CelebA: 40 binary face attributes, one task each (Liu et al., ICCV 2015).

Set up as in the RLW paper (Lin et al., TMLR 2022, Sec. 5.2, after Sener & Koltun, NeurIPS 2018):
aligned faces resized to 64x64, a ResNet-18 trained from scratch (512-d pooled feature) shared by
40 linear 2-way heads, cross-entropy per attribute, accuracy per attribute (the paper reports their
average); Adam, learning rate 1e-3, batch 512.

On-disk format (the official release)::

    root/Anno/list_attr_celeba.txt       line 1: count; line 2: the 40 attribute names;
                                         then "<file> <+-1 x 40>" per image
    root/Eval/list_eval_partition.txt    "<file> <0|1|2>" (train / val / test)
    root/Img/img_align_celeba/*.jpg      or root/Img/img_align_celeba_png/*.png (same stems)

The official partition gives train/val/test (162,770 / 19,867 / 19,962 images).

Reading: images are decoded and resized in DataLoader workers (``num_workers``). With ``cache_dir``
set, each split is decoded once into a ``uint8`` array ``{cache_dir}/celeba_{size}_{split}.npy``
(written atomically, shared by every trial), then memory-mapped and batched by slicing.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from study.encoders import resnet_backbone
from study.errors import DataError
from study.problems import PROBLEMS
from study.problems.base import AccuracyMeter, Metric, Problem

ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby",
    "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male",
    "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose",
    "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair",
    "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
SPLITS = ("train", "val", "test")
PAPER_SIZES = {"train": 162770, "val": 19867, "test": 19962}
ATTR_FILE = os.path.join("Anno", "list_attr_celeba.txt")
PARTITION_FILE = os.path.join("Eval", "list_eval_partition.txt")
IMAGE_DIRS = ((os.path.join("Img", "img_align_celeba"), ".jpg"), (os.path.join("Img", "img_align_celeba_png"), ".png"))


def find_image_dir(root: str) -> tuple[str, str] | None:
    """``(folder, extension)`` of the aligned images, or None."""
    for rel, ext in IMAGE_DIRS:
        path = os.path.join(root, rel)
        if os.path.isdir(path):
            return path, ext
    return None


def read_attributes(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """Parse ``list_attr_celeba.txt``: (attribute names, file names, values (N, 40) int8 in {-1, 1}).

    Rows are parsed by pandas' C reader (about a second for the 202,599 rows of the release). Raises
    ``ValueError`` naming the offending line on a malformed file.
    """
    import pandas as pd

    with open(path) as f:
        first, header = f.readline(), f.readline()
    try:
        count = int(first.strip())
    except ValueError:
        raise ValueError(f"{path}: line 1 should be the number of images, got {first.strip()[:40]!r}") from None
    names = header.split()
    if not names:
        raise ValueError(f"{path}: line 2 should list the attribute names")
    try:
        table = pd.read_csv(path, sep=r"\s+", skiprows=2, header=None, dtype={0: str}, engine="c",
                            skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        table = pd.DataFrame(columns=range(len(names) + 1))
    except (pd.errors.ParserError, ValueError) as exc:
        raise ValueError(f"{path}: a row is malformed ({' '.join(str(exc).split())[:80]})") from None
    if len(table) != count:
        raise ValueError(f"{path}: line 1 announces {count} images but {len(table)} rows follow")
    if table.shape[1] != len(names) + 1 or table.isna().any().any():
        k = int(np.argmax(table.isna().any(axis=1).to_numpy())) if table.isna().any().any() else 0
        raise ValueError(f"{path}: line {k + 3} has fewer than {len(names)} values")
    raw = table.iloc[:, 1:]
    if not all(pd.api.types.is_numeric_dtype(dt) for dt in raw.dtypes):  # a non-numeric token somewhere
        raw = raw.apply(pd.to_numeric, errors="coerce")
    raw = raw.to_numpy()
    ok = (raw == 1) | (raw == -1)
    if not ok.all():
        k, j = (int(i) for i in np.argwhere(~ok)[0])
        raise ValueError(f"{path}: line {k + 3} has a value other than -1/1 ({str(table.iat[k, j + 1])!r})")
    values = raw.astype(np.int8)
    return names, table.iloc[:, 0].tolist(), values


def read_partition(path: str) -> dict[str, int]:
    """Parse ``list_eval_partition.txt``: file name -> 0 (train) / 1 (val) / 2 (test)."""
    out = {}
    with open(path) as f:
        for k, ln in enumerate(f, start=1):
            parts = ln.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{path}: line {k} should be '<file> <0|1|2>', got {ln.strip()[:60]!r}")
            out[parts[0]] = int(parts[1])
    return out


def load_image(path: str, size: int) -> Tensor:
    """An RGB image resized to ``size x size`` (bilinear), as ``uint8 (3, size, size)``."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    with Image.open(path) as img:
        img = img.convert("RGB").resize((size, size), Image.BILINEAR)
        return pil_to_tensor(img)


class CelebAImages(Dataset):
    """``(image (3,s,s) float in [0, 1], attributes (T,) int64 in {0, 1})`` decoded from files."""

    def __init__(self, paths: list[str], labels: np.ndarray, size: int):
        self.paths = paths
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return load_image(self.paths[i], self.size).float().div_(255), self.labels[i]


class CachedImages:
    """A decoded split: memory-mapped ``uint8 (N, 3, s, s)`` images and ``(N, T)`` labels; batched by slicing."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batches(self, batch_size: int, shuffle: bool, generator):
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = np.sort(order[start:start + batch_size].numpy())
            x = torch.from_numpy(np.ascontiguousarray(self.images[idx])).float().div_(255)
            yield x, self.labels[torch.from_numpy(idx)]


def build_cache(ds: CelebAImages, path: str, num_workers: int) -> None:
    """Decode ``ds`` once into ``path`` (``.npy`` uint8), written to a temporary file and renamed."""
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(ds), 3, ds.size, ds.size))
    start = 0
    loader = DataLoader(_Uint8(ds), batch_size=256, num_workers=num_workers)
    for x in loader:
        arr[start:start + len(x)] = x.numpy()
        start += len(x)
    arr.flush()
    del arr
    os.replace(tmp, path)


class _Uint8(Dataset):
    def __init__(self, ds: CelebAImages):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Tensor:
        return load_image(self.ds.paths[i], self.ds.size)


@PROBLEMS.register("celeba")
class CelebA(Problem):
    """CelebA: 40 binary face attributes from 64x64 aligned faces; ResNet-18 from scratch, 2-way heads."""

    tasks = ATTRIBUTES
    defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 512, "epochs": 100,
    }
    resources: ClassVar[dict[str, float]] = {"cpu": 8, "gpu": 1}

    def __init__(self, root: str | None = None, image_size: int = 64, attributes: list[str] | None = None,
                 pretrained: bool = False, num_workers: int = 8, cache_dir: str | None = None):
        if root is not None and (not isinstance(root, str) or not root):
            raise ValueError(f"root must be a path to the CelebA folder, got {root!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
        if attributes is not None:
            if not isinstance(attributes, (list, tuple)) or not attributes:
                raise ValueError(f"attributes must be a non-empty list of CelebA attribute names, got {attributes!r}")
            unknown = [a for a in attributes if a not in ATTRIBUTES]
            if unknown:
                raise ValueError(f"attributes: unknown CelebA attribute {unknown[0]!r}; valid: {', '.join(ATTRIBUTES)}")
            if len(set(attributes)) != len(attributes):
                raise ValueError("attributes must not repeat a name")
            self.tasks = tuple(attributes)
        if not isinstance(pretrained, bool):
            raise ValueError(f"pretrained must be true or false, got {pretrained!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if cache_dir is not None and (not isinstance(cache_dir, str) or not cache_dir):
            raise ValueError(f"cache_dir must be a folder path or null, got {cache_dir!r}")
        self.root = os.path.expanduser(root) if root else None
        self.image_size = image_size
        self.pretrained = pretrained
        self.num_workers = num_workers
        self.cache_dir = os.path.expanduser(cache_dir) if cache_dir else None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Per-sample input shape (architectures size gates and probe stages with it)."""
        return (3, self.image_size, self.image_size)

    def metrics(self) -> dict[str, tuple[Metric, ...]]:
        return {t: (Metric("accuracy", True),) for t in self.tasks}

    # -- data -------------------------------------------------------------------------------
    def check(self) -> None:
        if not self.root:
            raise DataError("celeba: problem.root is not set; point it at the folder holding Anno/, Eval/ and Img/")
        expected = (f"expected {ATTR_FILE}, {PARTITION_FILE} and Img/img_align_celeba/ (jpg) "
                    f"or Img/img_align_celeba_png/ under it")
        if not os.path.isdir(self.root):
            raise DataError(f"celeba: data folder {self.root} does not exist; {expected}")
        for rel in (ATTR_FILE, PARTITION_FILE):
            if not os.path.isfile(os.path.join(self.root, rel)):
                raise DataError(f"celeba: {os.path.join(self.root, rel)} is missing; {expected}")
        if find_image_dir(self.root) is None:
            raise DataError(f"celeba: no image folder under {self.root}; {expected}")

    def read_index(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """Per split: image paths and 0/1 labels ``(N, T)`` for this problem's attributes."""
        self.check()
        try:
            names, files, values = read_attributes(os.path.join(self.root, ATTR_FILE))
            partition = read_partition(os.path.join(self.root, PARTITION_FILE))
        except ValueError as exc:
            raise DataError(f"celeba: {exc}; run `litmus check-data celeba {self.root}`") from None
        missing = [a for a in self.tasks if a not in names]
        if missing:
            raise DataError(f"celeba: {ATTR_FILE} has no attribute {missing[0]!r}; is it the official file?")
        cols = [names.index(a) for a in self.tasks]
        image_dir, ext = find_image_dir(self.root)
        out = {}
        for code, split in enumerate(SPLITS):
            rows = [k for k, f in enumerate(files) if partition.get(f) == code]
            paths = [os.path.join(image_dir, os.path.splitext(files[k])[0] + ext) for k in rows]
            out[split] = (paths, (values[np.asarray(rows, dtype=np.int64)][:, cols] > 0).astype(np.int8))
        return out

    def load(self, seed: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for split, (paths, labels) in self.read_index().items():
            if not paths:
                raise DataError(f"celeba: the {split} partition is empty; check {PARTITION_FILE}")
            ds = CelebAImages(paths, labels, self.image_size)
            if self.cache_dir:
                os.makedirs(self.cache_dir, exist_ok=True)
                path = os.path.join(self.cache_dir, f"celeba_{self.image_size}_{split}.npy")
                if not self._cache_ok(path, len(ds)):
                    build_cache(ds, path, self.num_workers)
                out[split] = CachedImages(np.load(path, mmap_mode="r"), labels)
            else:
                out[split] = ds
        return out

    def _cache_ok(self, path: str, n: int) -> bool:
        try:
            return np.load(path, mmap_mode="r").shape == (n, 3, self.image_size, self.image_size)
        except (OSError, ValueError):
            return False

    def batches(self, data, batch_size: int, *, shuffle: bool, generator):
        """Batches ``(x, {attribute: y})``; labels travel as one ``(B, T)`` tensor until split here."""
        if isinstance(data, CachedImages):
            it = data.batches(batch_size, shuffle, generator)
        else:
            it = DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator,
                            num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
        for x, y in it:
            yield x, {t: y[:, k] for k, t in enumerate(self.tasks)}

    # -- model ------------------------------------------------------------------------------
    def build_encoder(self) -> nn.Module:
        return resnet_backbone("resnet18", pretrained=self.pretrained, pooled=True)

    def encoder_out_features(self) -> int:
        return 512

    def build_decoder(self, task: str) -> nn.Module:
        return nn.Linear(512, 2)

    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def new_meter(self, task: str) -> AccuracyMeter:
        return AccuracyMeter()
