"""study.datacache: one load per process and per node, keyed by what the data depends on."""

from __future__ import annotations

import ast
import inspect
import multiprocessing as mp
import os
import textwrap

import numpy as np
import pytest
import torch

from study import datacache
from study.problems import PROBLEMS
from study.problems.base import TensorPairs
from study.problems.multidigits import MultiDigits
from study.training import Trial

from conftest import tiny_trial_config
from fixtures_vision import write_dense

SMALL = {"n_train": 64, "n_val": 16, "n_test": 16, "width": 8}


@pytest.fixture(autouse=True)
def _reset():
    yield
    datacache.configure(process=False)


@pytest.fixture
def counted(monkeypatch):
    """Count MultiDigits.load calls."""
    calls: list[int] = []
    original = MultiDigits.load

    def load(self, seed):
        calls.append(seed)
        return original(self, seed)

    monkeypatch.setattr(MultiDigits, "load", load)
    return calls


def _cfg(seed=0, **params):
    cfg = tiny_trial_config("ew", seed=seed)
    cfg["problem_params"] = {**SMALL, **params}
    return cfg


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, TensorPairs):
        return torch.equal(a.x, b.x) and _equal(a.targets, b.targets)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if a is None:
        return b is None
    return a.__dict__.keys() == b.__dict__.keys() and all(
        _equal(v, b.__dict__[k]) if isinstance(v, (dict, torch.Tensor, TensorPairs)) else v == b.__dict__[k]
        for k, v in a.__dict__.items())


