"""Architectures: every architecture x (single-input, multi-input) x (vector, map) encoder on tiny tensors.

Shared checks: output shapes per task, gradients reach shared and task parameters, the parameter partition
is complete, disjoint and *exact* (a task parameter is reachable in the autograd graph of its own task's
output only; a shared one from two or more tasks'), one optimiser step changes the parameters, and a
state dict reloads into a fresh model. Per-architecture checks use hand-computed values.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from study.architectures import ARCHITECTURES, EncoderFactory, build_model, describe_architectures
from study.errors import SpecError
from study.problems.base import Problem

ALL = ["hps", "cross_stitch", "mtan", "nddr", "mmoe", "cgc", "ple", "dselect_k", "ltb"]
TASKS = ("a", "b", "c")
OUT = {"a": 3, "b": 1, "c": 2}
INPUT = (1, 8, 8)


class TinyCNN(nn.Module):
    """A staged CNN: 8x8 -> maps (4, 8, 8) -> (6, 4, 4) [-> vector (5,) when ``vector``]."""

    def __init__(self, vector: bool = True):
        super().__init__()
        stages = [
            nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
            nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.BatchNorm2d(6), nn.ReLU()),
        ]
        if vector:
            stages.append(nn.Sequential(nn.Flatten(), nn.Linear(6 * 4 * 4, 5), nn.ReLU()))
        self.stages = nn.ModuleList(stages)
        self.out_features = 5 if vector else 6

    def forward(self, x: Tensor) -> Tensor:
        for s in self.stages:
            x = s(x)
        return x


class TinyProblem(Problem):
    """Three tasks over TinyCNN; vector encoders get linear heads, map encoders 1x1-conv dense heads."""

    name = "tiny"
    encoder_kind = "cnn"
    input_shape = INPUT

    def __init__(self, multi_input: bool = False, vector: bool = True, tasks=TASKS):
        self.multi_input = multi_input
        self.vector = vector
        self.tasks = tuple(tasks)

    def build_encoder(self) -> nn.Module:
        return TinyCNN(self.vector)

    def build_decoder(self, task: str) -> nn.Module:
        if self.vector:
            return nn.Linear(5, OUT[task])
        return nn.Conv2d(6, OUT[task], 1)

    def loss(self, task: str, output: Tensor, target: Tensor) -> Tensor:
        return ((output - target) ** 2).mean()


def make(arch: str, multi: bool = False, vector: bool = True, tasks=TASKS, seed: int = 0, **params):
    torch.manual_seed(seed)
    model = build_model(TinyProblem(multi, vector, tasks), arch, params)
    if arch == "ltb":
        model.set_epoch(10, 20)  # past warm-up: the branching logits are in the graph
    return model


def inputs(multi: bool, tasks=TASKS, n: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    if multi:  # each task its own batch, of a different size
        return {t: torch.randn(n + i, *INPUT, generator=g) for i, t in enumerate(tasks)}
    return torch.randn(n, *INPUT, generator=g)


def expected_shape(task: str, batch: int, vector: bool) -> tuple[int, ...]:
    return (batch, OUT[task]) if vector else (batch, OUT[task], 4, 4)


def batch_of(x, task: str) -> int:
    return (x[task] if isinstance(x, dict) else x).shape[0]


def reachable_params(output: Tensor) -> set[int]:
    """ids of the leaf parameters in the autograd graph of ``output``."""
    seen, stack, found = set(), [output.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if var is not None:
            found.add(id(var))
        stack.extend(f for f, _ in fn.next_functions)
    return found


GRID = [(a, m, v) for a in ALL for m in (False, True) for v in (True, False)]
IDS = [f"{a}-{'multi' if m else 'single'}-{'vec' if v else 'map'}" for a, m, v in GRID]


@pytest.mark.parametrize(("arch", "multi", "vector"), GRID, ids=IDS)
def test_shapes_gradients_partition_and_step(arch, multi, vector):
    model = make(arch, multi, vector)
    model.train()
    x = inputs(multi)
    out = model(x)
    # output shapes per task
    assert set(out) == set(TASKS)
    for t in TASKS:
        assert tuple(out[t].shape) == expected_shape(t, batch_of(x, t), vector)

    # the partition is complete and disjoint
    shared = model.shared_parameters()
    task = model.task_parameters()
    assert set(task) == set(TASKS)
    ids = [id(p) for p in shared] + [id(p) for t in TASKS for p in task[t]]
    assert len(ids) == len(set(ids)), "a parameter is in two parts"
    assert set(ids) == {id(p) for p in model.parameters()}, "a parameter is in no part"
    assert shared, f"{arch} has no shared parameters"

    # ... and exact: task t's parameters feed only task t's output; shared ones feed two or more tasks
    reach = {t: reachable_params(out[t]) for t in TASKS}
    for t in TASKS:
        mine = {id(p) for p in task[t]}
        assert mine <= reach[t], f"{arch}: a parameter of task {t} does not affect its output"
        for s in TASKS:
            if s != t:
                assert not (mine & reach[s]), f"{arch}: a parameter of task {t} affects task {s}"
    for p in shared:
        users = [t for t in TASKS if id(p) in reach[t]]
        assert len(users) >= 2, f"{arch}: shared parameter {tuple(p.shape)} feeds only {users}"

    # gradients reach every parameter, shared and task-specific
    loss = sum(((out[t] - 0.5) ** 2).mean() for t in TASKS)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert sum(float(p.grad.norm()) for p in shared) > 0
    for t in TASKS:
        assert sum(float(p.grad.norm()) for p in task[t]) > 0, t

    # one optimiser step changes the parameters with a (clearly) non-zero gradient, in every part
    before = {id(p): p.detach().clone() for p in model.parameters()}
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    changed = {id(p) for p in model.parameters() if not torch.equal(before[id(p)], p.detach())}
    nonzero = {id(p) for p in model.parameters() if float(p.grad.abs().max()) > 0}
    clear = {id(p) for p in model.parameters() if float(p.grad.abs().max()) > 1e-5}  # not lost to rounding
    assert clear <= changed <= nonzero
    assert any(id(p) in changed for p in shared)
    for t in TASKS:
        assert any(id(p) in changed for p in task[t])


@pytest.mark.parametrize("arch", ALL)
def test_multi_input_subset_and_consistency_with_single_input(arch):
    """A multi-input model given one task's batch returns that task only (the evaluation loop does this),
    and each task's output equals the single-input model's output for the same batch."""
    single, multi = make(arch, False), make(arch, True)
    multi.load_state_dict(single.state_dict())
    single.eval(), multi.eval()
    x = inputs(False)
    with torch.no_grad():
        ref = single(x)
        for t in TASKS:
            got = multi({t: x})
            assert set(got) == {t}
            torch.testing.assert_close(got[t], ref[t])


@pytest.mark.parametrize("arch", ALL)
def test_state_dict_round_trip(arch):
    a, b = make(arch, seed=0), make(arch, seed=1)
    a.eval(), b.eval()
    x = inputs(False)
    with torch.no_grad():
        assert any(not torch.allclose(a(x)[t], b(x)[t]) for t in TASKS)
        b.load_state_dict(a.state_dict())
        for t in TASKS:
            torch.testing.assert_close(b(x)[t], a(x)[t])


def test_representations_and_registry_metadata():
    assert set(ALL) == set(ARCHITECTURES.names())
    for name in ALL:
        cls = ARCHITECTURES.get(name)
        assert cls.has_shared_representation is (name == "hps"), name
    hps = make("hps")
    x = inputs(False)
    rep = hps.encode(x)
    assert isinstance(rep, Tensor)  # one shared tensor read by every decoder
    out = hps.decode(rep)
    torch.testing.assert_close(out["a"], hps.decoders["a"](hps.encoder(x)))
    rep_multi = make("hps", multi=True).encode(inputs(True))
    assert set(rep_multi) == set(TASKS)


def test_describe_architectures_lists_every_architecture_with_its_defaults():
    rows = {name: (doc, hp) for name, doc, hp in describe_architectures()}
    assert set(rows) == set(ALL)
    assert rows["hps"][1] == {}
    assert rows["cross_stitch"][1] == {"alpha_self": 0.9, "channel_wise": False}
    assert rows["nddr"][1] == {"init_self": 0.9, "init_other": 0.1}
    assert rows["mtan"][1] == {"attention_reduction": 1}
    assert rows["mmoe"][1] == {"num_experts": 4}
    assert rows["cgc"][1] == rows["ple"][1] == {"num_shared_experts": 1, "num_task_experts": 1}
    assert rows["dselect_k"][1] == {"num_experts": 4, "num_nonzeros": 2, "gamma": 1.0}
    assert rows["ltb"][1] == {"warmup_fraction": 0.01, "tau_scale": 0.05}
    for name, (doc, _) in rows.items():
        assert doc and "\n" not in doc, name


# -- applicability and errors ------------------------------------------------------------------------
class TransformerProblem(TinyProblem):
    name = "texty"
    encoder_kind = "transformer"
    input_shape = None


class FlatEncoder(nn.Module):
    """A "cnn"-kind encoder without stages."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))

    def forward(self, x):
        return self.net(x)


