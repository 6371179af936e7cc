import numpy as np
import pytest
import torch

from study.problems.multidigits import CANVAS, MultiDigits, compose, make_split, split_sources


def test_compose_places_digits_in_opposite_corners_with_max_overlap():
    left = np.zeros((1, 8, 8), dtype=np.float32)
    right = np.zeros((1, 8, 8), dtype=np.float32)
    left[0, 0, 0] = 3.0      # only in the left digit's area
    left[0, 7, 7] = 5.0      # in the overlap
    right[0, 3, 3] = 9.0     # canvas (7, 7): the overlap, right digit brighter
    right[0, 7, 7] = 2.0     # canvas (11, 11): only the right digit's area
    out = compose(left, right)
    assert out.shape == (1, CANVAS, CANVAS)
    assert out[0, 0, 0] == 3.0
    assert out[0, 7, 7] == 9.0          # max(5, 9)
    assert out[0, 11, 11] == 2.0
    assert out[0, 11, 0] == 0.0 and out[0, 0, 11] == 0.0  # corners nobody covers


def test_split_sources_disjoint_and_complete():
    parts = split_sources(1797, split_seed=0)
    sets = {k: set(v.tolist()) for k, v in parts.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert set().union(*sets.values()) == set(range(1797))
    assert [len(parts[k]) for k in ("train", "val", "test")] == [1078, 359, 360]
    # deterministic for a seed, different for another
    assert all((split_sources(1797, 0)[k] == parts[k]).all() for k in parts)
    assert not (split_sources(1797, 1)["train"] == parts["train"]).all()


def test_every_pair_uses_only_its_splits_sources():
    from sklearn.datasets import load_digits

    d = load_digits()
    parts = split_sources(len(d.images), 0)
    for k, split in enumerate(("train", "val", "test"), start=1):
        x, y, (li, ri) = make_split(d.images.astype(np.float32), d.target, parts[split], 300, k)
        allowed = set(parts[split].tolist())
        assert set(li.tolist()) <= allowed and set(ri.tolist()) <= allowed
        assert x.shape == (300, 1, 12, 12) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert (y["left"] == torch.from_numpy(d.target[li])).all()
        assert (y["right"] == torch.from_numpy(d.target[ri])).all()


def test_problem_load_shapes_labels_and_determinism():
    p = MultiDigits(n_train=200, n_val=50, n_test=60)
    data = p.load(seed=123)
    assert [len(data[s]) for s in ("train", "val", "test")] == [200, 50, 60]
    for split in data.values():
        for t in ("left", "right"):
            y = split.targets[t]
            assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) <= 9
    # The split does not depend on the trial seed: every method sees the same data.
    again = p.load(seed=7)
    assert torch.equal(data["test"].x, again["test"].x)
    assert {t: m[0].name for t, m in p.metrics().items()} == {"left": "accuracy", "right": "accuracy"}


@pytest.mark.parametrize("bad", [{"n_train": 0}, {"width": -1}, {"split_seed": 1.5}, {"n_val": True}])
def test_bad_parameters_are_rejected(bad):
    with pytest.raises(ValueError):
        MultiDigits(**bad)
