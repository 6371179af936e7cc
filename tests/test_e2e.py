"""End to end: a 2-trial, 1-epoch study through Ray Tune into Parquet, then the analysis report."""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest

from study.spec import parse_spec

pytestmark = pytest.mark.slow


def test_two_trials_through_ray_into_parquet_and_report(ray_session, tmp_path, capsys):
    from study.driver import run_study

    spec = parse_spec({
        "name": "e2e",
        "problem": {"name": "multidigits", "n_train": 256, "n_val": 128, "n_test": 128, "width": 8},
        "methods": ["ew", "rlw"], "seeds": [0], "train": {"epochs": 1, "batch_size": 64},
    })
    storage = tmp_path / "store"
    meta = run_study(spec, str(storage))
    assert meta["status"] == "finished" and meta["errored_trials"] == 0
    out = capsys.readouterr().out
    assert out.count("done, epochs 1") == 2  # one progress line per finished trial

    study = storage / "e2e"
    assert json.loads((study / "study.json").read_text())["spec_hash"] == spec.spec_hash
    df = ds.dataset(study / "results", format="parquet").to_table().to_pandas()
    assert sorted(df.method.unique()) == ["EW", "RLW"]
    assert set(df.split) == {"train", "val", "test"} and set(df.epoch) == {1}
    # every trial: 2 tasks x (train loss, val acc+loss, test acc+loss) = 10 rows
    assert df.groupby("trial_id").size().tolist() == [10, 10]
    assert (df.spec_hash == spec.spec_hash).all() and (df.study == "e2e").all()
    status = ds.dataset(study / "trials", format="parquet").to_table().to_pandas()
    assert sorted(status.status) == ["completed", "completed"] and (status.epochs_done == 1).all()

    # the same metrics a plain train_trial gives: Ray changes nothing
    from study.training import train_trial

    cfg = spec.trial_configs()[0]
    direct = train_trial(cfg)
    ew = df[(df.method == "EW") & (df.split == "test") & (df.metric == "accuracy")].set_index("task")["value"]
    assert ew["left"] == pytest.approx(direct["test/left/accuracy"])
    assert ew["right"] == pytest.approx(direct["test/right/accuracy"])

    from study.cli import main

    report = tmp_path / "report"
    assert main(["analyze", str(study), "--out", str(report)]) == 0
    md = (report / "report.md").read_text()
    assert "| EW |" in md and "| RLW (ref) |" in md and "Δm (%) vs EW" in md
    assert (report / "report.html").read_text().count("<img") + (report / "report.html").read_text().count("<svg") >= 1


def test_storage_given_as_a_uri_goes_through_pyarrow_filesystems(ray_session, tmp_path, capsys):
    """``--storage`` as a URI (here file://, the same code path as s3:// and gs://): Ray Tune's state and
    the Parquet dataset land under it, a second run is refused, --resume of the finished study is a
    no-op, and ``litmus analyze`` reads the study back through the URI."""
    from study.cli import main
    from study.driver import run_study
    from study.errors import LitmusError

    spec = parse_spec({
        "name": "uri", "problem": {"name": "multidigits", "n_train": 128, "n_val": 64, "n_test": 64, "width": 8},
        "methods": ["ew", "rlw"], "seeds": [0], "train": {"epochs": 2},
    })
    uri = f"file://{tmp_path}/store"
    assert run_study(spec, uri)["status"] == "finished"
    study = tmp_path / "store" / "uri"
    assert sorted(p.name for p in study.iterdir()) >= ["results", "spec.yaml", "study.json", "trials", "tune"]
    assert list((study / "tune").glob("experiment_state-*.json"))
    df = ds.dataset(study / "results", format="parquet").to_table().to_pandas()
    assert df.groupby("trial_id").epoch.apply(lambda e: sorted(set(e))).tolist() == [[1, 2], [1, 2]]
    assert df.groupby(["trial_id", "epoch"]).size().eq(10).all()  # each epoch once
    with pytest.raises(LitmusError, match="already exists"):
        run_study(spec, uri)
    assert run_study(spec, uri, resume=True)["status"] == "finished"
    assert f"already finished in {uri}; nothing to do" in capsys.readouterr().out
    assert main(["analyze", f"{uri}/uri", "--out", str(tmp_path / "report")]) == 0
    assert "| EW |" in (tmp_path / "report" / "report.md").read_text()


def test_a_study_whose_fit_returns_early_is_interrupted_not_finished(ray_session, tmp_path, capsys, monkeypatch):
    """Tune's fit() returns after Ctrl-C with trials unfinished: the study must stay resumable."""
    import json

    from study import driver
    from study.cli import main

    class StoppedTuner:  # fit() returns as after SIGINT, before any trial ran
        def __init__(self, *args, **kwargs):
            pass

        def fit(self):
            return []

    monkeypatch.setattr(driver.tune, "Tuner", StoppedTuner)
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nproblem: {name: multidigits, n_train: 64, n_val: 32, n_test: 32}\n"
                    "methods: [ew, rlw]\nseeds: [0]\ntrain: {epochs: 1}\n")
    store = tmp_path / "store"
    assert main(["run", str(spec), "--storage", str(store)]) == 130
    err = capsys.readouterr().err
    assert "study 's' interrupted: 0 of 2 trials ended" in err and "--resume" in err
    meta = json.loads((store / "s" / "study.json").read_text())
    assert meta["status"] == "interrupted" and meta["ended_trials"] == 0