class UnstagedProblem(TinyProblem):
    name = "unstaged"

    def build_encoder(self):
        return FlatEncoder()


STAGEWISE = ["cross_stitch", "mtan", "nddr", "ltb", "ple"]
GATED = ["mmoe", "cgc", "dselect_k"]


@pytest.mark.parametrize("arch", ALL)
def test_applicability_to_a_transformer_problem(arch):
    cls = ARCHITECTURES.get(arch)
    problem = TransformerProblem()
    reason = cls.applicable(problem)
    if arch == "hps":
        assert reason is None
        return
    assert reason and "'transformer'" in reason and "\n" not in reason
    assert ("stage" in reason) if arch in STAGEWISE else ("flattened input" in reason)
    with pytest.raises(SpecError) as err:
        build_model(problem, arch)
    msg = str(err.value)
    assert msg.startswith("architecture: ") and f"{arch!r} does not apply to problem 'texty'" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("arch", STAGEWISE)
def test_stagewise_architecture_on_an_encoder_without_stages(arch):
    assert ARCHITECTURES.get(arch).applicable(UnstagedProblem()) is None  # the kind says cnn ...
    with pytest.raises(SpecError, match=rf"architecture: {arch}: needs a staged encoder .*FlatEncoder has none"):
        build_model(UnstagedProblem(), arch)  # ... the built encoder says otherwise: ValueError -> SpecError
    with pytest.raises(ValueError, match=rf"^{arch}: needs a staged encoder"):
        ARCHITECTURES.get(arch)(lambda: FlatEncoder(), {t: nn.Linear(5, 1) for t in TASKS}, TASKS, False)


