"""Writers of tiny data sets in each exact on-disk format the vision problems read.

Each writer takes a folder, fills it like the real release (same file names, layouts and encodings, a
few small samples) and returns what a test needs to know about it.
"""

from __future__ import annotations

import os

import numpy as np

from study.problems.celeba import ATTRIBUTES


def write_dense(root: str, kind: str = "nyuv2", n_train: int = 10, n_test: int = 4, hw: tuple[int, int] = (32, 32),
                seed: int = 0, label_folder: str = "label") -> dict:
    """The preprocessed NYUv2 / CityScapes release: ``root/{train,val}/{image,label,depth[,normal]}/{i}.npy``.

    Labels are float arrays with -1 for ignored pixels (as in the release); depth has a zero (invalid)
    border column; normals are unit vectors with an all-zero (invalid) first row.
    """
    rng = np.random.default_rng(seed)
    classes = 13 if kind == "nyuv2" else 7
    h, w = hw
    folders = {"image": "image", "label": label_folder, "depth": "depth"}
    if kind == "nyuv2":
        folders["normal"] = "normal"
    for split, n in (("train", n_train), ("val", n_test)):
        for folder in folders.values():
            os.makedirs(os.path.join(root, split, folder), exist_ok=True)
        for i in range(n):
            d = os.path.join(root, split)
            np.save(os.path.join(d, "image", f"{i}.npy"), rng.random((h, w, 3), dtype=np.float32))
            label = rng.integers(-1, classes, size=(h, w)).astype(np.float32)
            np.save(os.path.join(d, folders["label"], f"{i}.npy"), label)
            depth = rng.uniform(0.5, 5.0, size=(h, w, 1)).astype(np.float32)
            depth[:, 0] = 0.0
            np.save(os.path.join(d, "depth", f"{i}.npy"), depth)
            if kind == "nyuv2":
                normal = rng.normal(size=(h, w, 3)).astype(np.float32)
                normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
                normal[0] = 0.0
                np.save(os.path.join(d, "normal", f"{i}.npy"), normal)
    return {"classes": classes, "n_train": n_train, "n_test": n_test, "hw": hw}


def write_celeba(root: str, sizes: tuple[int, int, int] = (8, 4, 4), fmt: str = "jpg",
                 image_hw: tuple[int, int] = (27, 22), seed: int = 0) -> dict:
    """The official CelebA layout: ``Anno/list_attr_celeba.txt``, ``Eval/list_eval_partition.txt`` and
    aligned images ``Img/img_align_celeba/NNNNNN.jpg`` (or ``Img/img_align_celeba_png/NNNNNN.png``).
    Attribute rows use the release's padding (two spaces before a positive value)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    n = sum(sizes)
    files = [f"{k + 1:06d}.jpg" for k in range(n)]
    values = rng.choice([-1, 1], size=(n, len(ATTRIBUTES)))
    os.makedirs(os.path.join(root, "Anno"), exist_ok=True)
    os.makedirs(os.path.join(root, "Eval"), exist_ok=True)
    with open(os.path.join(root, "Anno", "list_attr_celeba.txt"), "w") as f:
        f.write(f"{n}\n" + " ".join(ATTRIBUTES) + " \n")
        for name, row in zip(files, values):
            f.write(name + " " + " ".join(f"{v:2d}" for v in row) + "\n")
    parts = np.repeat([0, 1, 2], sizes)
    with open(os.path.join(root, "Eval", "list_eval_partition.txt"), "w") as f:
        for name, p in zip(files, parts):
            f.write(f"{name} {p}\n")
    folder = os.path.join(root, "Img", "img_align_celeba" if fmt == "jpg" else "img_align_celeba_png")
    os.makedirs(folder, exist_ok=True)
    for name in files:
        pixels = rng.integers(0, 256, size=(*image_hw, 3), dtype=np.uint8)
        stem = os.path.splitext(name)[0]
        Image.fromarray(pixels).save(os.path.join(folder, f"{stem}.{fmt}"))
    return {"files": files, "values": values, "partition": parts}


def write_office(root: str, domains: tuple[str, ...] = ("amazon", "dslr", "webcam"), num_classes: int = 31,
                 sizes: dict[str, int] | None = None, seed: int = 0, lists: str | None = None) -> dict:
    """Office-style data: images under ``root/{domain}/images/{class}/`` of varied sizes and list files
    ``{domain}_{train|val|test}.txt`` (``relative/path label``) in ``lists`` (default ``root``)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = sizes or {"train": 5, "val": 2, "test": 3}
    lists = lists or root
    os.makedirs(lists, exist_ok=True)
    written = {}
    for domain in domains:
        for split, n in sizes.items():
            lines = []
            for k in range(n):
                label = int(rng.integers(0, num_classes))
                rel = os.path.join(domain, "images", f"class {label}", f"{split}_{k}.jpg")
                os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
                hw = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
                Image.fromarray(rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)).save(os.path.join(root, rel))
                lines.append(f"{rel} {label}")
            with open(os.path.join(lists, f"{domain}_{split}.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
            written[(domain, split)] = lines
    return written
