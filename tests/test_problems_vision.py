"""The five vision problems on tiny data sets in each exact on-disk format: encoders, readers, split
rules, checks, `check-data`, one-epoch studies and the main-table specs."""

from __future__ import annotations

import os
import sys
import urllib.error

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, os.path.dirname(__file__))
from fixtures_vision import write_celeba, write_dense, write_office  # noqa: E402

from study import encoders  # noqa: E402
from study.data_check import check_data, summarize  # noqa: E402
from study.errors import DataError, SpecError  # noqa: E402
from study.problems import PROBLEMS  # noqa: E402
from study.problems.celeba import ATTRIBUTES, CachedImages, CelebA, read_attributes  # noqa: E402
from study.problems.dense import CityScapes, NYUv2, carve_validation  # noqa: E402
from study.problems.office import Office31, OfficeHome  # noqa: E402
from study.training import train_trial  # noqa: E402

OFFICE_HOME = ("Art", "Clipart", "Product", "Real_World")
DENSE_SMALL = {"backbone": "resnet18", "pretrained": False, "head_channels": 8, "num_workers": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    paths = {k: str(root / k) for k in ("nyuv2", "cityscapes", "celeba", "celeba_png", "office31", "officehome")}
    write_dense(paths["nyuv2"], "nyuv2", n_train=10, n_test=4, hw=(32, 32))
    write_dense(paths["cityscapes"], "cityscapes", n_train=6, n_test=3, hw=(16, 32), label_folder="label_7")
    write_celeba(paths["celeba"], sizes=(8, 4, 4))
    write_celeba(paths["celeba_png"], sizes=(3, 2, 2), fmt="png", seed=1)
    write_office(paths["office31"])
    write_office(paths["officehome"], domains=OFFICE_HOME, num_classes=65, sizes={"train": 3, "val": 2, "test": 2})
    return paths


# -- encoders --------------------------------------------------------------------------------

@pytest.mark.parametrize("name,size,out_shape", [
    ("resnet18", 64, (512, 2, 2)),
    ("resnet50_dilated", 32, (2048, 4, 4)),   # output stride 8
])
def test_staged_encoder_stages_in_order_equal_forward(name, size, out_shape):
    torch.manual_seed(0)
    enc = encoders.resnet_backbone(name).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        y = x
        for stage, channels in zip(enc.stages, enc.stage_channels):
            y = stage(y)
            assert y.shape[1] == channels
        assert torch.equal(y, enc(x))
    assert tuple(y.shape[1:]) == out_shape
    assert enc.out_features == out_shape[0]


def test_pooled_encoder_and_office_head_stage():
    enc = encoders.resnet_backbone("resnet18", head=(512, 0.5)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        y = x
        for stage in enc.stages:
            y = stage(y)
        assert torch.equal(y, enc(x))
    assert y.shape == (3, 512) and enc.out_features == 512
    head = enc.stages[-1]
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Dropout"]
    assert head[3].p == 0.5


def test_unknown_backbone_is_a_value_error():
    with pytest.raises(ValueError, match="backbone must be one of"):
        encoders.resnet_backbone("vgg16")


def test_pretrained_weights_unavailable_names_the_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(weights):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(encoders, "_download", offline)
    with pytest.raises(DataError) as err:
        encoders.resnet_backbone("resnet18", pretrained=True)
    msg = str(err.value)
    assert os.path.join(str(tmp_path), "hub", "checkpoints", "resnet18-f37072fd.pth") in msg
    assert "pretrained: false" in msg and "\n" not in msg


def test_pretrained_weights_are_read_from_the_torch_hub_cache(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(encoders, "_download", lambda w: pytest.fail("must not download a cached file"))
    torch.manual_seed(3)
    reference = resnet18()
    path = encoders.weights_cache_path(encoders.weights_enum(18))
    os.makedirs(os.path.dirname(path))
    torch.save(reference.state_dict(), path)
    enc = encoders.resnet_backbone("resnet18", pretrained=True)
    assert torch.equal(enc.stages[0][0].weight, reference.conv1.weight)
    assert torch.equal(enc.stages[4][1].conv2.weight, reference.layer4[1].conv2.weight)


# -- registration and parameters -------------------------------------------------------------

def test_problems_registered_with_paper_defaults():
    assert {"nyuv2", "cityscapes", "celeba", "office31", "officehome"} <= set(PROBLEMS.names())
    assert PROBLEMS.get("office-31") is Office31 and PROBLEMS.get("office-home") is OfficeHome
    assert NYUv2.tasks == ("segmentation", "depth", "normal") and CityScapes.tasks == ("segmentation", "depth")
    assert NYUv2.defaults["batch_size"] == 8 and CityScapes.defaults["batch_size"] == 64
    for cls in (NYUv2, CityScapes):
        d = cls.defaults
        step = {"name": "step", "step_size": 100, "gamma": 0.5}
        assert (d["lr"], d["weight_decay"], d["scheduler"], d["epochs"]) == (1e-4, 1e-5, step, 200)
    assert (CelebA.defaults["lr"], CelebA.defaults["batch_size"]) == (1e-3, 512)
    assert (Office31.defaults["lr"], Office31.defaults["weight_decay"]) == (1e-4, 1e-5)
    assert len(CelebA.tasks) == 40 and Office31.tasks == ("amazon", "dslr", "webcam")
    assert OfficeHome.tasks == OFFICE_HOME and Office31.multi_input and OfficeHome.multi_input
    # per-sample input shapes (architectures size gates from them): the paper's until data says otherwise
    assert NYUv2(root="/nonexistent").input_shape == (3, 288, 384)
    assert CityScapes(root="/nonexistent").input_shape == (3, 128, 256)
    assert CelebA(root="/x").input_shape == (3, 64, 64) and Office31(root="/x").input_shape == (3, 224, 224)


@pytest.mark.parametrize("cls,params,match", [
    (NYUv2, {"val_fraction": 1.0}, "val_fraction"),
    (NYUv2, {"backbone": "resnet34"}, "backbone"),
    (CityScapes, {"atrous_rates": []}, "atrous_rates"),
    (CelebA, {"attributes": ["Smiling", "Grumpy"]}, "Grumpy"),
    (CelebA, {"image_size": 4}, "image_size"),
    (Office31, {"pretrained": "yes"}, "pretrained"),
])
def test_bad_parameters_are_value_errors(cls, params, match):
    with pytest.raises(ValueError, match=match):
        cls(root="/x", **params)


# -- dense problems --------------------------------------------------------------------------

def test_validation_rule_is_fixed_disjoint_and_documented():
    ids = list(range(20))
    train, val = carve_validation(ids, 0.25, 0)
    assert len(val) == 5 and sorted(train + val) == ids and not set(train) & set(val)
    order = np.random.default_rng(0).permutation(20)
    assert val == sorted(order[:5].tolist())
    assert carve_validation(ids, 0.25, 0) == (train, val)
    assert carve_validation(ids, 0.25, 1) != (train, val)
    assert carve_validation(list(range(4)), 0.1, 0)[1] != []  # a requested validation split is never empty
    assert carve_validation(ids, 0.0, 0) == (ids, [])


def test_nyuv2_reads_the_release_format(data):
    p = NYUv2(root=data["nyuv2"], val_fraction=0.2, **DENSE_SMALL)
    assert p.input_shape == (3, 32, 32)
    splits = p.load(seed=0)
    other = NYUv2(root=data["nyuv2"], val_fraction=0.2, **DENSE_SMALL).load(seed=5)
    assert splits["train"].ids == other["train"].ids  # the same split for every trial seed
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (8, 2, 4)
    assert sorted(splits["train"].ids + splits["val"].ids) == list(range(10))
    x, y = splits["val"][1]
    i = splits["val"].ids[1]
    root = data["nyuv2"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(np.load(f"{root}/train/image/{i}.npy")).permute(2, 0, 1))
    label = np.load(f"{root}/train/label/{i}.npy")
    assert y["segmentation"].dtype == torch.int64 and torch.equal(y["segmentation"], torch.from_numpy(label).long())
    assert int((y["segmentation"] == -1).sum()) == int((label == -1).sum()) > 0
    assert y["depth"].shape == (1, 32, 32) and float(y["depth"][0, 0, 0]) == 0.0
    assert y["normal"].shape == (3, 32, 32)
    assert torch.equal(y["normal"], torch.from_numpy(np.load(f"{root}/train/normal/{i}.npy")).permute(2, 0, 1))


def test_cityscapes_reads_label_7_folder_and_in_memory_equals_files(data):
    files = CityScapes(root=data["cityscapes"], val_fraction=0.0, **DENSE_SMALL)
    mem = CityScapes(root=data["cityscapes"], val_fraction=0.0, in_memory=True, **DENSE_SMALL)
    a, b = files.load(0), mem.load(0)
    assert a["val"] is None and b["val"] is None
    for (xa, ya), (xb, yb) in zip(files.batches(a["test"], 2, shuffle=False, generator=None),
                                  mem.batches(b["test"], 2, shuffle=False, generator=None)):
        assert torch.equal(xa, xb)
        assert all(torch.equal(ya[t], yb[t]) for t in ("segmentation", "depth"))
    # training drops the incomplete last batch (6 samples, batch 4): BN after ASPP pooling needs > 1 sample
    g = torch.Generator().manual_seed(0)
    assert [len(x) for x, _ in mem.batches(b["train"], 4, shuffle=True, generator=g)] == [4]
    assert [len(x) for x, _ in mem.batches(b["test"], 2, shuffle=False, generator=None)] == [2, 1]


def test_dense_decoders_output_label_sized_maps_and_unit_normals(data):
    p = NYUv2(root=data["nyuv2"], **DENSE_SMALL)
    enc = p.build_encoder().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feat = enc(x)
        out = {t: p.build_decoder(t).eval()(feat) for t in p.tasks}
    assert out["segmentation"].shape == (2, 13, 32, 32)
    assert out["depth"].shape == (2, 1, 32, 32)
    assert out["normal"].shape == (2, 3, 32, 32)
    assert torch.allclose(out["normal"].norm(dim=1), torch.ones(2, 32, 32), atol=1e-5)


def test_dense_check_fails_with_one_line_before_training(data, tmp_path):
    with pytest.raises(DataError, match="root is not set"):
        NYUv2().check()
    with pytest.raises(DataError, match="does not exist"):
        NYUv2(root=str(tmp_path / "nope")).check()
    write_dense(str(tmp_path / "n"), "nyuv2", n_train=3, n_test=2, hw=(8, 8))
    os.remove(tmp_path / "n" / "val" / "depth" / "1.npy")
    with pytest.raises(DataError, match=r"different numbers of samples \(image: 2, label: 2, depth: 1"):
        NYUv2(root=str(tmp_path / "n")).check()
    import shutil

    shutil.rmtree(tmp_path / "n" / "train" / "normal")
    with pytest.raises(DataError) as err:
        NYUv2(root=str(tmp_path / "n")).check()
    assert "train/normal is missing" in str(err.value) and "\n" not in str(err.value)


# -- CelebA ----------------------------------------------------------------------------------

def test_celeba_attribute_file_and_partition_are_parsed(data):
    names, files, values = read_attributes(os.path.join(data["celeba"], "Anno", "list_attr_celeba.txt"))
    assert tuple(names) == ATTRIBUTES and len(files) == 16 and set(np.unique(values)) == {-1, 1}
    p = CelebA(root=data["celeba"], image_size=16, num_workers=0)
    splits = p.load(0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 4, 4]
    x, y = splits["val"][0]  # the 9th image of the file is the first of partition 1
    assert x.shape == (3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(y, torch.from_numpy((values[8] > 0).astype(np.int64)))
    xb, yb = next(p.batches(splits["train"], 5, shuffle=False, generator=None))
    assert xb.shape == (5, 3, 16, 16) and set(yb) == set(ATTRIBUTES)
    assert torch.equal(yb["Smiling"], torch.from_numpy((values[:5, ATTRIBUTES.index("Smiling")] > 0).astype(np.int64)))


@pytest.mark.parametrize("rows,match", [
    (["3", "{A}", "a.jpg {ones}"], "line 1 announces 3 images but 1 rows follow"),
    (["2", "{A}", "a.jpg {ones}", "b.jpg {short}"], "line 4 has fewer than 40 values"),
    (["2", "{A}", "a.jpg {ones}", "b.jpg {short} 0"], r"line 4 has a value other than -1/1 \('0'\)"),
    (["2", "{A}", "a.jpg {ones}", "b.jpg {short} yes"], r"line 4 has a value other than -1/1 \('yes'\)"),
    (["2", "{A}", "a.jpg {ones}", "b.jpg {ones} 1"], "malformed"),
    (["many", "{A}"], "line 1 should be the number of images"),
])
def test_malformed_attribute_files_name_the_line(tmp_path, rows, match):
    fill = {"A": " ".join(ATTRIBUTES), "ones": " ".join(["1"] * 40), "short": " ".join(["-1"] * 39)}
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text("\n".join(r.format(**fill) for r in rows) + "\n")
    with pytest.raises(ValueError, match=match):
        read_attributes(str(path))


def test_celeba_png_folder_and_attribute_subset(data):
    p = CelebA(root=data["celeba_png"], image_size=8, attributes=["Young", "Male"], num_workers=0)
    assert p.tasks == ("Young", "Male") and set(p.metrics()) == {"Young", "Male"}
    splits = p.load(0)
    assert splits["train"].paths[0].endswith(os.path.join("img_align_celeba_png", "000001.png"))
    _, y = splits["train"][0]
    assert y.shape == (2,)


def test_celeba_cache_is_memory_mapped_and_equals_decoding(data, tmp_path):
    plain = CelebA(root=data["celeba"], image_size=16, num_workers=0).load(0)
    cached_problem = CelebA(root=data["celeba"], image_size=16, num_workers=0, cache_dir=str(tmp_path))
    cached = cached_problem.load(0)
    assert isinstance(cached["test"], CachedImages) and isinstance(cached["test"].images, np.memmap)
    assert sorted(os.listdir(tmp_path)) == ["celeba_16_test.npy", "celeba_16_train.npy", "celeba_16_val.npy"]
    a = next(cached_problem.batches(cached["test"], 4, shuffle=False, generator=None))
    b = next(cached_problem.batches(plain["test"], 4, shuffle=False, generator=None))
    assert torch.equal(a[0], b[0]) and all(torch.equal(a[1][t], b[1][t]) for t in ATTRIBUTES)
    g = torch.Generator().manual_seed(0)
    assert sum(len(x) for x, _ in cached_problem.batches(cached["train"], 3, shuffle=True, generator=g)) == 8


def test_celeba_check_names_missing_pieces(tmp_path):
    with pytest.raises(DataError, match="list_attr_celeba.txt is missing"):
        CelebA(root=str(tmp_path)).check()


# -- Office ----------------------------------------------------------------------------------

def test_office_multi_input_lists_and_transforms(data):
    p = Office31(root=data["office31"], image_size=24, pretrained=False, num_workers=0)
    splits = p.load(0)
    assert set(splits) == {"train", "val", "test"} and set(splits["train"]) == {"amazon", "dslr", "webcam"}
    assert [len(splits["test"][d]) for d in p.tasks] == [3, 3, 3]
    x, y = splits["test"]["dslr"][0]  # a path with a space in it ("class 7/...")
    assert x.shape == (3, 24, 24) and y.dtype == torch.int64
    with open(os.path.join(data["office31"], "dslr_test.txt")) as f:
        assert int(y) == int(f.readline().rsplit(maxsplit=1)[1])
    xt, _ = splits["train"]["amazon"][0]
    assert xt.shape == (3, 24, 24)
    tr = [type(t).__name__ for t in splits["train"]["amazon"].transform.transforms]
    assert tr[:3] == ["Resize", "RandomCrop", "RandomHorizontalFlip"]
    assert [type(t).__name__ for t in splits["test"]["amazon"].transform.transforms][0] == "Resize"


def test_office_lists_elsewhere_and_bad_labels(tmp_path):
    write_office(str(tmp_path / "img"), lists=str(tmp_path / "lists"), sizes={"train": 2, "val": 1, "test": 1})
    p = Office31(root=str(tmp_path / "img"), lists=str(tmp_path / "lists"), image_size=16, pretrained=False)
    assert len(p.load(0)["train"]["webcam"]) == 2
    with pytest.raises(DataError, match="amazon_train.txt is missing"):
        Office31(root=str(tmp_path / "img"), pretrained=False).check()
    with open(tmp_path / "lists" / "dslr_val.txt", "w") as f:
        f.write("dslr/images/x.jpg 31\n")
    with pytest.raises(DataError, match="label 31 .* 0..30"):
        p.load(0)


# -- one-epoch studies -----------------------------------------------------------------------

def one_epoch(problem: str, params: dict, batch_size: int = 4) -> dict:
    return train_trial({
        "problem": problem, "problem_params": params, "architecture": "hps",
        "method": {"label": "EW", "weighting": {"name": "ew"}, "aggregator": None}, "seed": 0,
        "train": {"epochs": 1, "batch_size": batch_size, "lr": 1e-3, "device": "cpu"},
    })


@pytest.mark.parametrize("problem,key,params", [
    ("nyuv2", "nyuv2", DENSE_SMALL),
    ("cityscapes", "cityscapes", DENSE_SMALL),
    ("celeba", "celeba", {"image_size": 32, "num_workers": 0}),
    ("office31", "office31", {"image_size": 32, "pretrained": False, "num_workers": 0}),
    ("officehome", "officehome", {"image_size": 32, "pretrained": False, "num_workers": 0}),
])
def test_one_epoch_study_on_each_problem(data, problem, key, params):
    metrics = one_epoch(problem, {"root": data[key], **params})
    cls = PROBLEMS.get(problem)
    p = cls(root=data[key], **params)
    for split in ("val", "test"):
        for task, ms in p.metrics().items():
            for m in ms:
                v = metrics[f"{split}/{task}/{m.name}"]
                assert np.isfinite(v), f"{split}/{task}/{m.name}"
            assert np.isfinite(metrics[f"train/{task}/loss"])
    assert metrics["epoch"] == 1 and np.isfinite(metrics["val_score"])


def test_dense_metrics_accumulate_over_the_split_whatever_the_batch_size(data):
    """Every NYUv2 metric is pooled over the whole test split (4 samples): batches of 3 + 1, 2 + 2 or all 4
    give the same numbers (a mean of per-batch values would not)."""
    from study.architectures import build_model
    from study.training import evaluate

    torch.manual_seed(0)
    p = NYUv2(root=data["nyuv2"], **DENSE_SMALL)
    model = build_model(p, "hps")
    splits = p.load(0)
    runs = [evaluate(p, model, splits, "test", bs, torch.device("cpu")) for bs in (3, 2, 64)]
    names = [k for k in runs[0] if not k.endswith("/loss")]
    assert len(names) == sum(len(ms) for ms in p.metrics().values())
    for run in runs[:2]:
        for k in names:
            assert run[k] == pytest.approx(runs[2][k], rel=1e-9, abs=1e-9), k


# -- check-data ------------------------------------------------------------------------------

@pytest.mark.parametrize("problem,key,expect", [
    ("nyuv2", "nyuv2", "train/: 10 samples -> 9 training + 1 validation"),
    ("cityscapes", "cityscapes", "images: 3 x 16 x 32"),
    ("celeba", "celeba", "train / val / test: 8 / 4 / 4"),
    ("office31", "office31", "amazon: train / val / test 5 / 2 / 3"),
    ("officehome", "officehome", "Real_World: train / val / test 3 / 2 / 2"),
])
def test_check_data_accepts_each_fixture_and_summarizes(data, problem, key, expect):
    assert check_data(problem, data[key]) == []
    text = summarize(problem, data[key])
    assert text.startswith(f"{problem} data at {data[key]}: OK") and expect in text


def test_check_data_reports_one_line_per_dense_problem(tmp_path):
    root = str(tmp_path / "nyu")
    write_dense(root, "nyuv2", n_train=4, n_test=3, hw=(8, 8))
    os.remove(os.path.join(root, "train", "depth", "2.npy"))
    np.save(os.path.join(root, "val", "label", "1.npy"), np.full((8, 8), 13.0, dtype=np.float32))
    np.save(os.path.join(root, "val", "normal", "0.npy"), np.zeros((8, 7, 3), dtype=np.float32))
    np.save(os.path.join(root, "val", "image", "2.npy"), np.full((8, 8, 3), np.nan, dtype=np.float32))
    lines = check_data("nyuv2", root)
    assert lines == [
        f"nyuv2: {root}/train/depth: 1 of 4 samples missing (e.g. 2.npy)",
        f"nyuv2: {root}/val/normal/0.npy has shape (8, 7, 3), expected 8x8x3",
        f"nyuv2: {root}/val/label/1.npy has label 13; nyuv2 labels are 0..12 with -1 = ignore",
        f"nyuv2: {root}/val/image/2.npy holds NaN or infinite values",
    ]
    with pytest.raises(DataError, match="1 of 4 samples missing"):
        summarize("nyuv2", root)


def test_check_data_reports_celeba_and_office_problems(tmp_path):
    celeba = str(tmp_path / "celeba")
    write_celeba(celeba, sizes=(3, 1, 0))
    os.remove(os.path.join(celeba, "Img", "img_align_celeba", "000002.jpg"))
    assert check_data("celeba", celeba) == [
        "celeba: the test partition (2) is empty",
        f"celeba: {celeba}/Img/img_align_celeba: 1 of 4 images missing (e.g. 000002.jpg)",
    ]
    office = str(tmp_path / "office")
    write_office(office, domains=OFFICE_HOME, num_classes=65, sizes={"train": 2, "val": 1, "test": 1})
    os.remove(os.path.join(office, "Clipart_val.txt"))
    with open(os.path.join(office, "Art_test.txt"), "a") as f:
        f.write("Art/images/missing.jpg 70\n")
    lines = check_data("officehome", office)
    assert lines == [
        f"officehome: {office}/Art_test.txt: 1 labels outside 0..64 (e.g. 70 for Art/images/missing.jpg)",
        f"officehome: {office}/Art_test.txt: 1 of 2 listed images missing (e.g. {office}/Art/images/missing.jpg)",
        f"officehome: list file {office}/Clipart_val.txt is missing (one 'relative/path label' per line)",
    ]


def test_check_data_names_and_other_problems(tmp_path):
    with pytest.raises(SpecError, match="unknown problem 'nyu_v2'"):
        check_data("nyu_v2", str(tmp_path))
    assert check_data("multidigits", str(tmp_path)) == []
    assert "reads no data folder" in summarize("multidigits", str(tmp_path))


def test_cli_check_data_exit_codes(data, tmp_path, capsys):
    from study.cli import main

    assert main(["check-data", "cityscapes", data["cityscapes"]]) == 0
    assert "cityscapes data at" in capsys.readouterr().out
    assert main(["check-data", "cityscapes", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("litmus: error: cityscapes: ") and "train is missing" in err


# -- specs -----------------------------------------------------------------------------------

SPEC_DIR = os.path.join(os.path.dirname(__file__), "..", "search_spaces")
METHODS = ["ew", "gls", "rgw", "uw", "dwa", "imtl_l", "moml", "mgda", "gradnorm", "pcgrad", "graddrop", "imtl_g",
           "gradvac", "cagrad", "rotograd"]
DISTRIBUTIONS = ["normal", "uniform", "dirichlet", "bernoulli", "constrained_bernoulli", "random_normal"]


@pytest.mark.parametrize("name", ["nyuv2", "cityscapes", "celeba", "office31", "officehome"])
def test_main_table_specs(name):
    path = os.path.join(SPEC_DIR, f"{name}.yaml")
    with open(path) as f:
        raw = yaml.safe_load(f)
    assert raw["problem"]["name"] == name and raw["architecture"] == "hps"
    methods = raw["methods"]
    names = [m if isinstance(m, str) else m["name"] for m in methods]
    cls = PROBLEMS.get(name)
    # RotoGrad rotates one shared representation: single-input problems only (rejected at spec load otherwise)
    expected = [m for m in METHODS if m != "rotograd" or not cls.multi_input]
    assert sorted(n for n in names if n != "rlw") == sorted(expected)
    assert [m["distribution"] for m in methods if isinstance(m, dict) and m["name"] == "rlw"] == DISTRIBUTIONS
    for k, v in raw["train"].items():
        assert cls.defaults[k] == v, k
    assert raw["problem"].get("pretrained") is (name not in ("celeba",))
    from study.weighting import AGGREGATORS, WEIGHTINGS

    missing = [n for n in set(names) if n not in WEIGHTINGS.names() and n not in AGGREGATORS.names()]
    if missing:
        pytest.skip(f"methods not registered yet: {', '.join(sorted(missing))}")
    from study.spec import load_spec

    spec = load_spec(path, check_data=False)
    assert len(spec.methods) == len(expected) + len(DISTRIBUTIONS) and spec.seeds == [0, 1, 2]