@pytest.mark.parametrize("arch", ["mtan", "ple", *GATED])
def test_missing_input_shape(arch):
    class NoShape(TinyProblem):
        input_shape = None

    reason = ARCHITECTURES.get(arch).applicable(NoShape())
    assert reason and "input_shape" in reason
    factory = NoShape().build_encoder  # a bare callable: no input shape anywhere
    with pytest.raises(ValueError, match=rf"^{arch}: needs the per-sample input shape"):
        ARCHITECTURES.get(arch)(factory, {t: nn.Linear(5, 1) for t in TASKS}, TASKS, False)
    # the shape may also come from the factory (EncoderFactory) or the encoder itself
    ARCHITECTURES.get(arch)(EncoderFactory(factory, "cnn", INPUT), {t: nn.Linear(5, 1) for t in TASKS}, TASKS, False)


def test_wrong_input_shape_is_reported_by_the_probe():
    problem = TinyProblem()
    problem.input_shape = (1, 9, 9)
    with pytest.raises(SpecError, match=r"mtan: probing the encoder's stages with a zero input of shape \(1, 9, 9\) failed"):
        build_model(problem, "mtan")


@pytest.mark.parametrize(("arch", "params", "message"), [
    ("cross_stitch", {"alpha_self": 1.5}, "alpha_self must be <= 1.0, got 1.5"),
    ("cross_stitch", {"channel_wise": "yes"}, "channel_wise must be true or false"),
    ("mmoe", {"num_experts": 0}, "num_experts must be an integer >= 1, got 0"),
    ("dselect_k", {"num_experts": 4, "num_nonzeros": 5}, "num_nonzeros must be <= num_experts"),
    ("dselect_k", {"gamma": 0.0}, "gamma must be > 0.0"),
    ("ltb", {"tau_scale": -1.0}, "tau_scale must be > 0.0"),
    ("mtan", {"attention_reduction": 1.5}, "attention_reduction must be an integer"),
    ("mtan", {"heads": 2}, "unknown parameter 'heads' for 'mtan'; valid: attention_reduction"),
])
def test_bad_hyperparameters_are_one_line_spec_errors(arch, params, message):
    with pytest.raises(SpecError) as err:
        build_model(TinyProblem(), arch, params)
    assert message in str(err.value) and str(err.value).startswith("architecture:")


