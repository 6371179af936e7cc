"""Step time of every weighting method on ResNet-18 HPS (64x64 inputs, batch 32, T task heads).

One training step = forward, the method's backward passes and aggregation, optimizer step (SGD), and
the method's post-step hook. Every method runs in the same process on the same model and batch; the
table reports the median step time, its ratio to EW measured in the same run, its ratio to the cost
floor of shared-parameter gradient methods (one forward + T backward passes + the optimizer step,
``fwd+T*bwd``), and on
CUDA the peak memory above EW in units of one ``T x d`` float32 buffer (d = shared parameters).

    python benchmarks/step_time.py                 # quick CPU run: T=3, 32x32, batch 16, 3 rounds (~4 min)
    python benchmarks/step_time.py --full          # the issue's setting: 64x64, batch 32, T = 3, 10, 40
    python benchmarks/step_time.py --tasks 3 10 --repeats 5 --methods ew rlw mgda --out table.md

Each method is measured in ``--rounds`` rounds (build, one warm-up step, ``--repeats`` timed steps,
release), the rounds interleaved over methods, so that load from other processes on a shared machine
spreads over all methods instead of biasing one; the reported time is the median over all timed steps.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from study.architectures.hps import HPS  # noqa: E402
from study.weighting import AGGREGATORS, WEIGHTINGS  # noqa: E402
from study.weighting.method import build_method, normalize_method  # noqa: E402
from study.weighting.step import MethodStep  # noqa: E402

#: representation-level variants benchmarked besides each method's default level
REPRESENTATION_VARIANTS = [
    "mgda_ub", "imtl",
    {"name": "rgw", "level": "representation"},
    {"name": "imtl_g", "level": "representation"},
    {"name": "upgrad", "level": "representation"},
    {"name": "aligned_mtl", "level": "representation"},
    {"name": "gradsum", "level": "representation"},
]
COMBINATIONS = [{"weighting": "rlw", "aggregator": "cagrad", "label": "RLW+CAGRAD"}]
FLOOR = "fwd+T*bwd"


def all_methods() -> list:
    methods: list = ["ew", "rlw"]
    methods += [n for n in WEIGHTINGS.names() if n not in ("ew", "rlw")]
    methods += AGGREGATORS.names()
    return methods + REPRESENTATION_VARIANTS + COMBINATIONS


class Problem:
    """Classification heads on random labels (the benchmark times steps, not learning)."""

    def __init__(self, tasks):
        self.tasks = tasks
        self.multi_input = False

    def loss(self, task, output, target):
        return F.cross_entropy(output, target)


def build_model(T: int, device: torch.device) -> HPS:
    from torchvision.models import resnet18

    def encoder():
        net = resnet18(weights=None)
        net.fc = nn.Identity()
        return net

    tasks = tuple(f"t{i}" for i in range(T))
    return HPS(encoder, {t: nn.Linear(512, 10) for t in tasks}, tasks, False).to(device)


def floor_step(model, problem, x, y, opt):
    """The work every shared-parameter gradient method must do: one forward, T backward passes (each
    materialising its task's gradients of all parameters, as the methods' passes do), and one optimizer
    step (as in every method's step, EW's included); nothing else. The last pass's gradients stand in
    for the direction."""
    opt.zero_grad(set_to_none=True)
    out = model(x)
    losses = [problem.loss(t, out[t], y[t]) for t in problem.tasks]
    params = [p for p in model.parameters() if p.requires_grad]
    for i, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, params, retain_graph=i < len(losses) - 1, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()


def time_method(method, model, problem, x, y, repeats: int, warmup: int, device) -> tuple[list[float], float | None]:
    sync = device.type == "cuda"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if method == FLOOR:
        step = None
        floor_opt = torch.optim.SGD(model.parameters(), lr=0.0)
        run = lambda: floor_step(model, problem, x, y, floor_opt)  # noqa: E731
    else:
        spec = normalize_method(method)
        weighting, aggregator = build_method(spec, len(problem.tasks))
        step = MethodStep(model, weighting, aggregator).to(device)
        if step.needs_validation:
            step.set_validation_batches(lambda epoch: iter(lambda: (x, y), None))
        step._problem = problem
        # lr 0: the step does all its work but leaves the model as it is for the next method
        opt = torch.optim.SGD(list(model.parameters()) + list(step.parameters()), lr=0.0)
        rng = np.random.default_rng(0)

        def run():
            opt.zero_grad(set_to_none=True)
            losses = step.losses(problem, x, y)
            step.backward(losses, rng)
            opt.step()
            step.after_step()

    times = []
    if sync:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            run()
            if sync:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if sync else None
    model.load_state_dict(state)  # BN statistics and any learnable part restored
    model.zero_grad(set_to_none=True)
    del step
    return times, peak


def label_of(method) -> str:
    return FLOOR if method == FLOOR else normalize_method(method)["label"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, nargs="+", default=None, help="numbers of task heads (default 3)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per method and round (default 1; 5 with --full)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds over methods (default 3; 2 with --full)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--stat", choices=("median", "min"), default=None,
                    help="statistic for the ratios (default median; min in the quick CPU run, where other "
                         "processes' load makes the least-disturbed step the better estimate)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 16; 32 with --full)")
    ap.add_argument("--size", type=int, default=None, help="input height and width (default 32; 64 with --full)")
    ap.add_argument("--methods", nargs="+", default=None, help="method names (default: every method)")
    ap.add_argument("--full", action="store_true", help="T = 3, 10, 40 and 10 timed steps")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    args = ap.parse_args(argv)
    tasks = args.tasks or ([3, 10, 40] if args.full else [3])
    repeats = args.repeats or (5 if args.full else 1)
    rounds = args.rounds or (2 if args.full else 3)
    stat = args.stat or ("median" if args.full else "min")
    agg_fn = statistics.median if stat == "median" else min
    args.batch = args.batch or (32 if args.full else 16)
    args.size = args.size or (64 if args.full else 32)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [FLOOR] + (args.methods or all_methods())
    if "ew" not in methods:
        methods.insert(1, "ew")
    torch.manual_seed(0)
    lines = [
        f"Device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}"
        f" ({device.type}, {torch.get_num_threads()} CPU threads), torch {torch.__version__}; ResNet-18 HPS, "
        f"{args.size}x{args.size} inputs, batch {args.batch}; median of {rounds} interleaved rounds x {repeats} "
        f"timed steps, each round after {args.warmup} warm-up step(s).",
        "",
        f"Ratios use the {stat} step time.",
        "",
        "| T | method | level | median ms | min ms | / EW | / fwd+T*bwd | peak MiB | extra / (T x d buffer) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for T in tasks:
        model = build_model(T, device)
        problem = Problem(tuple(f"t{i}" for i in range(T)))
        g = torch.Generator().manual_seed(T)
        x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
        y = {t: torch.randint(0, 10, (args.batch,), generator=g).to(device) for t in problem.tasks}
        d = sum(p.numel() for p in model.shared_parameters())
        buf_mib = T * d * 4 / 2 ** 20
        times: dict[str, list[float]] = {}
        peaks: dict[str, float | None] = {}
        specs: dict[str, object] = {}
        for r in range(rounds):
            for method in methods:
                label = label_of(method)
                if label in specs and specs[label] is None:
                    continue  # failed before
                try:
                    ts, peak = time_method(method, model, problem, x, y, repeats, args.warmup, device)
                except Exception as exc:  # report and go on: one failing method must not hide the others
                    print(f"T={T} {label}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    specs[label] = None
                    continue
                specs[label] = method
                times.setdefault(label, []).extend(ts)
                peaks[label] = peak if peaks.get(label) is None else max(peaks[label], peak)
                print(f"T={T:>2} round {r + 1}/{rounds} {label:<32} {statistics.median(ts) * 1e3:9.1f} ms",
                      file=sys.stderr, flush=True)
        results = {label: (specs[label], agg_fn(ts), peaks[label]) for label, ts in times.items()}
        ew_t, ew_peak = results["EW"][1], results["EW"][2]
        floor_t = results[FLOOR][1]
        for label, (method, t, peak) in results.items():
            if method == FLOOR:
                level = "-"
            else:
                spec = normalize_method(method)
                agg = spec.get("aggregator")
                level = "loss" if not agg else agg.get("level") or AGGREGATORS.get(agg["name"]).levels[0]
            mem = f"{peak:.0f}" if peak is not None else "n/a"
            extra = f"{(peak - ew_peak) / buf_mib:.2f}" if peak is not None and ew_peak is not None else "n/a"
            med, low = statistics.median(times[label]) * 1e3, min(times[label]) * 1e3
            lines.append(f"| {T} | {label} | {level} | {med:.1f} | {low:.1f} | {t / ew_t:.2f} | {t / floor_t:.2f} | "
                         f"{mem} | {extra} |")
        del model
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
