"""Office-31 and Office-Home: multi-input classification, one task per domain.

Set up as in the RLW paper (Lin et al., TMLR 2022, Sec. 5.3, with LibMTL): each domain is a task with
its own images (``multi_input``); an ImageNet-pretrained ResNet-18 followed by a shared
``FC(512)-BN-ReLU-Dropout(0.5)`` layer, then one linear head per domain; cross-entropy; accuracy per
domain (the paper reports their average); Adam, learning rate 1e-4, weight decay 1e-5.

* ``office31`` (Saenko et al., ECCV 2010): domains ``amazon``, ``dslr``, ``webcam``; 31 classes.
* ``officehome`` (Venkateswara et al., CVPR 2017): ``Art``, ``Clipart``, ``Product``, ``Real_World``; 65 classes.

On-disk format: list files ``{domain}_{train|val|test}.txt`` in ``lists`` (default: the data root),
one ``relative/path label`` per line (the label is the last field, so paths may hold spaces), each path
resolved against the data root. Images of any size.

Transforms (``image_size`` s, 224 by default; ImageNet mean/std normalisation): evaluation resizes to
``s x s`` as the paper does. Training with ``augment: true`` (default) resizes to
``round(s * 256 / 224)`` square, takes a random ``s x s`` crop and a random horizontal flip;
``augment: false`` trains on the evaluation transform.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from study.encoders import resnet_backbone
from study.errors import DataError
from study.problems import PROBLEMS
from study.problems.base import AccuracyMeter, Metric, Problem
from study.problems.dense import drop_incomplete, loader_batches

SPLITS = ("train", "val", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_list(path: str) -> list[tuple[str, int]]:
    """Parse a list file: ``[(relative path, label)]``. ``ValueError`` names the bad line."""
    items = []
    with open(path) as f:
        for k, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}: line {k} should be '<relative path> <label>', got {line[:60]!r}")
            try:
                label = int(parts[1])
            except ValueError:
                raise ValueError(f"{path}: line {k} ends with {parts[1]!r}, not an integer label") from None
            items.append((parts[0], label))
    return items


def make_transform(image_size: int, train: bool, augment: bool):
    from torchvision import transforms as T

    tail = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train and augment:
        big = int(round(image_size * 256 / 224))
        return T.Compose([T.Resize((big, big)), T.RandomCrop(image_size), T.RandomHorizontalFlip(), *tail])
    return T.Compose([T.Resize((image_size, image_size)), *tail])


class ImageList(Dataset):
    """``(image tensor, label)`` pairs from a list of files."""

    def __init__(self, paths: list[str], labels: list[int], transform):
        self.paths = paths
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), self.labels[i]


class OfficeProblem(Problem):
    """Shared reader and model of the Office-31 / Office-Home multi-input problems."""

    multi_input = True
    num_classes: ClassVar[int]
    domains: ClassVar[tuple[str, ...]]
    defaults: ClassVar[dict[str, Any]] = {
        "optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5, "batch_size": 64, "epochs": 100,
    }
    resources: ClassVar[dict[str, float]] = {"cpu": 4, "gpu": 1}

    def __init__(self, root: str | None = None, lists: str | None = None, image_size: int = 224,
                 augment: bool = True, pretrained: bool = True, num_workers: int = 4):
        for key, v in (("root", root), ("lists", lists)):
            if v is not None and (not isinstance(v, str) or not v):
                raise ValueError(f"{key} must be a folder path, got {v!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
        for key, v in (("augment", augment), ("pretrained", pretrained)):
            if not isinstance(v, bool):
                raise ValueError(f"{key} must be true or false, got {v!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        self.root = os.path.expanduser(root) if root else None
        self.lists = os.path.expanduser(lists) if lists else self.root
        self.image_size = image_size
        self.augment = augment
        self.pretrained = pretrained
        self.num_workers = num_workers
        self.tasks = tuple(self.domains)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Per-sample input shape (architectures size gates and probe stages with it)."""
        return (3, self.image_size, self.image_size)

    def metrics(self) -> dict[str, tuple[Metric, ...]]:
        return {t: (Metric("accuracy", True),) for t in self.tasks}

    # -- data -------------------------------------------------------------------------------
    def list_path(self, domain: str, split: str) -> str:
        return os.path.join(self.lists, f"{domain}_{split}.txt")

    def check(self) -> None:
        if not self.root:
            raise DataError(f"{self.name}: problem.root is not set; point it at the folder the list files' "
                            f"paths are relative to")
        if not os.path.isdir(self.root):
            raise DataError(f"{self.name}: data folder {self.root} does not exist")
        for domain in self.domains:
            for split in SPLITS:
                path = self.list_path(domain, split)
                if not os.path.isfile(path):
                    raise DataError(
                        f"{self.name}: list file {path} is missing; expected {{domain}}_{{train,val,test}}.txt "
                        f"for domains {', '.join(self.domains)} (one 'relative/path label' per line) in "
                        f"{self.lists} (problem.lists)"
                    )

    def read_split(self, domain: str, split: str) -> tuple[list[str], list[int]]:
        path = self.list_path(domain, split)
        try:
            items = read_list(path)
        except ValueError as exc:
            raise DataError(f"{self.name}: {exc}") from None
        if not items:
            raise DataError(f"{self.name}: list file {path} is empty")
        bad = [(p, y) for p, y in items if not 0 <= y < self.num_classes]
        if bad:
            raise DataError(f"{self.name}: {path} has label {bad[0][1]} for {bad[0][0]}; labels must be in "
                            f"0..{self.num_classes - 1}")
        return [os.path.join(self.root, p) for p, _ in items], [y for _, y in items]

    def load(self, seed: int) -> dict[str, Any]:
        self.check()
        out: dict[str, Any] = {}
        for split in SPLITS:
            transform = make_transform(self.image_size, split == "train", self.augment)
            out[split] = {}
            for domain in self.domains:
                paths, labels = self.read_split(domain, split)
                out[split][domain] = ImageList(paths, labels, transform)
        return out

    def batches(self, data, batch_size: int, *, shuffle: bool, generator):
        yield from loader_batches(data, batch_size, shuffle=shuffle, generator=generator,
                                  num_workers=self.num_workers,
                                  drop_last=drop_incomplete(len(data), batch_size, shuffle))

    # -- model ------------------------------------------------------------------------------
    def build_encoder(self) -> nn.Module:
        return resnet_backbone("resnet18", pretrained=self.pretrained, head=(512, 0.5))

    def encoder_out_features(self) -> int:
        return 512

    def build_decoder(self, task: str) -> nn.Module:
        return nn.Linear(512, self.num_classes)

    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def new_meter(self, task: str) -> AccuracyMeter:
        return AccuracyMeter()


@PROBLEMS.register("office31", "office-31")
class Office31(OfficeProblem):
    """Office-31: amazon, dslr, webcam; 31 classes; ImageNet ResNet-18 + FC(512)-BN-ReLU-Dropout."""

    num_classes = 31
    domains = ("amazon", "dslr", "webcam")
    tasks = domains


@PROBLEMS.register("officehome", "office-home")
class OfficeHome(OfficeProblem):
    """Office-Home: Art, Clipart, Product, Real_World; 65 classes; ImageNet ResNet-18 + FC(512)-BN-ReLU-Dropout."""

    num_classes = 65
    domains = ("Art", "Clipart", "Product", "Real_World")
    tasks = domains