# -- Cross-stitch ---------------------------------------------------------------------------------------
def test_cross_stitch_initialisation_and_mixing_by_hand():
    model = make("cross_stitch")  # 3 tasks: diagonal 0.9, off-diagonal (1 - 0.9) / 2
    expected = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    for b in range(model.n_stages - 1):
        torch.testing.assert_close(model.alphas(b), expected)
    feats = [torch.full((2, 4, 8, 8), v) for v in (1.0, 3.0, 10.0)]
    mixed = model.mix(0, feats, [0, 1, 2])
    for r, value in zip(range(3), (0.9 + 0.15 + 0.5, 0.05 + 2.7 + 0.5, 0.05 + 0.15 + 9.0)):
        torch.testing.assert_close(mixed[r], torch.full((2, 4, 8, 8), value))
    two = make("cross_stitch", tasks=("a", "b"), channel_wise=True)
    assert two.units[0][0].shape == (2, 4)  # per channel of stage 0 (probed: TinyCNN has no stage_channels)
    torch.testing.assert_close(two.alphas(1)[:, :, 0], torch.tensor([[0.9, 0.1], [0.1, 0.9]]))


def _independent(model, x, t):
    i = model.tasks.index(t)
    return model.decoders[t](model.columns[i](x))


def test_cross_stitch_at_identity_equals_independent_networks():
    """Property: with alpha = I, task t's output is that of its own column and decoder alone, for any
    number of tasks, per-channel or not, single- or multi-input, and any input."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=12, deadline=None)
    @given(n_tasks=st.integers(1, 3), channel_wise=st.booleans(), multi=st.booleans(), vector=st.booleans(),
           seed=st.integers(0, 10_000))
    def check(n_tasks, channel_wise, multi, vector, seed):
        tasks = TASKS[:n_tasks]
        model = make("cross_stitch", multi, vector, tasks, seed=seed, alpha_self=1.0, channel_wise=channel_wise)
        model.eval()
        x = inputs(multi, tasks, n=3, seed=seed)
        with torch.no_grad():
            out = model(x)
            for t in tasks:
                xt = x[t] if multi else x
                torch.testing.assert_close(out[t], _independent(model, xt, t), rtol=0, atol=0)

    check()
    # and the default (0.9) really mixes: the outputs are no longer those of independent networks
    model = make("cross_stitch").eval()
    x = inputs(False)
    with torch.no_grad():
        assert not torch.allclose(model(x)["a"], _independent(model, x, "a"))


# -- NDDR ---------------------------------------------------------------------------------------------
def test_nddr_initialisation_and_fusion_by_hand():
    model = make("nddr", tasks=("a", "b"))
    unit = model.units[0][1]  # boundary 0, task b: [0.1 I, 0.9 I] over 4 channels
    eye = torch.eye(4)
    torch.testing.assert_close(unit.conv.weight, torch.cat([0.1 * eye, 0.9 * eye], dim=1))
    model.eval()  # BatchNorm with its initial running statistics: y = x / sqrt(1 + eps)
    xa, xb = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    got = model.mix(0, [xa, xb], [0, 1])
    scale = 1 / math.sqrt(1 + unit.bn.eps)
    torch.testing.assert_close(got[0], torch.relu(0.9 * xa + 0.1 * xb) * scale)
    torch.testing.assert_close(got[1], torch.relu(0.1 * xa + 0.9 * xb) * scale)


# -- LTB ----------------------------------------------------------------------------------------------
def test_ltb_schedule_warmup_sampling_and_argmax():
    torch.manual_seed(0)
    model = build_model(TinyProblem(tasks=("a", "b")), "ltb")
    feats = [torch.full((2, 4, 8, 8), 1.0), torch.full((2, 4, 8, 8), 3.0)]
    # before set_epoch and during warm-up (epoch < 0.01 * epochs): the mean of the parents, logits untouched
    assert model.in_warmup()
    torch.testing.assert_close(model.mix(0, feats, [0])[0], torch.full((2, 4, 8, 8), 2.0))
    model.set_epoch(1, 200)
    assert model.in_warmup() and not model.branch_weights(0, 0).requires_grad
    model.set_epoch(3, 200)
    assert not model.in_warmup()
    assert model.temperature() == pytest.approx(0.05 * 200 / 2.0)
    model.train()
    w = model.branch_weights(0, 1)
    assert sorted(w.tolist()) == [0.0, 1.0] and w.requires_grad  # hard sample, straight-through gradient
    w[0].backward()
    assert model.logits[0][1].grad is not None and float(model.logits[0][1].grad.abs().sum()) > 0
    with torch.no_grad():
        model.logits[0][1].copy_(torch.tensor([-2.0, 5.0]))
    model.eval()
    torch.testing.assert_close(model.branch_weights(0, 1), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(model.mix(0, feats, [1])[1], feats[1])
    assert model.branches()[0][1] == 1


# -- MTAN ---------------------------------------------------------------------------------------------
def test_mtan_attention_by_hand_on_a_one_stage_encoder():
    class OneStage(TinyProblem):
        def build_encoder(self):
            enc = TinyCNN()
            enc.stages = enc.stages[:1]
            return enc

        def build_decoder(self, task):
            return nn.Conv2d(4, OUT[task], 1)

    torch.manual_seed(0)
    model = build_model(OneStage(), "mtan")
    assert model.split == [True]  # (conv, BN) | ReLU: the mask reads the pre-activation
    model.eval()
    x = inputs(False)
    stage = model.encoder.stages[0]
    u = stage[1](stage[0](x))
    p = torch.relu(u)
    with torch.no_grad():
        rep = model.encode(x)
    for t in TASKS:
        att = model.attention[t][0]
        with torch.no_grad():
            mask = torch.sigmoid(att[4](att[3](torch.relu(att[1](att[0](u))))))
        torch.testing.assert_close(rep[t], mask * p)
        assert float(mask.min()) > 0 and float(mask.max()) < 1


def test_mtan_shapes_on_the_tiny_cnn():
    model = make("mtan")
    assert model.split == [True, True, True]
    # stage 1 (maps, 6 channels at 4x4) -> stage 2 (vectors): global pool + linear to the 5 features
    assert isinstance(model.bridges[1].layer, nn.Linear) and model.bridges[1].pool_first
    assert isinstance(model.bridges[0].layer, nn.Conv2d)  # 4 ch 8x8 -> 6 ch, max-pooled to 4x4
    y = model.bridges[0](torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4))
    assert y.shape == (2, 6, 4, 4)
    reduced = make("mtan", attention_reduction=2)
    assert reduced.attention["a"][1][0].weight.shape == (3, 12)  # in: 6 (u) + 6 (bridge); hidden 6 // 2


def test_mtan_over_a_resnet18():
    from study.encoders import resnet_backbone

    class ResNetProblem(TinyProblem):
        encoder_kind = "resnet"
        input_shape = (3, 32, 32)

        def build_encoder(self):
            return resnet_backbone("resnet18")

        def build_decoder(self, task):
            return nn.Conv2d(512, OUT[task], 1)

    torch.manual_seed(0)
    model = build_model(ResNetProblem(tasks=("a", "b")), "mtan", {"attention_reduction": 4})
    # stem (conv, bn, relu, maxpool) halves the size at its end: no split; layers: all blocks but the last
    assert model.split == [False, True, True, True, True]
    out = model(torch.randn(2, 3, 32, 32))
    assert out["a"].shape == (2, 3, 1, 1) and out["b"].shape == (2, 1, 1, 1)


# -- mixtures of experts --------------------------------------------------------------------------------
def test_mmoe_is_a_gate_weighted_sum_of_experts():
    model = make("mmoe", num_experts=3).eval()
    x = inputs(False)
    with torch.no_grad():
        out = model.encode(x)
        experts = [e(x) for e in model.experts]
        for t in TASKS:
            w = torch.softmax(model.gates[t](x.flatten(1)), dim=-1)
            torch.testing.assert_close(w.sum(-1), torch.ones(len(x)))
            torch.testing.assert_close(out[t], sum(w[:, i:i + 1] * experts[i] for i in range(3)))


def test_cgc_gate_mixes_own_then_shared_experts():
    model = make("cgc", num_shared_experts=2, num_task_experts=1).eval()
    x = inputs(False)
    with torch.no_grad():
        out = model.encode(x)
        w = torch.softmax(model.gates["b"](x.flatten(1)), dim=-1)
        parts = [model.task_experts["b"][0](x), model.shared_experts[0](x), model.shared_experts[1](x)]
        torch.testing.assert_close(out["b"], sum(w[:, i:i + 1] * parts[i] for i in range(3)))


def test_ple_levels_and_gate_sizes():
    model = make("ple", num_shared_experts=2, num_task_experts=1)
    assert model.n_levels == 3
    assert len(model.shared_gates) == 2 and model.shared_gates[0].out_features == 3 * 1 + 2
    assert model.task_gates["a"][2].out_features == 1 + 2 and model.task_gates["a"][0].in_features == 64


def test_dselect_k_smooth_step_and_selectors_by_hand():
    from study.architectures.dselect_k import binary_codes, smooth_step

    t = torch.tensor([-1.0, -0.5, 0.0, 0.25, 0.5, 2.0])
    torch.testing.assert_close(smooth_step(t, 1.0), torch.tensor([0.0, 0.0, 0.5, 0.84375, 1.0, 1.0]))
    assert smooth_step(torch.tensor([0.5]), 2.0).item() == pytest.approx(-2 / 8 * 0.125 + 3 / 4 * 0.5 + 0.5)
    assert binary_codes(2).tolist() == [[False, False], [False, True], [True, False], [True, True]]

    four = make("dselect_k", num_experts=4, num_nonzeros=1)
    # saturated logits (+, -) select binary code 10 = expert 2
    torch.testing.assert_close(four.selector_weights(torch.tensor([[[1.0, -1.0]]])), torch.tensor([[[0.0, 0.0, 1.0, 0.0]]]))
    # logits at 0: every code weighs 1/4
    torch.testing.assert_close(four.selector_weights(torch.zeros(1, 1, 2)), torch.full((1, 1, 4), 0.25))
    three = make("dselect_k", num_experts=3, num_nonzeros=2)
    # with 3 experts code 11 folds onto expert 0 (3 mod 3); weights stay a distribution
    torch.testing.assert_close(three.selector_weights(torch.tensor([[[1.0, 1.0]]])), torch.tensor([[[1.0, 0.0, 0.0]]]))
    torch.testing.assert_close(three.selector_weights(torch.zeros(1, 1, 2)), torch.tensor([[[0.5, 0.25, 0.25]]]))
    x = inputs(False)
    w = three.gate_weights("a", x)
    torch.testing.assert_close(w.sum(-1), torch.ones(len(x)))
    # initialisation of the official code: selector logits within gamma / 100
    assert float(three.z_logits["a"].weight.detach().abs().max()) <= 0.01
    with torch.no_grad():
        out = three.encode(x)["a"]
        experts = [e(x) for e in three.experts]
        torch.testing.assert_close(out, sum(w[:, i:i + 1] * experts[i] for i in range(3)))


# -- through the trainer --------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ALL)
def test_one_trial_epoch_on_multidigits(arch):
    """Every architecture trains through the real trial loop on the demo's DigitsCNN, with a loss
    weighting (EW) and with a parameter-level gradient method (CAGrad) that uses shared_parameters()."""
    from study.training import train_trial
    from study.weighting.method import normalize_method
    from tests.conftest import tiny_trial_config

    cfg = tiny_trial_config("ew")
    cfg["problem_params"] = {"n_train": 48, "n_val": 16, "n_test": 16, "width": 2}
    cfg["train"]["batch_size"] = 16
    cfg["architecture"] = arch
    metrics = train_trial(cfg)
    assert all(math.isfinite(metrics[f"val/{t}/loss"]) for t in ("left", "right"))
    cfg["method"] = normalize_method({"weighting": {"name": "ew"}, "aggregator": {"name": "cagrad"}})
    metrics = train_trial(cfg)
    assert all(math.isfinite(metrics[f"train/{t}/loss"]) for t in ("left", "right"))


# -- `litmus architectures` ------------------------------------------------------------------------------
def test_litmus_architectures_lists_every_architecture_with_its_hyperparameters(capsys):
    from study.cli import main

    assert main(["architectures"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Architectures (architecture: NAME or {name: NAME, hyperparameter: value})")
    blocks: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line.startswith("  ") and not line.startswith("   "):
            name = line.split()[0]
            blocks[name] = [line]
        elif line.strip():
            blocks[name].append(line.strip())
    assert set(blocks) == set(ALL)
    expected = {
        "hps": None,
        "cross_stitch": "hyperparameters: alpha_self: 0.9, channel_wise: false",
        "mtan": "hyperparameters: attention_reduction: 1",
        "nddr": "hyperparameters: init_self: 0.9, init_other: 0.1",
        "mmoe": "hyperparameters: num_experts: 4",
        "cgc": "hyperparameters: num_shared_experts: 1, num_task_experts: 1",
        "ple": "hyperparameters: num_shared_experts: 1, num_task_experts: 1",
        "dselect_k": "hyperparameters: num_experts: 4, num_nonzeros: 2, gamma: 1.0",
        "ltb": "hyperparameters: warmup_fraction: 0.01, tau_scale: 0.05",
    }
    for name, hp in expected.items():
        block = blocks[name]
        assert block[0].split(None, 1)[1] == describe_architectures_doc(name)
        if hp is None:
            assert len(block) == 2 and block[1] == "encoders: any; shared representation: yes"
        else:
            assert block[1] == hp, name
            kinds = "cnn, resnet, mlp" if name in GATED else "cnn, resnet"
            assert block[2] == f"encoders: {kinds}; shared representation: no (parameter-level gradient methods only)"
    # what the listing says is what a spec accepts
    from study.spec import parse_spec

    spec = parse_spec({"problem": "multidigits", "methods": ["ew"],
                       "architectures": [{"name": "cross_stitch", "alpha_self": 0.9, "channel_wise": False},
                                         {"name": "dselect_k", "num_experts": 4, "num_nonzeros": 2, "gamma": 1.0}]},
                      check_data=False)
    assert len(spec.trial_configs()) == 2


def describe_architectures_doc(name):
    return {n: d for n, d, _ in describe_architectures()}[name]


# -- over torchvision ResNets ------------------------------------------------------------------------------
class ResNetTiny(TinyProblem):
    """Two tasks over a staged torchvision ResNet on 32x32 images: one dense head, one pooled classifier."""

    name = "resnet_tiny"
    encoder_kind = "resnet"
    input_shape = (3, 32, 32)

    def __init__(self, backbone: str = "resnet18", multi_input: bool = False):
        super().__init__(multi_input, vector=False, tasks=("seg", "cls"))
        self.backbone = backbone

    def build_encoder(self):
        from study.encoders import resnet_backbone

        return resnet_backbone(self.backbone)

    def build_decoder(self, task):
        width = 512 if self.backbone == "resnet18" else 2048
        if task == "seg":
            return nn.Conv2d(width, 4, 1)
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("arch", ALL)
def test_every_architecture_over_a_resnet18(arch, multi):
    torch.manual_seed(0)
    problem = ResNetTiny("resnet18", multi)
    assert ARCHITECTURES.get(arch).applicable(problem) is None
    model = build_model(problem, arch, {"num_experts": 2} if arch in ("mmoe", "dselect_k") else {})
    if arch == "ltb":
        model.set_epoch(5, 10)
    model.train()
    g = torch.Generator().manual_seed(0)
    x = {"seg": torch.randn(2, 3, 32, 32, generator=g), "cls": torch.randn(3, 3, 32, 32, generator=g)} if multi \
        else torch.randn(2, 3, 32, 32, generator=g)
    out = model(x)
    n = {t: (x[t] if multi else x).shape[0] for t in problem.tasks}
    assert out["seg"].shape == (n["seg"], 4, 1, 1) and out["cls"].shape == (n["cls"], 3)  # output stride 32
    shared, task = model.shared_parameters(), model.task_parameters()
    ids = [id(p) for p in shared] + [id(p) for t in problem.tasks for p in task[t]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    (out["seg"].square().mean() + out["cls"].square().mean()).backward()
    assert sum(float(p.grad.abs().sum()) for p in shared if p.grad is not None) > 0
    for t in problem.tasks:
        assert sum(float(p.grad.abs().sum()) for p in task[t] if p.grad is not None) > 0, t
    if arch in ("cross_stitch", "nddr", "ltb"):  # units sized from the backbone's stage_channels
        assert model.n_stages == 5


@pytest.mark.parametrize("arch", ["hps", "cross_stitch", "mtan", "nddr"])
def test_the_papers_four_over_the_dilated_resnet50(arch):
    """The architecture study's backbone (output stride 8): dense outputs keep 1/8 of the input size."""
    torch.manual_seed(0)
    model = build_model(ResNetTiny("resnet50_dilated"), arch, {"attention_reduction": 4} if arch == "mtan" else {})
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out["seg"].shape == (1, 4, 4, 4) and out["cls"].shape == (1, 3)
    if arch == "nddr":
        assert [u[0].bn.num_features for u in model.units] == [64, 256, 512, 1024]


def test_cross_stitch_at_identity_matches_separately_built_single_task_networks():
    """alpha = I: each task's output equals that of a separately built single-task HPS network holding the
    same weights (bit for bit), and a task's loss sends no gradient into the other tasks' columns."""
    model = make("cross_stitch", alpha_self=1.0).eval()
    x = inputs(False)
    with torch.no_grad():
        out = model(x)
    for i, t in enumerate(TASKS):
        torch.manual_seed(99)
        alone = build_model(TinyProblem(tasks=(t,)), "hps")
        assert not torch.equal(alone.encoder.stages[0][0].weight, model.columns[i].stages[0][0].weight)
        alone.encoder.load_state_dict(model.columns[i].state_dict())
        alone.decoders[t].load_state_dict(model.decoders[t].state_dict())
        alone.eval()
        with torch.no_grad():
            torch.testing.assert_close(alone(x)[t], out[t], rtol=0, atol=0)
    model.train()
    model(x)["a"].square().mean().backward()
    for i, t in enumerate(TASKS):
        grads = [p.grad for p in model.columns[i].parameters()]
        if t == "a":
            assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
        else:
            assert all(g is None or float(g.abs().max()) == 0.0 for g in grads), t
