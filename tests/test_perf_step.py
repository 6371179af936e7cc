"""The fast path of shared-parameter gradient methods (issue 3 "Speed", issue 10): the Gramian in blocks,
weights only from the aggregator, the combination written into persistent ``.grad`` views; all checked
against a float64 reference computed independently of :class:`MethodStep`."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from study.architectures.hps import HPS
from study.weighting import AGGREGATORS
from study.weighting.base import GRAM_BLOCK, GramianAggregator, gramian_of
from study.weighting.method import build_method, normalize_method
from study.weighting.step import MethodStep

torch.set_num_threads(1)
TASKS = ("a", "b", "c")


from tests.test_weighting_engine import ToyProblem as Problem  # noqa: E402  (three MSE tasks a, b, c)


def model_and_batch(seed=0):
    torch.manual_seed(seed)
    # 64*300 + 300 + 300*8 + 8 = 22,108 shared parameters: more than 4 Gramian blocks, not a multiple
    enc = lambda: nn.Sequential(nn.Linear(64, 300), nn.Tanh(), nn.Linear(300, 8), nn.Tanh())  # noqa: E731
    model = HPS(enc, {t: nn.Linear(8, 1) for t in TASKS}, TASKS, False)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(32, 64, generator=g)
    y = {t: torch.randn(32, 1, generator=g) for t in TASKS}
    return model, x, y


def shared_of(model):
    return [p for p in model.shared_parameters() if p.requires_grad]


def run_step(step, model, x, y, seed=0):
    losses = step.losses(Problem(), x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step.backward(losses, np.random.default_rng(seed))
    return losses


def test_gramian_of_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    for T, d in [(3, 5 * GRAM_BLOCK + 123), (10, 4 * GRAM_BLOCK), (2, 100)]:
        G = torch.randn(T, d, generator=g)
        ref = G.double() @ G.double().T
        torch.testing.assert_close(gramian_of(G).double(), ref, rtol=1e-5, atol=1e-3)
    G = torch.randn(3, 10 * GRAM_BLOCK, generator=g)
    strided = G[:, ::2]  # not unit-stride: the plain product
    torch.testing.assert_close(gramian_of(strided).double(), strided.double() @ strided.double().T,
                               rtol=1e-5, atol=1e-3)
    row_slice = G[:, 7:7 + 5 * GRAM_BLOCK]  # unit stride, row stride != d: blocked
    torch.testing.assert_close(gramian_of(row_slice).double(), row_slice.double() @ row_slice.double().T,
                               rtol=1e-5, atol=1e-3)


GRAMIAN_METHODS = [n for n in AGGREGATORS.names()
                   if issubclass(AGGREGATORS.get(n), GramianAggregator) and "parameters" in AGGREGATORS.get(n).levels]


def test_the_fast_path_covers_the_gramian_methods():
    assert {"mgda", "cagrad", "pcgrad", "gradvac", "imtl_g", "nash_mtl", "upgrad", "aligned_mtl"} <= set(
        GRAMIAN_METHODS)


@pytest.mark.parametrize("name", GRAMIAN_METHODS)
def test_direction_equals_the_float64_reference(name):
    model, x, y = model_and_batch()
    w, agg = build_method(normalize_method({"name": name, "level": "parameters"}), len(TASKS))
    step = MethodStep(model, w, agg)
    losses = run_step(step, model, x, y, seed=3)
    shared = shared_of(model)

    # reference: per-task gradients by autograd, weights from a fresh aggregator on the float64 Gramian
    model2, _, _ = model_and_batch()
    out = model2(x)
    rows, heads = [], {}
    for t in TASKS:
        loss = F.mse_loss(out[t], y[t])
        gs = torch.autograd.grad(loss, shared_of(model2), retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in gs]).double())
        heads[t] = torch.autograd.grad(loss, list(model2.decoders[t].parameters()), retain_graph=True)
    G = torch.stack(rows).numpy()
    _, fresh = build_method(normalize_method({"name": name, "level": "parameters"}), len(TASKS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wts = fresh.weights(G @ G.T, np.random.default_rng(3), losses.detach().double().numpy())
    ref = torch.from_numpy(wts @ G)

    got = torch.cat([p.grad.reshape(-1) for p in shared]).double()
    scale = ref.abs().max()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(scale))
    for t in TASKS:  # heads keep their own unweighted gradients
        for p, g in zip(model.decoders[t].parameters(), heads[t]):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


def test_combination_is_written_into_one_persistent_buffer():
    model, x, y = model_and_batch()
    w, agg = build_method(normalize_method("mgda"), len(TASKS))
    step = MethodStep(model, w, agg)
    shared = shared_of(model)
    ptrs = []
    for i in range(3):
        model.zero_grad(set_to_none=True)
        run_step(step, model, x, y)
        ptrs.append([p.grad.data_ptr() for p in shared])
    assert ptrs[0] == ptrs[1] == ptrs[2]  # no per-step reallocation of the direction
    G, _, flat, views = step._pviews
    assert shared[0].grad.data_ptr() == flat.data_ptr()
    assert all(p.grad is v for p, v in zip(shared, views))
    assert len(step._gbufs) == 1 and next(iter(step._gbufs.values())) is G


def test_kept_and_accumulated_gradients_follow_autograd_semantics():
    model, x, y = model_and_batch()
    w, agg = build_method(normalize_method("mgda"), len(TASKS))
    step = MethodStep(model, w, agg)
    shared = shared_of(model)
    run_step(step, model, x, y)
    first = [p.grad.clone() for p in shared]
    assert any(float(f.abs().max()) > 0 for f in first)

    model.zero_grad(set_to_none=False)  # zeroed in place: the next step writes the direction, not 2x it
    run_step(step, model, x, y)
    for p, f in zip(shared, first):
        torch.testing.assert_close(p.grad, f)

    run_step(step, model, x, y)  # no zeroing: gradients accumulate
    for p, f in zip(shared, first):
        torch.testing.assert_close(p.grad, 2 * f)

    for p in shared:  # gradients that are not the step's own buffer: added to, not replaced
        p.grad = torch.ones_like(p)
    run_step(step, model, x, y)
    for p, f in zip(shared, first):
        torch.testing.assert_close(p.grad, 1 + f)


def test_aggregation_overhead_benchmark_prints_its_table():
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "aggregation_overhead.py"), "--small",
                           "--tasks", "2", "3", "--repeats", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln.strip("|").split("|") for ln in proc.stdout.splitlines() if re.match(r"\| \d", ln)]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        (t, p) for t in ("2", "3") for p in ("rows", "gramian", "combine", "total")]
    for r in rows:
        before, after, speed = float(r[2]), float(r[3]), r[4].strip()
        assert before >= 0 and after >= 0 and re.fullmatch(r"[0-9.]+x|infx|nanx", speed), r
