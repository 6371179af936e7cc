"""The Parquet result contract: schema, tidy rows, exactly-once epochs, atomic files."""

import json

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from analysis.schema import RESULT_SCHEMA, TRIAL_SCHEMA
from study.results import StudyWriter, metric_rows
from tests.conftest import tiny_trial_config


def result(epoch: int, acc: float) -> dict:
    return {"epoch": epoch, "train/left/loss": 1.0 / epoch, "train/right/loss": 2.0 / epoch,
            "val/left/accuracy": acc, "val/right/accuracy": acc, "test/left/accuracy": acc + 0.01,
            "test/right/accuracy": acc + 0.02, "val/left/loss": 0.5, "time_epoch_s": 1.5, "time_step_s": 0.01,
            "val_score": acc, "training_iteration": epoch, "config": {"x": 1}, "done": False}


def test_rows_are_tidy_with_directions():
    cfg = tiny_trial_config({"name": "rlw", "distribution": "dirichlet", "alpha": 0.5}, seed=3)
    rows = metric_rows("t1", cfg, result(2, 0.8), {("left", "loss"): False, ("right", "loss"): False,
                                                   ("left", "accuracy"): True, ("right", "accuracy"): True})
    assert len(rows) == 7  # 2 train losses, 2 val acc, 1 val loss, 2 test acc; non-metric keys ignored
    by = {(r["split"], r["task"], r["metric"]): r for r in rows}
    assert by[("test", "right", "accuracy")]["value"] == pytest.approx(0.82)
    assert by[("train", "left", "loss")]["higher_is_better"] is False
    assert by[("val", "left", "accuracy")]["higher_is_better"] is True
    r = rows[0]
    assert (r["method"], r["weighting"], r["aggregator"], r["seed"], r["epoch"]) == (
        "RLW-dirichlet(alpha=0.5)", "rlw", "", 3, 2)
    assert json.loads(r["method_params"]) == {"aggregator": None,
                                              "weighting": {"name": "rlw", "distribution": "dirichlet", "alpha": 0.5}}


def test_writer_schema_and_exactly_once_after_resume(tmp_path):
    cfg = tiny_trial_config("ew")
    w = StudyWriter(str(tmp_path))
    for e in (1, 2, 3):
        w.add_result("t1", cfg, result(e, 0.1 * e))
    # the driver dies; a new writer (new driver) sees the trial resume from its epoch-2 checkpoint
    w2 = StudyWriter(str(tmp_path))
    w2.add_result("t1", cfg, result(3, 0.33))
    w2.add_result("t1", cfg, result(4, 0.4))
    table = pq.read_table(tmp_path / "results" / "part-t1.parquet")
    assert table.schema.equals(RESULT_SCHEMA)
    df = table.to_pandas()
    per_epoch = df.groupby("epoch").size().to_dict()
    assert per_epoch == {1: 7, 2: 7, 3: 7, 4: 7}  # no duplicates, no gaps
    val3 = df[(df.epoch == 3) & (df.split == "val") & (df.task == "left") & (df.metric == "accuracy")]
    assert val3["value"].tolist() == [0.33]  # the resumed run's copy replaced the lost one
    # a resume that restarts earlier drops the stale later epochs
    w2.add_result("t1", cfg, result(2, 0.22))
    df = pq.read_table(tmp_path / "results" / "part-t1.parquet").to_pandas()
    assert sorted(df.epoch.unique()) == [1, 2]
    # no temp files left behind; the dataset reads with pandas through pyarrow.dataset
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["_journal", "part-t1.parquet"]
    assert ds.dataset(tmp_path / "results").to_table().num_rows == 14


def test_status_rows(tmp_path):
    cfg = tiny_trial_config("uw")
    w = StudyWriter(str(tmp_path))
    w.set_status("t9", cfg, "diverged", reason="non-finite loss at epoch 2, step 5", epochs_done=1)
    t = pq.read_table(tmp_path / "trials" / "t9.parquet")
    assert t.schema.equals(TRIAL_SCHEMA)
    row = t.to_pylist()[0]
    assert (row["status"], row["epochs_done"], row["epochs_planned"], row["method"]) == ("diverged", 1, 1, "UW")
    assert json.loads(row["config"])["seed"] == 0


def test_dot_prefixed_partial_files_are_invisible_to_readers(tmp_path):
    cfg = tiny_trial_config("ew")
    w = StudyWriter(str(tmp_path))
    w.add_result("t1", cfg, result(1, 0.5))
    (tmp_path / "results" / ".part-t2.parquet.abc.tmp").write_bytes(b"PAR1 truncated")
    assert ds.dataset(tmp_path / "results", format="parquet").to_table().num_rows == 7


def test_truncated_part_is_set_aside_and_rebuilt_from_the_journal(tmp_path):
    cfg = tiny_trial_config("ew")
    w = StudyWriter(str(tmp_path))
    for e in (1, 2, 3):
        w.add_result("t1", cfg, result(e, 0.1 * e))
    part = tmp_path / "results" / "part-t1.parquet"
    good = pq.read_table(part)
    part.write_bytes(part.read_bytes()[:100])  # a copy cut short
    with pytest.raises(Exception):
        pq.read_table(part)
    # a crash mid-append leaves half a journal line; it is skipped
    with open(tmp_path / "results" / "_journal" / "t1.jsonl", "a") as f:
        f.write('{"epoch": 4, "rows": [{"stu')
    assert StudyWriter(str(tmp_path)).repair() == ["t1"]
    assert pq.read_table(part).equals(good)
    corrupt = [p.name for p in (tmp_path / "results").iterdir() if p.name.startswith(".corrupt-")]
    assert len(corrupt) == 1 and corrupt[0].endswith("part-t1.parquet")  # set aside, not deleted
    # the dataset reads cleanly: the corrupt copy is dot-prefixed, the journal underscore-prefixed
    assert ds.dataset(tmp_path / "results", format="parquet").to_table().num_rows == 21
    assert StudyWriter(str(tmp_path)).repair() == []  # idempotent


def test_writer_after_a_lost_part_continues_from_the_journal(tmp_path):
    cfg = tiny_trial_config("ew")
    w = StudyWriter(str(tmp_path))
    w.add_result("t1", cfg, result(1, 0.1))
    w.add_result("t1", cfg, result(2, 0.2))
    (tmp_path / "results" / "part-t1.parquet").write_bytes(b"garbage")
    w2 = StudyWriter(str(tmp_path))  # a restarted driver
    w2.add_result("t1", cfg, result(3, 0.3))
    df = pq.read_table(tmp_path / "results" / "part-t1.parquet").to_pandas()
    assert df.groupby("epoch").size().to_dict() == {1: 7, 2: 7, 3: 7}
