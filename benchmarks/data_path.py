"""Data path: samples per second delivered by each problem's reader vs the model's consumption.

Each problem's real reader (``problem.load`` + ``problem.batches``, with ``num_workers`` DataLoader
workers where the reader uses them) runs over a fixture written to a temporary folder in the problem's
real on-disk format at the release's image sizes:

* CelebA: aligned JPEGs of 178x218 (smooth synthetic faces-sized images), resized to 64x64 by the reader;
  read from the JPEGs, and from the ``cache_dir`` memory map (built once, timed separately);
* NYUv2 (288x384) and CityScapes (128x256): the preprocessed per-sample ``.npy`` files (image, label,
  depth, normals), read per sample in workers, and with ``in_memory: true`` (sliced tensors);
* Office-31: JPEGs of 300x300 (Amazon's size) in ``{domain}/images/{class}/``, resized/cropped to 224x224
  with the training augmentation, three domains batched together (multi-input);
* multidigits: composed in memory from scikit-learn's digits;
* PAWS-X / UDPOS: the tokenised feature tensors the XTREME problems cache on disk (N x 128 tokens), batched
  by slicing (tokenisation happens once per data set, not per trial).

Reader rate: samples over one epoch of the training split at the paper's batch size, including the
workers' start (DataLoader workers are started every epoch), first-batch latency reported separately.
Model rate: one EW training step of the problem's real model (HPS, random initialisation) on this CPU, at
a small batch (``--model-batch``), as samples/s. The files are in the page cache (just written), so the
reader figures exclude cold-disk reads.

    python benchmarks/data_path.py                  # all problems (~5 min on 2 cores)
    python benchmarks/data_path.py --quick          # small fixtures, no dense/Office model step (~1 min)
    python benchmarks/data_path.py --only celeba nyuv2 --workers 4 --out table.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the fixture writers of the real on-disk formats

from fixtures_vision import write_celeba as write_celeba_layout  # noqa: E402
from fixtures_vision import write_dense  # noqa: E402

from study.architectures import build_model  # noqa: E402
from study.problems import PROBLEMS  # noqa: E402
from study.registry import instantiate  # noqa: E402
from study.weighting.method import build_method, normalize_method  # noqa: E402
from study.weighting.step import MethodStep  # noqa: E402

HEADER = ("| problem | reader | input | batch | workers | samples | epoch s | first batch s | reader samples/s "
          "| model samples/s (CPU, batch) | reader / model |")
RULE = "|---" * (HEADER.count("|") - 1) + "|"


# -- fixtures in the real formats ---------------------------------------------------------------
def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like uint8 image (smooth colour fields plus mild noise): compresses and decodes like a photo."""
    from PIL import Image

    low = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
    img = img + rng.integers(-6, 7, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_celeba(root: str, n_train: int, rng) -> None:
    from PIL import Image

    write_celeba_layout(root, sizes=(n_train, 16, 16), image_hw=(8, 8))  # annotation files, partition, tiny images
    folder = os.path.join(root, "Img", "img_align_celeba")
    for name in os.listdir(folder):  # replace the images by release-sized ones
        Image.fromarray(smooth_image(rng, 218, 178)).save(os.path.join(folder, name), quality=90)


def write_office(root: str, n_per_domain: int, rng) -> None:
    from PIL import Image

    for domain in ("amazon", "dslr", "webcam"):
        for split, n in (("train", n_per_domain), ("val", 4), ("test", 4)):
            lines = []
            for k in range(n):
                label = int(rng.integers(0, 31))
                rel = os.path.join(domain, "images", f"class{label}", f"{split}_{k}.jpg")
                os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
                Image.fromarray(smooth_image(rng, 300, 300)).save(os.path.join(root, rel), quality=90)
                lines.append(f"{rel} {label}")
            with open(os.path.join(root, f"{domain}_{split}.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")


def xtreme_features(kind: str, n: int, length: int, rng):
    from study.problems._xtreme import Features

    lengths = torch.from_numpy(rng.integers(16, length + 1, size=n).astype(np.int32))
    ids = torch.from_numpy(rng.integers(100, 119_000, size=(n, length)).astype(np.int32))
    types = torch.zeros(n, length, dtype=torch.int8)
    if kind == "pawsx":
        labels = torch.from_numpy(rng.integers(0, 2, size=n).astype(np.int64))
    else:
        labels = torch.from_numpy(rng.integers(0, 17, size=(n, length)).astype(np.int16))
    return Features(ids, types, lengths, labels)


# -- measurements -------------------------------------------------------------------------------
def time_reader(problem, split_data, batch_size: int) -> tuple[float, float, int, tuple]:
    """(epoch seconds, first-batch seconds, samples, input shape) over one shuffled epoch."""
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    first = None
    n = 0
    shape: tuple = ()
    if problem.multi_input:
        iters = {t: iter(problem.batches(split_data[t], batch_size, shuffle=True, generator=gen)) for t in problem.tasks}
        for t, it in iters.items():
            for x, _ in it:
                first = first if first is not None else time.perf_counter() - t0
                xx = x["input_ids"] if isinstance(x, dict) else x
                n += len(xx)
                shape = shape or tuple(xx.shape[1:])
    else:
        for x, _ in problem.batches(split_data, batch_size, shuffle=True, generator=gen):
            first = first if first is not None else time.perf_counter() - t0
            xx = x["input_ids"] if isinstance(x, dict) else x
            n += len(xx)
            shape = shape or tuple(xx.shape[1:])
    return time.perf_counter() - t0, first or 0.0, n, shape


def model_rate(problem, batch, batch_size: int, steps: int = 2) -> float:
    """Samples/s of EW training steps of the problem's HPS model on one batch of real shapes."""
    torch.manual_seed(0)
    model = build_model(problem, "hps", {})
    weighting, aggregator = build_method(normalize_method("ew"), len(problem.tasks))
    step = MethodStep(model, weighting, aggregator)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, ys = batch
    if problem.multi_input:
        x = {t: v[:batch_size] for t, v in x.items()}
        ys = {t: v[:batch_size] for t, v in ys.items()}
    else:
        x = x[:batch_size]
        ys = {t: y[:batch_size] for t, y in ys.items()}
    rng = np.random.default_rng(0)
    times = []
    model.train()
    for _ in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        losses = step.losses(problem, x, ys)
        step.backward(losses, rng)
        opt.step()
        times.append(time.perf_counter() - t0)
    n = sum(len(v) for v in x.values()) if isinstance(x, dict) else len(x)
    return n / float(np.median(times[1:]))


def first_batch(problem, split_data, batch_size: int):
    gen = torch.Generator().manual_seed(1)
    if problem.multi_input:
        xs, ys = {}, {}
        for t in problem.tasks:
            x, y = next(iter(problem.batches(split_data[t], batch_size, shuffle=False, generator=gen)))
            xs[t], ys[t] = x, (y[t] if isinstance(y, dict) else y)
        return xs, ys
    return next(iter(problem.batches(split_data, batch_size, shuffle=False, generator=gen)))


def cases(tmp: str, quick: bool, workers: int, tiny: bool = False):
    """(name, reader label, problem params builder, paper batch, model batch or None)."""
    rng = np.random.default_rng(0)
    n_celeba = 32 if tiny else 512 if quick else 2048
    n_dense = 4 if tiny else 16 if quick else 64
    n_office = 6 if tiny else 32 if quick else 128
    out = []

    def celeba_fixture():
        root = os.path.join(tmp, "celeba")
        if not os.path.isdir(root):
            write_celeba(root, n_celeba, rng)
        return root

    out.append(("celeba", "JPEG files", lambda: {"root": celeba_fixture(), "num_workers": workers}, 512, 16))
    out.append(("celeba", "cache_dir memmap", lambda: {"root": celeba_fixture(), "num_workers": workers,
                                                      "cache_dir": os.path.join(tmp, "celeba-cache")}, 512, None))
    for kind, hw, batch in (("nyuv2", (288, 384), 8), ("cityscapes", (128, 256), 64)):
        def dense_fixture(kind=kind, hw=hw):
            root = os.path.join(tmp, kind)
            if not os.path.isdir(root):
                write_dense(root, kind=kind, n_train=n_dense, n_test=4, hw=hw)
            return root

        model_batch = None if quick else 2
        out.append((kind, ".npy per sample", lambda f=dense_fixture: {"root": f(), "num_workers": workers,
                                                                        "pretrained": False, "val_fraction": 0.0},
                    batch, model_batch))
        out.append((kind, "in_memory", lambda f=dense_fixture: {"root": f(), "num_workers": workers, "pretrained": False,
                                                                 "val_fraction": 0.0, "in_memory": True}, batch, None))

    def office_fixture():
        root = os.path.join(tmp, "office")
        if not os.path.isdir(root):
            write_office(root, n_office, rng)
        return root

    out.append(("office31", "JPEG files + augmentation", lambda: {"root": office_fixture(), "num_workers": workers,
                                                                   "pretrained": False}, 64, None if quick else 4))
    out.append(("multidigits", "in memory", lambda: {}, 128, 128))
    out.append(("pawsx", "cached features", None, 32, None))
    out.append(("udpos", "cached features", None, 32, None))
    return out


def run(args) -> list[str]:
    torch.set_num_threads(args.threads)
    rows = []
    tmp = tempfile.mkdtemp(prefix="litmus-datapath-")
    try:
        for name, label, params, batch, model_batch in cases(tmp, args.quick or args.tiny, args.workers, args.tiny):
            if args.only and name not in args.only:
                continue
            rng = np.random.default_rng(0)
            if params is None:  # XTREME: the cached feature tensors
                problem = instantiate(PROBLEMS.get(name), {"root": tmp}, "problem")
                n = 256 if args.tiny else 2048 if args.quick else 8192  # per language (each one a task)
                train = {lang: xtreme_features(name, n, 128, rng) for lang in problem.tasks}
                extra = ""
            else:
                problem = instantiate(PROBLEMS.get(name), params(), "problem")
                t0 = time.perf_counter()
                data = problem.load(0)
                load_s = time.perf_counter() - t0
                train = data["train"]
                extra = f" (load {load_s:.1f} s)" if load_s > 0.5 else ""
            epoch, first, n, shape = time_reader(problem, train, batch)
            rate = n / epoch
            m = "n/a"
            ratio = ""
            if model_batch and not args.no_model:
                mr = model_rate(problem, first_batch(problem, train, model_batch), model_batch)
                m = f"{mr:.1f} (batch {model_batch})"
                ratio = f"{rate / mr:.0f}x"
            workers = getattr(problem, "num_workers", 0) if label not in ("in_memory", "cache_dir memmap") else 0
            shape_s = "x".join(map(str, shape))
            rows.append(f"| {name} | {label}{extra} | {shape_s} | {batch} | {workers} | {n} | {epoch:.2f} | "
                        f"{first:.2f} | {rate:,.0f} | {m} | {ratio} |")
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of file-backed readers")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the model step")
    ap.add_argument("--quick", action="store_true", help="small fixtures, model step only for the small models")
    ap.add_argument("--tiny", action="store_true", help="a few samples per fixture: checks the script runs")
    ap.add_argument("--no-model", action="store_true", help="reader rates only")
    ap.add_argument("--only", nargs="+", help="problems to run")
    ap.add_argument("--out", help="also write the table (markdown) here")
    args = ap.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.workers} workers, {args.threads} torch threads")
    print(HEADER)
    print(RULE)
    rows = run(args)
    if args.out:
        Path(args.out).write_text("\n".join([HEADER, RULE, *rows]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
