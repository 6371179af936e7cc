"""Dense metrics and losses of the vision problems, on hand-computed cases and reference formulas,
including the cases that broke other implementations (ignore labels, mask rules, pooling)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from study.metrics import DepthMeter, NormalMeter, SegmentationMeter
from study.problems.dense import CityScapes, NYUv2

S = 0.7071


def seg(labels, preds, num_classes=2):
    m = SegmentationMeter(num_classes)
    m.update(torch.tensor(preds), torch.tensor(labels))
    return m.compute()


# -- segmentation ----------------------------------------------------------------------------

def test_miou_ignores_minus_one_pixels_whatever_is_predicted_there():
    out = seg([[[0, -1], [1, -1]]], [[[0, 0], [1, 1]]])
    assert out == {"miou": 1.0, "pixel_accuracy": 1.0}


def test_miou_hand_computed_and_absent_classes_left_out():
    # labels 0,0,1,1 predicted 0,1,1,1 with 5 classes: IoU0 = 1/2, IoU1 = 2/3; classes 2..4 absent
    out = seg([[0, 0, 1, 1]], [[0, 1, 1, 1]], num_classes=5)
    assert out["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert out["pixel_accuracy"] == pytest.approx(3 / 4)


def test_class_predicted_but_never_labelled_counts_as_zero_iou():
    # class 2 is predicted once and never labelled: union 1, IoU 0, so it is in the mean
    out = seg([[0, 1, 1]], [[0, 1, 2]], num_classes=3)
    assert out["miou"] == pytest.approx((1 + 1 / 2 + 0) / 3)


def test_miou_is_pooled_over_the_split_not_averaged_over_batches():
    m = SegmentationMeter(2)
    m.update(torch.tensor([[0, 0]]), torch.tensor([[0, 0]]))              # batch of 2 pixels
    m.update(torch.tensor([[0, 1, 1, 1]]), torch.tensor([[1, 1, 1, 1]]))  # batch of 4 pixels
    # pooled confusion: class 0 tp 2, union 3; class 1 tp 3, union 4
    assert m.compute()["miou"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    # (the mean of per-batch mIoUs would be (1 + (0 + 3/4) / 2) / 2 = 0.6875)
    assert m.compute()["miou"] != pytest.approx(0.6875)
    assert m.matrix().tolist() == [[2, 0], [1, 3]]


def test_miou_from_logits_matches_sklearn_jaccard_on_random_data():
    from sklearn.metrics import jaccard_score

    g = torch.Generator().manual_seed(0)
    c = 6
    logits = torch.randn(3, c, 5, 7, generator=g)
    labels = torch.randint(-1, c - 1, (3, 5, 7), generator=g)  # class c-1 never labelled
    m = SegmentationMeter(c)
    m.update(logits[:2], labels[:2])
    m.update(logits[2:], labels[2:])
    got = m.compute()
    pred = logits.argmax(1)
    keep = labels != -1
    y, p = labels[keep].numpy(), pred[keep].numpy()
    present = sorted(set(y) | set(p))
    ref = jaccard_score(y, p, labels=present, average=None)
    assert got["miou"] == pytest.approx(float(np.mean(ref)))
    assert got["pixel_accuracy"] == pytest.approx(float((y == p).mean()))


def test_segmentation_errors_are_explicit():
    with pytest.raises(ValueError, match="no labelled pixel"):
        seg([[-1, -1]], [[0, 1]])
    with pytest.raises(ValueError, match="outside 0..1"):
        seg([[0, 2]], [[0, 1]])


# -- depth -----------------------------------------------------------------------------------

def test_depth_errors_over_valid_pixels_only():
    m = DepthMeter()
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[2.0, 0.0], [1.0, 4.0]]]])  # the zero is no depth
    m.update(pred, target)
    out = m.compute()
    assert out["abs_err"] == pytest.approx((1 + 2 + 0) / 3)
    assert out["rel_err"] == pytest.approx((1 / 2 + 2 / 1 + 0) / 3)


def test_depth_pooled_over_pixels_of_batches_of_different_sizes():
    m = DepthMeter()
    m.update(torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 1.0))  # one pixel, error 1
    m.update(torch.ones(3, 1, 1, 1), torch.ones(3, 1, 1, 1))                # three pixels, error 0
    assert m.compute()["abs_err"] == pytest.approx(0.25)  # not (1 + 0) / 2


def test_depth_empty_mask_is_an_error_not_nan():
    m = DepthMeter()
    with pytest.raises(ValueError, match="no valid"):
        m.compute()
    m.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="no valid"):
        m.compute()


# -- normals ---------------------------------------------------------------------------------

def normals_at(angles_deg):
    """Predictions at the given angles from the label (1, 0, 0), as (1, 3, 1, N)."""
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    pred = torch.tensor(np.stack([np.cos(a), np.sin(a), np.zeros_like(a)]), dtype=torch.float32)[None, :, None, :]
    label = torch.zeros_like(pred)
    label[:, 0] = 1.0
    return pred, label


def test_normal_pixel_whose_components_sum_to_zero_is_valid_with_zero_error():
    v = torch.tensor([S, -S, 0.0]).view(1, 3, 1, 1)
    m = NormalMeter()
    m.update(v, v)
    out = m.compute()
    assert out["mean_angle"] == pytest.approx(0.0, abs=1e-5)
    assert out["median_angle"] == pytest.approx(0.0, abs=1e-5)
    assert out["within_11.25"] == 1.0


def test_normal_all_zero_label_pixels_are_excluded():
    pred = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2)
    label = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2)  # second pixel: no normal
    m = NormalMeter()
    m.update(pred, label)
    out = m.compute()
    assert out["mean_angle"] == pytest.approx(90.0)
    assert out["within_30"] == 0.0


def test_normal_thresholds_mean_and_median_hand_computed():
    pred, label = normals_at([0.0, 15.0, 25.0, 45.0])
    pred[:, :, :, 1] *= 3.0  # predictions need not be unit vectors
    m = NormalMeter()
    m.update(pred, label)
    out = m.compute()
    assert out["mean_angle"] == pytest.approx(21.25, abs=1e-4)
    assert out["median_angle"] == pytest.approx(20.0, abs=1e-3)
    assert (out["within_11.25"], out["within_22.5"], out["within_30"]) == (0.25, 0.5, 0.75)


def test_normal_dot_product_is_clamped():
    # identical directions whose float dot product exceeds 1 before clamping
    v = torch.tensor([1.0, 1e-4, 1e-4]).view(1, 3, 1, 1)
    ang, valid = NormalMeter.angles(v * 1.0000001, v)
    assert torch.isfinite(ang).all() and bool(valid.all())
    assert float(ang.max()) == pytest.approx(0.0, abs=1e-5)


def test_normal_metrics_match_numpy_reference_pooled_over_batches():
    g = torch.Generator().manual_seed(1)
    preds = [torch.randn(2, 3, 6, 5, generator=g), torch.randn(1, 3, 6, 5, generator=g)]
    labels = [torch.randn(2, 3, 6, 5, generator=g), torch.randn(1, 3, 6, 5, generator=g)]
    labels[0][:, :, 0] = 0.0  # a row without normals
    m = NormalMeter()
    angles = []
    for p, t in zip(preds, labels):
        m.update(p, t)
        pn = p.double().numpy() / np.linalg.norm(p.double().numpy(), axis=1, keepdims=True)
        tn = t.double().numpy()
        valid = (tn != 0).any(axis=1)
        tn = tn / np.where(valid, np.linalg.norm(tn, axis=1), 1.0)[:, None]
        cos = np.clip((pn * tn).sum(axis=1), -1, 1)
        angles.append(np.degrees(np.arccos(cos))[valid])
    a = np.concatenate(angles)
    out = m.compute()
    assert out["mean_angle"] == pytest.approx(a.mean(), abs=1e-9)
    assert out["median_angle"] == pytest.approx(np.median(a), abs=1e-3)
    for t in (11.25, 22.5, 30):
        assert out[f"within_{t:g}"] == pytest.approx((a < t).mean())


def test_normal_empty_mask_is_an_error():
    m = NormalMeter()
    m.update(torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="no valid"):
        m.compute()


# -- accuracy (CelebA, Office) ---------------------------------------------------------------

def test_accuracy_is_pooled_over_samples_not_averaged_over_batches():
    from study.problems.base import AccuracyMeter

    m = AccuracyMeter()
    m.update(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))                       # 1 of 1 right
    m.update(torch.tensor([[1.0, 0.0]] * 3), torch.tensor([1, 1, 1]))             # 0 of 3 right
    assert m.compute() == {"accuracy": 0.25}                                       # not (1 + 0) / 2
    with pytest.raises(ValueError, match="empty split"):
        AccuracyMeter().compute()


# -- losses ----------------------------------------------------------------------------------

def test_segmentation_loss_ignores_minus_one_and_is_zero_when_all_ignored():
    p = NYUv2(root="/nonexistent", pretrained=False)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 13, 3, 3, generator=g)
    target = torch.randint(-1, 13, (2, 3, 3), generator=g)
    keep = target != -1
    ref = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    assert float(p.loss("segmentation", logits, target)) == pytest.approx(float(ref), rel=1e-6)
    assert float(p.loss("segmentation", logits, torch.full((2, 3, 3), -1))) == 0.0


def test_depth_loss_is_l1_over_nonzero_depth():
    p = CityScapes(root="/nonexistent", pretrained=False)
    pred = torch.tensor([[[[1.0, 5.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[2.0, 0.0], [1.0, 4.0]]]])
    assert float(p.loss("depth", pred, target)) == pytest.approx((1 + 2 + 0) / 3)


def test_normal_loss_is_one_minus_mean_cosine_over_any_nonzero_mask():
    p = NYUv2(root="/nonexistent", pretrained=False)
    label = torch.tensor([[S, -S, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    pred = torch.tensor([[S, -S, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).T.reshape(1, 3, 1, 3)
    # valid pixels 0 (cos 1, although its components sum to 0) and 2 (cos 0); pixel 1 has no label
    assert float(p.loss("normal", pred, label)) == pytest.approx(1 - (2 * S * S + 0) / 2, abs=1e-6)


def test_dense_metric_directions():
    m = NYUv2(root="/x", pretrained=False).metrics()
    assert [(x.name, x.higher_is_better) for x in m["segmentation"]] == [("miou", True), ("pixel_accuracy", True)]
    assert [(x.name, x.higher_is_better) for x in m["depth"]] == [("abs_err", False), ("rel_err", False)]
    assert [(x.name, x.higher_is_better) for x in m["normal"]] == [
        ("mean_angle", False), ("median_angle", False), ("within_11.25", True), ("within_22.5", True),
        ("within_30", True)]
    assert set(CityScapes(root="/x", pretrained=False).metrics()) == {"segmentation", "depth"}
