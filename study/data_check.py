"""``litmus check-data PROBLEM PATH``: validate a data folder before any trial is spent on it.

:func:`check_data` returns one clear line per problem found (empty list: the folder is fine);
:func:`summarize` describes a valid folder (split sizes, shapes, label statistics). Both read the
folder the way the problem's reader does, more thoroughly than ``Problem.check()`` (which only looks
at the layout): every ``.npy`` header is read and every label file scanned for the dense problems;
every listed image is looked for and a few are decoded for CelebA and Office.

Checked, per format:

* NYUv2 / CityScapes: folders present; the same sample ids in every folder of a split; shapes
  (image H x W x 3, label H x W, depth H x W x 1 or H x W, normal H x W x 3, one H x W per split);
  labels integral in ``-1..C-1``; finite values; at least one valid depth / normal pixel.
* CelebA: attribute file well formed (count line, 40 names, +-1 values); partition file covering
  every image with 0/1/2; every image present in ``Img/img_align_celeba`` (or ``_png``); non-empty
  partitions; sample images decodable.
* Office-31 / Office-Home: every ``{domain}_{split}.txt`` present and parseable; labels in range;
  every listed image present; non-empty splits; sample images decodable.

Split sizes that differ from the standard release are reported in the summary, not as errors (tests
and subsets use smaller folders).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from study.errors import DataError, SpecError
from study.problems import PROBLEMS

MAX_LINES = 20  # problems listed before "... and N more"
SAMPLE_DECODES = 3  # images decoded per split / list


class _Report:
    """Collects problem lines (capped) and summary lines."""

    def __init__(self, name: str):
        self.name = name
        self.problems: list[str] = []
        self.extra = 0
        self.summary: list[str] = []

    def error(self, msg: str) -> None:
        if len(self.problems) < MAX_LINES:
            self.problems.append(f"{self.name}: {msg}")
        else:
            self.extra += 1

    def lines(self) -> list[str]:
        return self.problems + ([f"{self.name}: ... and {self.extra} more problems"] if self.extra else [])


# -- NYUv2 / CityScapes ----------------------------------------------------------------------

def _check_dense(cls, path: str) -> _Report:
    from study.problems.dense import carve_validation, sample_ids

    rep = _Report(cls.name)
    problem = cls(root=path, pretrained=False)
    if not os.path.isdir(path):
        rep.error(f"data folder {path} does not exist; {problem._expected()}")
        return rep
    stats = {}
    for split in ("train", "val"):
        split_dir = os.path.join(path, split)
        if not os.path.isdir(split_dir):
            rep.error(f"{split_dir} is missing; {problem._expected()}")
            continue
        folders = {"image": "image"}
        for task, names in cls.task_folders.items():
            folder = problem.folder_of(split_dir, task)
            if folder is None:
                rep.error(f"{os.path.join(split_dir, names[0])} is missing"
                          + (f" (also looked for {', '.join(names[1:])})" if len(names) > 1 else ""))
            else:
                folders[task] = folder
        ids = {t: set(sample_ids(os.path.join(split_dir, f))) for t, f in folders.items()
               if os.path.isdir(os.path.join(split_dir, f))}
        if not ids:
            continue
        union = set().union(*ids.values())
        if not union:
            rep.error(f"{split_dir} holds no {{i}}.npy files")
            continue
        for t, have in ids.items():
            missing = sorted(union - have)
            if missing:
                rep.error(f"{os.path.join(split_dir, folders[t])}: {len(missing)} of {len(union)} samples missing "
                          f"(e.g. {missing[0]}.npy)")
        common = sorted(set.intersection(*ids.values()))
        stats[split] = _scan_dense(rep, cls, split_dir, folders, common)
    if rep.problems:
        return rep
    hws = {s["hw"] for s in stats.values() if s.get("hw")}
    if len(hws) > 1:
        rep.error(f"train/ and val/ images differ in size: {' vs '.join(f'{h}x{w}' for h, w in sorted(hws))}")
        return rep
    n_train, n_test = stats["train"]["n"], stats["val"]["n"]
    fit, val = carve_validation(list(range(n_train)), 0.1, 0)
    (h, w), = hws
    ref_train, ref_test = cls.paper_sizes
    size_note = "" if (n_train, n_test) == cls.paper_sizes else f" (the standard release has {ref_train} / {ref_test})"
    shape_note = "" if (h, w) == cls.paper_shape else f" (the paper uses {cls.paper_shape[0]}x{cls.paper_shape[1]})"
    lines = [
        f"{cls.name} data at {path}: OK",
        f"  train/: {n_train} samples -> {len(fit)} training + {len(val)} validation "
        f"(default rule: val_fraction 0.1, split_seed 0); val/ (test split): {n_test} samples{size_note}",
        f"  images: 3 x {h} x {w}{shape_note}",
    ]
    for split in ("train", "val"):
        s = stats[split]
        parts = [f"labels {s['label_min']}..{s['label_max']}, {s['ignored']:.1%} ignored (-1)",
                 f"depth valid {s['depth_valid']:.1%}"]
        if "normal_valid" in s:
            parts.append(f"normals valid {s['normal_valid']:.1%}")
        lines.append(f"  {split}/: " + "; ".join(parts))
    rep.summary = lines
    return rep


def _scan_dense(rep: _Report, cls, split_dir: str, folders: dict[str, str], ids: list[int]) -> dict:
    """Read every array of a split: shapes, label range, finiteness, valid-pixel fractions."""
    stats: dict = {"n": len(ids), "hw": None}
    label_min, label_max = None, None
    counts = {"pixels": 0, "ignored": 0, "depth_valid": 0, "normal_valid": 0}
    c = cls.num_classes
    for i in ids:
        arrays = {}
        for task, folder in folders.items():
            f = os.path.join(split_dir, folder, f"{i}.npy")
            try:
                arrays[task] = np.load(f, mmap_mode="r")
            except (OSError, ValueError) as exc:
                rep.error(f"{f} cannot be read as a .npy array ({exc})")
        if len(arrays) != len(folders):
            continue
        image = arrays["image"]
        if image.ndim != 3 or image.shape[2] != 3:
            rep.error(f"{os.path.join(split_dir, 'image', f'{i}.npy')} has shape {image.shape}, expected H x W x 3")
            continue
        hw = image.shape[:2]
        if stats["hw"] is None:
            stats["hw"] = hw
        elif stats["hw"] != hw:
            rep.error(f"{os.path.join(split_dir, 'image', f'{i}.npy')} is {hw[0]}x{hw[1]}, "
                      f"other images of {split_dir} are {stats['hw'][0]}x{stats['hw'][1]}")
            continue
        expected = {"segmentation": [hw], "depth": [(*hw, 1), hw], "normal": [(*hw, 3)]}
        ok = True
        for task, a in arrays.items():
            if task != "image" and a.shape not in expected[task]:
                want = " or ".join("x".join(map(str, s)) for s in expected[task])
                rep.error(f"{os.path.join(split_dir, folders[task], f'{i}.npy')} has shape {a.shape}, expected {want}")
                ok = False
        if not ok:
            continue
        for task, a in arrays.items():
            if task != "segmentation" and not np.isfinite(a).all():
                rep.error(f"{os.path.join(split_dir, folders[task], f'{i}.npy')} holds NaN or infinite values")
        label = np.asarray(arrays["segmentation"])
        if not np.isfinite(label).all() or (label != np.round(label)).any():
            rep.error(f"{os.path.join(split_dir, folders['segmentation'], f'{i}.npy')} holds non-integer labels")
            continue
        lo, hi = int(label.min()), int(label.max())
        if lo < -1 or hi > c - 1:
            bad = lo if lo < -1 else hi
            rep.error(f"{os.path.join(split_dir, folders['segmentation'], f'{i}.npy')} has label {bad}; "
                      f"{cls.name} labels are 0..{c - 1} with -1 = ignore")
        labelled = label[label != -1]
        if labelled.size:
            label_min = int(labelled.min()) if label_min is None else min(label_min, int(labelled.min()))
            label_max = int(labelled.max()) if label_max is None else max(label_max, int(labelled.max()))
        counts["pixels"] += label.size
        counts["ignored"] += int((label == -1).sum())
        counts["depth_valid"] += int((np.asarray(arrays["depth"]) != 0).sum())
        if "normal" in arrays:
            counts["normal_valid"] += int((np.asarray(arrays["normal"]) != 0).any(axis=-1).sum())
    pixels = max(counts["pixels"], 1)
    stats.update(label_min=label_min, label_max=label_max, ignored=counts["ignored"] / pixels,
                 depth_valid=counts["depth_valid"] / pixels)
    if "normal" in folders:
        stats["normal_valid"] = counts["normal_valid"] / pixels
    if ids and counts["pixels"]:
        if counts["depth_valid"] == 0:
            rep.error(f"{os.path.join(split_dir, folders['depth'])}: no valid (non-zero) depth pixel")
        if "normal" in folders and counts["normal_valid"] == 0:
            rep.error(f"{os.path.join(split_dir, folders['normal'])}: no valid (non-zero) normal")
        if label_min is None:
            rep.error(f"{os.path.join(split_dir, folders['segmentation'])}: every pixel is ignored (-1)")
    return stats


# -- CelebA ----------------------------------------------------------------------------------

def _decodes(paths: list[str], rep: _Report) -> None:
    from PIL import Image

    picks = sorted({0, len(paths) // 2, len(paths) - 1})[:SAMPLE_DECODES] if paths else []
    for k in picks:
        try:
            with Image.open(paths[k]) as img:
                img.convert("RGB").load()
        except Exception as exc:
            rep.error(f"{paths[k]} cannot be decoded as an image ({type(exc).__name__}: {exc})")


def _check_celeba(cls, path: str) -> _Report:
    from study.problems import celeba as C

    rep = _Report(cls.name)
    if not os.path.isdir(path):
        rep.error(f"data folder {path} does not exist")
        return rep
    attr_file, part_file = os.path.join(path, C.ATTR_FILE), os.path.join(path, C.PARTITION_FILE)
    names = files = values = partition = None
    if not os.path.isfile(attr_file):
        rep.error(f"{attr_file} is missing")
    else:
        try:
            names, files, values = C.read_attributes(attr_file)
        except ValueError as exc:
            rep.error(str(exc))
    if not os.path.isfile(part_file):
        rep.error(f"{part_file} is missing")
    else:
        try:
            partition = C.read_partition(part_file)
        except ValueError as exc:
            rep.error(str(exc))
    found = C.find_image_dir(path)
    if found is None:
        rep.error(f"no image folder: expected {os.path.join(path, C.IMAGE_DIRS[0][0])} (jpg) "
                  f"or {os.path.join(path, C.IMAGE_DIRS[1][0])} (png)")
    if names is not None and tuple(names) != C.ATTRIBUTES:
        missing = [a for a in C.ATTRIBUTES if a not in names]
        rep.error(f"{attr_file}: header should list the 40 CelebA attributes"
                  + (f" (missing {missing[0]!r})" if missing else f" (got {len(names)} names)"))
    if files is None or partition is None:
        return rep
    unassigned = [f for f in files if f not in partition]
    if unassigned:
        rep.error(f"{part_file}: {len(unassigned)} images of {C.ATTR_FILE} have no partition (e.g. {unassigned[0]})")
    by_split = {s: [f for f in files if partition.get(f) == k] for k, s in enumerate(C.SPLITS)}
    for s, fs in by_split.items():
        if not fs:
            rep.error(f"the {s} partition ({C.SPLITS.index(s)}) is empty")
    if found is not None:
        image_dir, ext = found
        present = set(os.listdir(image_dir))
        wanted = [os.path.splitext(f)[0] + ext for f in files]
        missing = [w for w in wanted if w not in present]
        if missing:
            rep.error(f"{image_dir}: {len(missing)} of {len(wanted)} images missing (e.g. {missing[0]})")
        for fs in by_split.values():
            paths = [os.path.join(image_dir, os.path.splitext(f)[0] + ext) for f in fs
                     if os.path.splitext(f)[0] + ext in present]
            _decodes(paths, rep)
    if rep.problems:
        return rep
    sizes = {s: len(fs) for s, fs in by_split.items()}
    note = "" if sizes == C.PAPER_SIZES else " (the official partition has " + " / ".join(
        str(C.PAPER_SIZES[s]) for s in C.SPLITS) + ")"
    positive = (values > 0).mean(axis=0)
    rep.summary = [
        f"celeba data at {path}: OK",
        f"  {len(files)} images in {found[0]} ({found[1][1:]}); train / val / test: "
        + " / ".join(str(sizes[s]) for s in C.SPLITS) + note,
        f"  40 attributes; positive rate {positive.min():.1%}..{positive.max():.1%} "
        f"(lowest {names[int(positive.argmin())]}, highest {names[int(positive.argmax())]})",
    ]
    return rep


# -- Office-31 / Office-Home -----------------------------------------------------------------

def _check_office(cls, path: str, lists: str | None = None) -> _Report:
    from study.problems.office import SPLITS, read_list

    rep = _Report(cls.name)
    if not os.path.isdir(path):
        rep.error(f"data folder {path} does not exist")
        return rep
    lists = lists or path
    sizes: dict[tuple[str, str], int] = {}
    classes: dict[str, set[int]] = {}
    for domain in cls.domains:
        for split in SPLITS:
            f = os.path.join(lists, f"{domain}_{split}.txt")
            if not os.path.isfile(f):
                rep.error(f"list file {f} is missing (one 'relative/path label' per line)")
                continue
            try:
                items = read_list(f)
            except ValueError as exc:
                rep.error(str(exc))
                continue
            if not items:
                rep.error(f"list file {f} is empty")
                continue
            sizes[(domain, split)] = len(items)
            bad = [(p, y) for p, y in items if not 0 <= y < cls.num_classes]
            if bad:
                rep.error(f"{f}: {len(bad)} labels outside 0..{cls.num_classes - 1} (e.g. {bad[0][1]} for {bad[0][0]})")
            classes.setdefault(domain, set()).update(y for _, y in items)
            paths = [os.path.join(path, p) for p, _ in items]
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                rep.error(f"{f}: {len(missing)} of {len(paths)} listed images missing (e.g. {missing[0]})")
            _decodes([p for p in paths if os.path.isfile(p)], rep)
    if rep.problems:
        return rep
    lines = [f"{cls.name} data at {path}: OK" + (f" (lists in {lists})" if lists != path else "")]
    for domain in cls.domains:
        per = " / ".join(str(sizes[(domain, s)]) for s in SPLITS)
        present = len(classes[domain])
        lines.append(f"  {domain}: train / val / test {per}; {present} of {cls.num_classes} classes present")
    rep.summary = lines
    return rep


def _check_xtreme(cls, path: str) -> _Report:
    """PAWS-X / UD-POS: every split file of every language exists and parses with the problem's reader.

    The model is not needed here (``litmus run`` checks that it is in the local cache).
    """
    rep = _Report(cls.name)
    if not os.path.isdir(path):
        rep.error(f"data folder {path} does not exist")
        return rep
    problem = cls(root=path)
    if cls.name == "pawsx":
        from study.problems.pawsx import read_pawsx

        def count(files: list[str]) -> int:
            return sum(len(read_pawsx(f)[2]) for f in files)
    else:
        from study.problems.udpos import read_pos_files

        def count(files: list[str]) -> int:
            return len(read_pos_files(files))
    lines = [f"{cls.name} data at {path}"]
    for lang in problem.tasks:
        sizes = []
        for split in ("train", "val", "test"):
            try:
                files = problem.data_files(split, lang)
                n = count(files)
            except (DataError, SpecError, ValueError) as exc:
                rep.error(str(exc).removeprefix(f"problem {cls.name}: "))
                continue
            if n == 0:
                rep.error(f"{', '.join(files)} holds no examples")
            sizes.append(f"{split} {n}")
        lines.append(f"  {lang}: {' / '.join(sizes)} examples")
    rep.summary = lines
    return rep


_CHECKERS: dict[str, Callable[..., _Report]] = {
    "pawsx": _check_xtreme,
    "udpos": _check_xtreme,
    "nyuv2": _check_dense,
    "cityscapes": _check_dense,
    "celeba": _check_celeba,
    "office31": _check_office,
    "officehome": _check_office,
}


def _run(problem_name: str, path: str) -> _Report:
    cls = PROBLEMS.get(problem_name, "problem")
    path = os.path.expanduser(str(path))
    checker = _CHECKERS.get(cls.name)
    if checker is not None:
        return checker(cls, path)
    rep = _Report(cls.name)
    import inspect

    if "root" not in inspect.signature(cls).parameters:
        rep.summary = [f"{cls.name} reads no data folder; nothing to check at {path}"]
        return rep
    try:
        cls(root=path).check()
    except (DataError, SpecError) as exc:
        rep.error(str(exc).removeprefix(f"{cls.name}: "))
    except (ValueError, TypeError) as exc:
        rep.error(str(exc))
    rep.summary = [f"{cls.name} data at {path}: passes the problem's layout check"]
    return rep


_last: dict[tuple[str, str], _Report] = {}


def check_data(problem_name: str, path: str) -> list[str]:
    """One line per problem found in the data folder ``path`` for ``problem_name``; empty if it is fine.

    An unknown problem name raises :class:`~study.errors.SpecError` listing the valid names.
    """
    rep = _run(problem_name, path)
    _last.clear()
    _last[(problem_name, str(path))] = rep
    return rep.lines()


def summarize(problem_name: str, path: str) -> str:
    """A short description of a valid data folder (split sizes, shapes, label statistics).

    Reuses the scan of an immediately preceding :func:`check_data` call on the same folder (the CLI
    calls both); raises :class:`~study.errors.DataError` with the first problem if the folder is not valid.
    """
    rep = _last.pop((problem_name, str(path)), None) or _run(problem_name, path)
    if rep.problems:
        raise DataError(rep.lines()[0])
    return "\n".join(rep.summary)
