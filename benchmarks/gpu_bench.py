"""GPU benchmark: step time per method on NYUv2-sized dense inputs and on CelebA's 40 tasks, fp32 vs
bf16 autocast, and how many fractional-GPU trials fit on one GPU. Run by ``benchmarks/gpu.sh``.

Models are the problems' own (``study.problems``: NYUv2's dilated ResNet-50 with three DeepLabV3 heads at
3x288x384, batch 8; CelebA's ResNet-18 with 40 linear heads at 3x64x64, batch 512), random
initialisation, on random tensors of the real shapes (labels in range, valid masks as in the data). A step
is what the trainer does: forward and task losses (under ``torch.autocast(bfloat16)`` for bf16), the
method's backward passes and aggregation, Adam step, post-step hook. Times are medians of ``--steps``
steps after ``--warmup`` steps, with ``torch.cuda.synchronize`` around each step.

Sections (each prints a markdown table as soon as it is done; a global ``--budget`` in seconds skips
what would not fit, so the script ends in time and says what it skipped):

1. ``step``: per problem, per method, fp32 and bf16: median ms, ratio to EW in the same precision,
   bf16 speed-up, peak memory.
2. ``fractional``: k = 1, 2, 4, ... processes each training EW on the same GPU at once (what Ray does
   with ``resources.gpu: 1/k``): aggregate samples/s, per-process peak memory; the number that fits by
   memory and the k with the best throughput.

    bash benchmarks/gpu.sh                         # the GPU run (< 8 min on one GPU)
    bash benchmarks/gpu.sh --smoke                 # tiny shapes on CPU: checks the script runs (~30 s)
    python benchmarks/gpu_bench.py --sections step --problems celeba --methods ew rlw mgda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: methods in the order they are run (the most important first, so a short budget still covers them)
DEFAULT_METHODS = [
    "ew", "rlw", "uw", "dwa", "gls", "gradnorm", "famo", "imtl_l", "stch",
    "mgda", "pcgrad", "cagrad", "rgw", "graddrop", "gradvac", "imtl_g", "nash_mtl", "upgrad", "aligned_mtl",
    "db_mtl", "fairgrad", "moco", "gradsum", "mgda_ub", "imtl", "rotograd",
]
SMOKE_METHODS = ["ew", "rlw", "mgda_ub"]


# -- problems of the real shapes --------------------------------------------------------------------
def make_problem(name: str, smoke: bool):
    """``(problem, batch size, input shape)``; smoke: tiny images, a small backbone, 4 CelebA tasks."""
    from study.problems import PROBLEMS

    if name == "nyuv2":
        backbone = "resnet18" if smoke else "resnet50_dilated"
        hw = (16, 24) if smoke else (288, 384)
        problem = PROBLEMS.get("nyuv2")(pretrained=False, backbone=backbone, head_channels=8 if smoke else 256)
        problem.__dict__["image_hw"] = hw  # the release's image size, without a data folder
        return problem, 2 if smoke else 8, (3, *hw)
    if name == "celeba":
        size = 8 if smoke else 64
        from study.problems.celeba import ATTRIBUTES

        problem = PROBLEMS.get("celeba")(pretrained=False, image_size=size,
                                         attributes=list(ATTRIBUTES[:4]) if smoke else None)
        return problem, 4 if smoke else 512, (3, size, size)
    raise SystemExit(f"unknown problem {name!r}; valid: nyuv2, celeba")


def random_batch(problem, batch: int, shape: tuple, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *shape, generator=g)
    h, w = shape[1:]
    ys = {}
    for t in problem.tasks:
        if problem.name == "celeba":
            ys[t] = torch.randint(0, 2, (batch,), generator=g)
        elif t == "segmentation":
            ys[t] = torch.randint(-1, problem.num_classes, (batch, h, w), generator=g)
        elif t == "depth":
            ys[t] = torch.rand(batch, 1, h, w, generator=g) * 5
        else:
            n = torch.randn(batch, 3, h, w, generator=g)
            ys[t] = n / n.norm(dim=1, keepdim=True)
    return x.to(device), {t: y.to(device) for t, y in ys.items()}


class Runner:
    """One model + method + optimizer stepping on one batch, like ``Trial.train_epoch``."""

    def __init__(self, problem, method, device: torch.device, amp: bool, channels_last: bool = False):
        from study.architectures import build_model
        from study.weighting.method import build_method, normalize_method
        from study.weighting.step import MethodStep

        torch.manual_seed(0)
        self.problem, self.device = problem, device
        self.amp = torch.bfloat16 if amp else None
        self.model = build_model(problem, "hps", {}).to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        weighting, aggregator = build_method(normalize_method(method), len(problem.tasks))
        self.step = MethodStep(self.model, weighting, aggregator).to(device)
        params = list(self.model.parameters()) + list(self.step.parameters())
        self.opt = torch.optim.Adam(params, lr=1e-4)
        self.rng = np.random.default_rng(0)
        self.model.train()

    def __call__(self, x, ys) -> None:
        from study.training import autocast

        self.opt.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp):
            losses = self.step.losses(self.problem, x, ys)
        if self.amp is not None:
            losses = losses.float()
        self.step.backward(losses, self.rng)
        self.opt.step()
        self.step.after_step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn, x, ys, device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn(x, ys)
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn(x, ys)
        sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# -- section 1: step time ---------------------------------------------------------------------------
class Output(list):
    """The report's lines: printed, and appended to ``path`` at once (a killed run keeps what it measured)."""

    def __init__(self, path: str | None):
        super().__init__()
        self.path = path
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            Path(path).write_text("")

    def append(self, line: str) -> None:
        super().append(line)
        print(line, flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")


def section_step(args, device, deadline: float, out: list[str]) -> None:
    methods = args.methods or (SMOKE_METHODS if args.smoke else DEFAULT_METHODS)
    start = time.time()
    for i, pname in enumerate(args.problems):
        # each problem gets an equal share of what is left, so a slow one cannot starve the next
        share = start + (deadline - start) * (i + 1) / len(args.problems)
        problem, batch, shape = make_problem(pname, args.smoke)
        x, ys = random_batch(problem, batch, shape, device)
        header = (f"\n### Step time: {pname} (T={len(problem.tasks)}, input {batch}x{'x'.join(map(str, shape))})\n\n"
                  "| method | fp32 ms | bf16 ms | fp32 / EW | bf16 / EW | bf16 speed-up | peak MiB fp32 | peak MiB bf16 |\n"
                  "|---|---|---|---|---|---|---|---|")
        out.append(header)
        ew = {}
        for method in methods:
            cells = {}
            for amp in (False, True):
                if time.time() > share:
                    cells[amp] = None
                    continue
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    runner = Runner(problem, method, device, amp)
                    ms = 1000 * time_steps(runner, x, ys, device, args.warmup, args.steps)
                    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
                    cells[amp] = (ms, peak)
                except torch.cuda.OutOfMemoryError:
                    cells[amp] = ("OOM", float("nan"))
                finally:
                    runner = None  # noqa: F841
                if method == "ew" and cells[amp] and isinstance(cells[amp][0], float):
                    ew[amp] = cells[amp][0]
            label = method if isinstance(method, str) else json.dumps(method)
            line = f"| {label} | " + " | ".join(_cells(cells, ew)) + " |"
            out.append(line)


def _cells(cells: dict, ew: dict) -> list[str]:
    def ms(c):
        if c is None:
            return "skipped (budget)"
        return c[0] if isinstance(c[0], str) else f"{c[0]:.1f}"

    f32, b16 = cells.get(False), cells.get(True)
    ok32 = f32 is not None and isinstance(f32[0], float)
    ok16 = b16 is not None and isinstance(b16[0], float)
    return [
        ms(f32), ms(b16),
        f"{f32[0] / ew[False]:.2f}" if ok32 and False in ew else "",
        f"{b16[0] / ew[True]:.2f}" if ok16 and True in ew else "",
        f"{f32[0] / b16[0]:.2f}x" if ok32 and ok16 else "",
        f"{f32[1]:.0f}" if ok32 and f32[1] == f32[1] else "n/a",
        f"{b16[1]:.0f}" if ok16 and b16[1] == b16[1] else "n/a",
    ]


# -- section 2: fractional GPU trials ---------------------------------------------------------------
def _worker(rank: int, pname: str, smoke: bool, amp: bool, steps: int, warmup: int, device_name: str,
            barrier, queue) -> None:
    torch.set_num_threads(1)
    device = torch.device(device_name)
    problem, batch, shape = make_problem(pname, smoke)
    x, ys = random_batch(problem, batch, shape, device, seed=rank)
    runner = Runner(problem, "ew", device, amp)
    for _ in range(warmup):
        runner(x, ys)
    sync(device)
    barrier.wait()  # every process is warmed up: the GPU holds all of them now
    used = float("nan")
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        used = (total - free) / 2**20
    barrier.wait()  # all processes start their timed steps together
    t0 = time.perf_counter()
    for _ in range(steps):
        runner(x, ys)
    sync(device)
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else float("nan")
    queue.put({"rank": rank, "elapsed": elapsed, "samples": batch * steps, "peak_reserved_mib": peak,
               "gpu_used_mib": used})


def section_fractional(args, device, deadline: float, out: list[str]) -> None:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    ks = [1, 2] if args.smoke else args.fractions
    total_mib = (torch.cuda.get_device_properties(device).total_memory / 2**20) if device.type == "cuda" else float("nan")
    for pname in args.problems:
        header = (f"\n### Fractional GPU trials: {pname}, EW, {'bf16' if args.fraction_amp else 'fp32'}\n\n"
                  "| trials on one GPU (resources.gpu) | aggregate samples/s | per trial samples/s | vs 1 trial "
                  "| peak reserved MiB per trial | GPU memory used per trial MiB | fit by memory |\n"
                  "|---|---|---|---|---|---|---|")
        out.append(header)
        base = None
        for k in ks:
            if time.time() > deadline:
                line = f"| {k} (1/{k}) | skipped (budget) | | | | | |"
                out.append(line)
                continue
            barrier, queue = ctx.Barrier(k), ctx.Queue()
            procs = [ctx.Process(target=_worker, args=(r, pname, args.smoke, args.fraction_amp, args.fraction_steps,
                                                       args.warmup, str(device), barrier, queue)) for r in range(k)]
            for p in procs:
                p.start()
            try:
                res = [queue.get(timeout=max(deadline - time.time(), 30) + 120) for _ in range(k)]
            except Exception as exc:  # noqa: BLE001 - OOM or a stuck process: record and go on
                for p in procs:
                    p.kill()
                line = f"| {k} (1/{k}) | failed ({type(exc).__name__}) | | | | | |"
                out.append(line)
                break
            for p in procs:
                p.join()
            wall = max(r["elapsed"] for r in res)
            agg = sum(r["samples"] for r in res) / wall
            base = base or agg
            peak = max(r["peak_reserved_mib"] for r in res)
            used = max(r["gpu_used_mib"] for r in res) / k  # the device's used memory (CUDA contexts too) per trial
            fit = f"{int(total_mib // used)}" if used == used else "n/a"
            cell = (lambda v: f"{v:.0f}" if v == v else "n/a")
            line = (f"| {k} (1/{k}) | {agg:,.0f} | {agg / k:,.0f} | {agg / base:.2f}x | {cell(peak)} | {cell(used)} "
                    f"| {fit} |")
            out.append(line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, few methods, CPU allowed")
    ap.add_argument("--sections", nargs="+", default=["step", "fractional"], choices=["step", "fractional"])
    ap.add_argument("--problems", nargs="+", default=["nyuv2", "celeba"], choices=["nyuv2", "celeba"])
    ap.add_argument("--methods", nargs="+", help="method names (default: all, most important first)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--fractions", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--fraction-steps", type=int, default=20)
    ap.add_argument("--fraction-amp", action="store_true", help="fractional section in bf16 (default fp32)")
    ap.add_argument("--budget", type=float, help="seconds (default 420, smoke 60); later work is skipped, not cut")
    ap.add_argument("--out", help="also write the tables (markdown) here")
    args = ap.parse_args(argv)
    if args.smoke:
        args.warmup, args.steps, args.fraction_steps = 1, 1, 2
        torch.set_num_threads(1)
    if args.budget is None:
        args.budget = 60.0 if args.smoke else 420.0
    start = time.time()
    deadline = start + args.budget
    if torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    elif args.smoke:
        device, name = torch.device("cpu"), "CPU (smoke run)"
    else:
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --smoke for a CPU check of the script")
    out = Output(args.out)
    out.append(f"# gpu_bench on {name}, torch {torch.__version__}, {platform.node()}, "
               f"{time.strftime('%Y-%m-%d %H:%M')}; command: gpu_bench.py {' '.join(argv or sys.argv[1:])}")
    if "step" in args.sections:  # 70% of the budget when the fractional section follows
        share = 0.7 if "fractional" in args.sections else 1.0
        section_step(args, device, start + args.budget * share, out)
    if "fractional" in args.sections:
        section_fractional(args, device, deadline, out)
    out.append(f"\ntotal {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
