"""The O(T d) work a shared-parameter gradient method adds to its T backward passes, before and after the
fast path of ``study.weighting.step`` (issue 3 "Speed"), side by side in one process.

For ``T`` task gradients of ``d`` parameters (ResNet-18's shared parameter shapes by default, d = 11.2 M),
each variant is timed on the same tensors, the variants interleaved over ``--repeats`` rounds; the table
gives the minimum (the least disturbed round on a shared machine) of:

* ``rows``: the task gradients copied into the persistent ``T x d`` matrix (before: one ``copy_`` per
  parameter view; after: one ``_foreach_copy_`` into views made once);
* ``gramian``: ``G G^T`` (before: ``G @ G.T``; after: :func:`study.weighting.base.gramian_of`);
* ``combine``: ``w @ G`` installed as ``.grad`` (before: a new ``d`` vector every step; after: ``mv`` into
  the persistent flat gradient buffer).

    python benchmarks/aggregation_overhead.py                 # T = 3 and 10, ResNet-18 shapes
    python benchmarks/aggregation_overhead.py --tasks 3 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.weighting.base import gramian_of  # noqa: E402


def shapes(small: bool) -> list[torch.Size]:
    if small:
        return [torch.Size((64, 3, 3, 3)), torch.Size((64,)), torch.Size((128, 64, 3, 3)), torch.Size((128,))] * 4
    from torchvision.models import resnet18
    net = resnet18(weights=None)
    return [p.shape for n, p in net.named_parameters() if not n.startswith("fc.")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--small", action="store_true", help="small shapes (a smoke run)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shp = shapes(args.small)
    d = sum(s.numel() for s in shp)
    print(f"d = {d:,} shared parameters, {torch.get_num_threads()} threads; min of {args.repeats} interleaved rounds\n")
    print("| T | part | before ms | after ms | speed-up |")
    print("|---|---|---|---|---|")
    notes = []
    for T in args.tasks:
        g = torch.Generator().manual_seed(T)
        grads = [[torch.randn(s, generator=g) for s in shp] for _ in range(T)]
        G = torch.empty(T, d)
        rows = []
        for i in range(T):
            views, off = [], 0
            for s in shp:
                views.append(G[i, off:off + s.numel()].view(s))
                off += s.numel()
            rows.append(views)
        flat = torch.empty(d)
        w = torch.rand(T, generator=g)

        def rows_before():
            for i in range(T):
                off, row = 0, G[i]
                for gr in grads[i]:
                    n = gr.numel()
                    row[off:off + n].view_as(gr).copy_(gr)
                    off += n

        def rows_after():
            for i in range(T):
                torch._foreach_copy_(rows[i], grads[i])

        offsets = [sum(s.numel() for s in shp[:k]) for k in range(len(shp))]

        def combine_before():
            direction = w @ G
            return [direction[o:o + s.numel()].view(s) for o, s in zip(offsets, shp)]  # views, as .grad

        parts = {
            "rows": (rows_before, rows_after),
            "gramian": (lambda: G @ G.T, lambda: gramian_of(G)),
            "combine": (combine_before, lambda: torch.mv(G.T, w, out=flat)),
        }
        rows_after()
        ref = G.double() @ G.double().T
        errs = [float(((m.double() - ref).abs().max() / ref.abs().max())) for m in (G @ G.T, gramian_of(G))]
        notes.append(f"T={T}: largest Gramian error relative to float64: before {errs[0]:.1e}, after {errs[1]:.1e}")
        times = {(k, v): [] for k in parts for v in (0, 1)}
        for _ in range(args.repeats):
            for k, fns in parts.items():
                for v, fn in enumerate(fns):
                    t0 = time.perf_counter()
                    fn()
                    times[(k, v)].append(time.perf_counter() - t0)
        tot = [0.0, 0.0]
        for k in parts:
            b, a = min(times[(k, 0)]) * 1e3, min(times[(k, 1)]) * 1e3
            tot[0] += b
            tot[1] += a
            print(f"| {T} | {k} | {b:.1f} | {a:.1f} | {b / a:.2f}x |")
        print(f"| {T} | total | {tot[0]:.1f} | {tot[1]:.1f} | {tot[0] / tot[1]:.2f}x |")
    print()
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
