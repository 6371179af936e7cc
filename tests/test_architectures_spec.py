"""The architecture study spec and the spec loader's view of architectures (no data, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from torch import nn

from study.architectures import ARCHITECTURES, encoder_factory
from study.errors import SpecError
from study.problems import PROBLEMS
from study.spec import load_spec, parse_spec

SPEC = Path(__file__).resolve().parent.parent / "search_spaces" / "architecture_study.yaml"


def test_architecture_study_is_the_papers_grid():
    spec = load_spec(SPEC, check_data=False)
    configs = spec.trial_configs()
    assert {c["problem"] for c in configs} == {"nyuv2"}
    archs = {(c["architecture"], tuple(sorted(c["architecture_params"].items()))) for c in configs}
    assert {a for a, _ in archs} == {"hps", "cross_stitch", "mtan", "nddr"}
    assert ("mtan", (("attention_reduction", 4),)) in archs
    methods = {c["method"]["label"]: c["method"] for c in configs}
    assert set(methods) == {"EW", "CAGRAD", "RLW", "RLW+CAGRAD"}
    combo = methods["RLW+CAGRAD"]
    assert combo["weighting"]["name"] == "rlw" and combo["aggregator"]["name"] == "cagrad"
    assert len(configs) == 4 * 4 * len(spec.seeds) and len(spec.seeds) == 3
    assert configs[0]["train"]["epochs"] == 200 and configs[0]["train"]["batch_size"] == 8


def test_every_architecture_applies_to_nyuv2_and_none_but_hps_to_a_transformer_problem():
    nyuv2 = PROBLEMS.get("nyuv2")(root=None, pretrained=False)
    for name in ARCHITECTURES.names():
        assert ARCHITECTURES.get(name).applicable(nyuv2) is None, name
    text = [PROBLEMS.get(n) for n in PROBLEMS.names() if getattr(PROBLEMS.get(n), "encoder_kind", "") == "transformer"]
    if not text:
        pytest.skip("no transformer problem registered")
    problem = text[0]()
    for name in ARCHITECTURES.names():
        assert (ARCHITECTURES.get(name).applicable(problem) is None) == (name == "hps"), name


def test_spec_loader_rejects_a_stagewise_architecture_on_a_transformer_problem_in_one_line():
    text = [n for n in PROBLEMS.names() if getattr(PROBLEMS.get(n), "encoder_kind", "") == "transformer"]
    if not text:
        pytest.skip("no transformer problem registered")
    raw = {"name": "bad", "problem": text[0], "architecture": "cross_stitch", "methods": ["ew"]}
    with pytest.raises(SpecError) as err:
        parse_spec(raw, check_data=False)
    msg = str(err.value)
    assert "cross_stitch" in msg and "does not apply" in msg and "stage" in msg and "\n" not in msg


def test_nddr_over_the_nyuv2_resnet18_backbone_is_sized_from_stage_channels():
    nyuv2 = PROBLEMS.get("nyuv2")(root=None, backbone="resnet18", pretrained=False)
    # construction only (three ResNet-18 columns, no forward); the ASPP heads need the data, so none here
    model = ARCHITECTURES.get("nddr")(encoder_factory(nyuv2), {t: nn.Identity() for t in nyuv2.tasks},
                                      tuple(nyuv2.tasks), False)
    channels = [units[0].bn.num_features for units in model.units]
    assert channels == [64, 64, 128, 256]  # the outputs of the stem and layers 1-3
    assert set(model.task_parameters()) == set(nyuv2.tasks)
