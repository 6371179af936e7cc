"""Delta_m and model selection on hand-made values."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.errors import AnalysisError
from analysis.scores import CONVENTIONS, delta_m, delta_m_frame, task_delta_frame
from analysis.select import best_epochs, epoch_scores, parse_criterion
from analysis.synthetic import NYUV2, NYUV2_BASE

NYU_TASKS = ["seg", "seg", "depth", "depth", "normal", "normal", "normal", "normal", "normal"]
NYU_HIB = [True, True, False, False, False, False, True, True, True]


def test_delta_m_nyuv2_check_case():
    changed = list(NYUV2_BASE)
    changed[0] = 0.400
    assert delta_m(changed, NYUV2_BASE, NYU_HIB, NYU_TASKS) == pytest.approx(0.740, abs=5e-4)
    assert delta_m(changed, NYUV2_BASE, NYU_HIB, NYU_TASKS, "all-metrics") == pytest.approx(-0.493, abs=5e-4)
    assert round(delta_m(changed, NYUV2_BASE, NYU_HIB, NYU_TASKS), 3) == 0.740
    assert round(delta_m(changed, NYUV2_BASE, NYU_HIB, NYU_TASKS, "all-metrics"), 3) == -0.493
    # Exact: (0.017 / 0.383 * 100) / 2 tasks-metrics / 3 tasks.
    assert delta_m(changed, NYUV2_BASE, NYU_HIB, NYU_TASKS) == pytest.approx(0.017 / 0.383 * 100 / 2 / 3)


def test_delta_m_direction_and_identity():
    assert delta_m(NYUV2_BASE, NYUV2_BASE, NYU_HIB, NYU_TASKS) == 0.0
    worse_depth = list(NYUV2_BASE)
    worse_depth[2] *= 1.10          # abs error up 10%: worse
    assert delta_m(worse_depth, NYUV2_BASE, NYU_HIB, NYU_TASKS) == pytest.approx(-10 / 2 / 3)


def test_delta_m_zero_reference_is_a_clear_error():
    with pytest.raises(AnalysisError, match="reference value is 0"):
        delta_m([1.0, 2.0], [0.0, 2.0], [True, True], ["a", "b"])


def test_conventions_are_named():
    assert "positive = better" in CONVENTIONS["per-task"]
    assert "positive = WORSE" in CONVENTIONS["all-metrics"]


def _nyu_rows(values, key="x"):
    tasks = {"segmentation": "seg", "depth": "depth", "normal": "normal"}
    rows = []
    i = 0
    for task, metrics in NYUV2["nyuv2"].items():
        for metric, hib in metrics:
            rows.append({"study": "s", "trial_id": key, "problem": "nyuv2", "task": task, "metric": metric,
                         "value": values[i], "higher_is_better": hib})
            i += 1
        rows.append({"study": "s", "trial_id": key, "problem": "nyuv2", "task": task, "metric": "loss",
                     "value": 123.0, "higher_is_better": False})
    assert tasks
    return pd.DataFrame(rows)


def test_delta_m_frame_matches_scalar_and_ignores_loss():
    ref_rows = _nyu_rows(NYUV2_BASE)
    ref = ref_rows[ref_rows["metric"] != "loss"][["problem", "task", "metric", "value"]].rename(columns={"value": "ref"})
    changed = list(NYUV2_BASE)
    changed[0] = 0.400
    out = delta_m_frame(_nyu_rows(changed), ref, ["study", "trial_id"])
    assert out["delta_m"].iloc[0] == pytest.approx(0.740, abs=5e-4)
    out2 = delta_m_frame(_nyu_rows(changed), ref, ["study", "trial_id"], "all-metrics")
    assert out2["delta_m"].iloc[0] == pytest.approx(-0.493, abs=5e-4)
    td = task_delta_frame(_nyu_rows(changed), ref, ["study", "trial_id"]).set_index("task")["task_delta"]
    assert td["segmentation"] == pytest.approx(0.017 / 0.383 * 100 / 2)
    assert td["depth"] == 0.0 and td["normal"] == 0.0


def _curve_rows(val_acc: list[float], val_loss: list[float], trial="t"):
    rows = []
    for e, (acc, loss) in enumerate(zip(val_acc, val_loss), start=1):
        for task in ("a", "b"):
            rows.append({"study": "s", "trial_id": trial, "problem": "p", "epoch": e, "task": task,
                         "metric": "accuracy", "value": acc, "higher_is_better": True})
            rows.append({"study": "s", "trial_id": trial, "problem": "p", "epoch": e, "task": task,
                         "metric": "loss", "value": loss, "higher_is_better": False})
    return pd.DataFrame(rows)


def test_selection_criteria():
    rows = _curve_rows([0.5, 0.8, 0.7, 0.8], [1.0, 0.9, 0.4, 0.6])
    ref = pd.DataFrame({"problem": ["p", "p"], "task": ["a", "b"], "metric": ["accuracy", "accuracy"], "ref": [0.5, 0.5]})
    pick = lambda crit: int(best_epochs(epoch_scores(rows, crit, ref))["epoch"].iloc[0])  # noqa: E731
    assert pick("delta_m") == 2          # best accuracy, earliest of the tie (2 and 4)
    assert pick("metric:accuracy") == 2
    assert pick("metric:a/accuracy") == 2
    assert pick("metric:loss") == 3      # lowest validation loss
    assert pick("last") == 4


def test_selection_skips_non_finite_and_bad_names():
    rows = _curve_rows([0.5, float("nan"), 0.7], [1.0, 0.9, 0.4])
    assert int(best_epochs(epoch_scores(rows, "metric:accuracy"))["epoch"].iloc[0]) == 3
    with pytest.raises(AnalysisError, match="no such validation metric"):
        epoch_scores(rows, "metric:mIoU")
    with pytest.raises(AnalysisError, match="--select"):
        parse_criterion("best")