# -- the key: built-in readers ignore the trial seed ----------------------------------------------
def _load_uses_seed(cls) -> bool:
    """Whether the body of ``cls.load`` reads its ``seed`` argument."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls.load)))
    fn = tree.body[0]
    arg = fn.args.args[1].arg
    return any(isinstance(n, ast.Name) and n.id == arg for stmt in fn.body for n in ast.walk(stmt))


def test_no_built_in_reader_uses_the_trial_seed():
    for name in PROBLEMS.names():
        cls = PROBLEMS.get(name)
        if cls.__module__.startswith("study.problems."):
            assert not _load_uses_seed(cls), f"{name}.load reads its seed: declare data_depends_on_seed = True"
            assert not datacache.depends_on_seed(object.__new__(cls))


def test_seed_independence_holds_on_real_data(tmp_path):
    p = MultiDigits(**SMALL)
    assert _equal(p.load(0), p.load(5))
    write_dense(str(tmp_path), "nyuv2", n_train=6, n_test=2, hw=(8, 8))
    dense = PROBLEMS.get("nyuv2")(root=str(tmp_path), pretrained=False, num_workers=0, val_fraction=0.34)
    a, b = dense.load(0), dense.load(9)
    assert all(a[s].ids == b[s].ids for s in ("train", "val", "test")) and len(a["val"]) == 2


def test_keys():
    p = MultiDigits(**SMALL)
    assert datacache.data_key(p, "multidigits", SMALL, 0) == datacache.data_key(p, "multidigits", SMALL, 7)
    assert datacache.data_key(p, "multidigits", SMALL, 0) != datacache.data_key(p, "multidigits", {**SMALL, "n_val": 17}, 0)

    class Mine(MultiDigits):  # a user's problem outside study.problems: keyed by seed unless it says otherwise
        __module__ = "mypkg.problems"

    mine = Mine(**SMALL)
    assert datacache.data_key(mine, "mine", SMALL, 0) != datacache.data_key(mine, "mine", SMALL, 1)
    Mine.data_depends_on_seed = False
    assert datacache.data_key(mine, "mine", SMALL, 0) == datacache.data_key(mine, "mine", SMALL, 1)


# -- process cache ---------------------------------------------------------------------------------
def test_unconfigured_trials_load_every_time(counted):
    Trial(_cfg(0))
    Trial(_cfg(0))
    assert counted == [0, 0]


def test_process_cache_shares_one_data_set_across_seeds(counted):
    datacache.configure(process=True, node_dir=None)
    a, b = Trial(_cfg(0)), Trial(_cfg(3))
    assert counted == [0] and a.data is b.data
    c = Trial(_cfg(0, n_val=20))  # other parameters: another data set, the first one dropped
    assert counted == [0, 0] and len(c.data["val"]) == 20
    Trial(_cfg(1))
    assert counted == [0, 0, 1]  # one entry: the first data set was dropped


def test_trials_do_not_modify_shared_data():
    datacache.configure(process=True, node_dir=None)
    first = Trial(_cfg(0))
    before = first.data["train"].x.clone()
    first.run_epoch()
    second = Trial(_cfg(1))
    assert second.data is first.data and torch.equal(second.data["train"].x, before)


# -- node cache ------------------------------------------------------------------------------------
def test_node_cache_maps_the_files_a_first_load_wrote(tmp_path, counted):
    datacache.configure(process=True, node_dir=str(tmp_path))
    direct = MultiDigits(**SMALL).load(0)
    counted.clear()
    first = Trial(_cfg(0)).data
    assert counted == [0]
    (entry,) = [d for d in os.listdir(tmp_path) if not d.endswith(".lock")]
    assert sorted(os.listdir(tmp_path / entry)) == ["0.npy", "1.npy", "2.npy", *[f"{i}.npy" for i in range(3, 9)],
                                                     "manifest.json"]
    datacache.clear_process_cache()  # as in a fresh worker process on the same node
    second = Trial(_cfg(4)).data
    assert counted == [0]  # no second call of the reader
    assert _equal(second, direct) and _equal(first, direct)
    x = second["train"].x
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (64, 1, 12, 12)
    x.add_(1.0)  # copy-on-write: a trial that writes into its data changes neither the files nor others
    datacache.clear_process_cache()
    assert _equal(Trial(_cfg(0)).data, direct)


def test_data_that_is_not_in_memory_is_not_written(tmp_path):
    data_root = tmp_path / "nyu"
    write_dense(str(data_root), "nyuv2", n_train=4, n_test=2, hw=(8, 8))
    datacache.configure(process=True, node_dir=str(tmp_path / "cache"))
    p = PROBLEMS.get("nyuv2")(root=str(data_root), pretrained=False, num_workers=0)
    params = {"root": str(data_root), "pretrained": False, "num_workers": 0}
    a = datacache.load_data(p, "nyuv2", params, 0)
    assert type(a["train"]).__name__ == "NpyDenseDataset"
    (entry,) = [d for d in os.listdir(tmp_path / "cache") if not d.endswith(".lock")]
    assert os.listdir(tmp_path / "cache" / entry) == ["manifest.json"]  # a marker only: file-backed data
    datacache.clear_process_cache()
    b = datacache.load_data(p, "nyuv2", params, 0)
    assert b is not a and b["train"].ids == a["train"].ids
    in_mem = {**params, "in_memory": True}
    c = datacache.load_data(PROBLEMS.get("nyuv2")(**in_mem), "nyuv2", in_mem, 0)
    assert isinstance(c["train"], TensorPairs) and c["train"].x.shape == (3, 3, 8, 8)
    assert len(os.listdir(tmp_path / "cache")) == 4  # two entries and their lock files


def _load_in_child(node_dir: str, queue) -> None:
    datacache.configure(process=True, node_dir=node_dir)
    data = datacache.load_data(MultiDigits(**SMALL), "multidigits", SMALL, 0)
    queue.put((dict(datacache.stats), float(data["train"].x.sum())))


def test_concurrent_processes_write_once(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_load_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    assert sum(s["node_writes"] for s, _ in results) == 1
    assert sum(s["node_hits"] for s, _ in results) == 1
    assert results[0][1] == results[1][1] == pytest.approx(float(MultiDigits(**SMALL).load(0)["train"].x.sum()))


def test_configure_from_env(monkeypatch, tmp_path):
    for value, process, node in (("off", False, None), ("process", True, None),
                                 ("node", True, datacache.default_node_dir()), (str(tmp_path), True, str(tmp_path))):
        monkeypatch.setenv(datacache.ENV, value)
        datacache.configure_from_env()
        assert datacache._settings == {"process": process, "node_dir": node}
    monkeypatch.delenv(datacache.ENV)
    datacache.configure_from_env()
    assert datacache._settings["node_dir"] == datacache.default_node_dir()


def test_unwritable_node_folder_falls_back_to_loading(tmp_path, counted):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    datacache.configure(process=True, node_dir=str(blocker / "cache"))
    data = Trial(_cfg(0)).data
    assert counted == [0] and isinstance(data["train"], TensorPairs)
    assert np.isfinite(data["train"].x.numpy()).all()
