"""Injected faults: a diverging trial, a killed trial process, a damaged checkpoint, a killed driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from study.spec import parse_spec

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PROBLEM = {"name": "multidigits", "n_train": 256, "n_val": 64, "n_test": 64, "width": 8}


def statuses(study: Path):
    return ds.dataset(study / "trials", format="parquet").to_table().to_pandas().set_index("method")


def results(study: Path):
    return ds.dataset(study / "results", format="parquet").to_table().to_pandas()


def test_nan_at_epoch_2_is_diverged_and_the_other_trials_go_on(ray_session, tmp_path):
    from study.driver import run_study

    spec = parse_spec({
        "name": "nan", "problem": PROBLEM, "seeds": [0],
        "methods": ["ew", {"name": "tests.faults:NaNAfter", "steps": 4, "label": "NaN-at-epoch-2"}],
        "train": {"epochs": 3, "batch_size": 64, "nan_check_every": 1},  # 4 steps per epoch
    })
    meta = run_study(spec, str(tmp_path))
    st = statuses(tmp_path / "nan")
    assert st.loc["EW", "status"] == "completed" and st.loc["EW", "epochs_done"] == 3
    bad = st.loc["NaN-at-epoch-2"]
    assert bad["status"] == "diverged"
    # NaN weights poison the update of epoch 2, step 1; the first non-finite loss is step 2
    assert bad["reason"] == "non-finite loss at epoch 2, step 2"
    assert bad["epochs_done"] == 1
    assert bad["restarts"] == 0  # the same seed would diverge again: never retried
    df = results(tmp_path / "nan")
    assert sorted(df[df.method == "NaN-at-epoch-2"].epoch.unique()) == [1]
    assert sorted(df[df.method == "EW"].epoch.unique()) == [1, 2, 3]
    assert meta["errored_trials"] == 0  # diverged is a result, not a crash


def _trial_processes():
    import psutil

    me = os.getpid()
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "ppid"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ImplicitFunc" in cmd and p.info["pid"] != me:
            out.append(p)
    return out


def test_killed_trial_process_resumes_to_the_same_final_metrics(ray_session, tmp_path):
    from study.driver import run_study
    from study.training import train_trial

    spec = parse_spec({
        "name": "kill", "problem": {**PROBLEM, "n_train": 512}, "seeds": [0], "methods": ["rlw"],
        "train": {"epochs": 6, "batch_size": 32}, "run": {"max_failures": 2},
    })
    study = tmp_path / "kill"
    killed = []

    def killer():
        part = None
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            parts = list((study / "results").glob("part-*.parquet")) if (study / "results").exists() else []
            if parts:
                part = parts[0]
                try:
                    epochs = set(pq.read_table(part, columns=["epoch"]).column("epoch").to_pylist())
                except Exception:  # noqa: BLE001 - being replaced right now
                    epochs = set()
                if 2 in epochs and 6 not in epochs:
                    for p in _trial_processes():
                        p.send_signal(signal.SIGKILL)
                        killed.append(p.pid)
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    run_study(spec, str(tmp_path))
    t.join(timeout=5)
    assert killed, "the trial finished before it could be killed"
    st = statuses(study)
    assert st.loc["RLW", "status"] == "completed" and st.loc["RLW", "restarts"] >= 1
    df = results(study)
    assert df.groupby("epoch").size().to_dict() == {e: 10 for e in range(1, 7)}  # every epoch exactly once
    direct = train_trial(spec.trial_configs()[0])
    last = df[(df.epoch == 6) & (df.split != "train")].set_index(["split", "task", "metric"])["value"]
    for (split, task, metric), value in last.items():
        assert value == pytest.approx(direct[f"{split}/{task}/{metric}"], abs=1e-12), (split, task, metric)


def test_damaged_checkpoint_gives_a_clear_error(tmp_path):
    from study.driver import CheckpointError, load_state

    path = tmp_path / "state.pt"
    import torch

    torch.save({"epoch": 3, "w": torch.ones(1000)}, path)
    assert load_state(path)["epoch"] == 3
    path.write_bytes(path.read_bytes()[:200])  # truncated mid-write by a crash elsewhere
    with pytest.raises(CheckpointError) as info:
        load_state(path)
    assert "is unreadable" in str(info.value) and "--retry-errored" in str(info.value)
    # a pickle that would run code is refused, not executed
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path.write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(CheckpointError):
        load_state(path)
    assert not (tmp_path / "pwned").exists()


def test_errored_trial_reason_is_recorded(tmp_path):
    from study.driver import ResultSink
    from tests.conftest import tiny_trial_config

    class FakeTrial:
        trial_id = "t1"
        config = {"trial": tiny_trial_config("ew")}
        placement_group_factory = None
        error_file = None

        def get_error(self):
            return "Traceback (most recent call last):\n  File x\nstudy.driver.CheckpointError: checkpoint /x is unreadable\n"

    sink = ResultSink(str(tmp_path))
    sink.on_trial_start(0, [], FakeTrial())
    sink.on_trial_recover(0, [], FakeTrial())
    sink.on_trial_error(0, [], FakeTrial())
    row = pq.read_table(tmp_path / "trials" / "t1.parquet").to_pylist()[0]
    assert row["status"] == "errored" and row["restarts"] == 1
    assert row["reason"] == "study.driver.CheckpointError: checkpoint /x is unreadable"


def _run_cli(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "study.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def test_killed_driver_resumes_the_study_without_rerunning_or_duplicating(tmp_path):
    spec = tmp_path / "resume.yaml"
    spec.write_text(json.dumps({
        "name": "resume", "problem": {**PROBLEM, "n_train": 1024}, "seeds": [0],
        "methods": ["ew", {"name": "rlw", "distribution": "dirichlet", "alpha": 1.0}],
        "train": {"epochs": 3, "batch_size": 32},
        "run": {"max_concurrent": 1},
        "tune": {"num_samples": 2, "sampler": {"name": "tpe", "seed": 3},
                 "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}},
    }))
    storage = tmp_path / "store"
    study = storage / "resume"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "PYTHONPATH": str(REPO)}
    args = ["run", str(spec), "--storage", str(storage), "--num-cpus", "1"]
    proc = _run_cli(args, env)
    deadline = time.time() + 240
    first_done = None
    while time.time() < deadline:
        done = []
        if (study / "trials").exists():
            for f in (study / "trials").glob("*.parquet"):
                try:
                    row = pq.read_table(f).to_pylist()[0]
                except Exception:  # noqa: BLE001
                    continue
                if row["status"] == "completed":
                    done.append(f)
        if done:
            first_done = done[0]
            break
        time.sleep(0.2)
    assert first_done is not None, proc.communicate(timeout=5)[0]
    time.sleep(0.5)  # let the experiment state catch up, as it would in a real crash a moment later
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    trial_id = first_done.stem
    part = study / "results" / f"part-{trial_id}.parquet"
    before = (part.stat().st_mtime_ns, part.read_bytes())
    assert json.loads((study / "study.json").read_text())["status"] == "running"

    out, _ = _run_cli([*args, "--resume"], env).communicate(timeout=400)
    assert "finished" in out, out
    st = ds.dataset(study / "trials", format="parquet").to_table().to_pandas()
    assert len(st) == 4 and (st.status == "completed").all(), st[["trial_id", "status", "reason"]]
    configs = [json.loads(c) for c in st.config]
    lrs = sorted((c["method"]["label"], c["train"]["lr"]) for c in configs)
    assert len(set(lrs)) == 4  # no configuration ran twice
    assert sorted(c["cell"] for c in configs) == [0, 0, 1, 1]  # equal budget per cell
    assert (part.stat().st_mtime_ns, part.read_bytes()) == before  # the finished trial was not re-run
    df = ds.dataset(study / "results", format="parquet").to_table().to_pandas()
    assert df.groupby(["trial_id", "epoch"]).size().eq(10).all()
    assert sorted(df.groupby("trial_id").epoch.nunique()) == [3, 3, 3, 3]  # no gaps, no duplicates
    assert json.loads((study / "study.json").read_text())["status"] == "finished"
    # the searcher came back with its state: one Optuna study per cell, two told trials each
    import ray.cloudpickle

    ckpt = sorted((study / "tune").glob("searcher-state-*.pkl"))
    assert ckpt, sorted(p.name for p in (study / "tune").iterdir())
    state = ray.cloudpickle.loads(ckpt[-1].read_bytes())
    assert state["count"] == [2, 2]
    told = [len(s["_ot_study"].get_trials(deepcopy=False)) for s in state["searchers"]]
    assert told == [2, 2]


def test_truncated_checkpoint_restarts_from_scratch_and_a_truncated_part_is_rebuilt(ray_session, tmp_path):
    """A trial process dies in epoch 3 after its last checkpoint (epoch 2) was cut short: the trial starts
    over instead of failing on the same file max_failures times, the reason is recorded, the other trial
    goes on, and the results hold every epoch once with the values of an uninterrupted run. Then a results
    part truncated after the study finished is rebuilt from the journal by ``--resume``."""
    from study.driver import run_study
    from study.training import train_trial

    study = tmp_path / "ckpt"
    marker = tmp_path / "crashed"
    crash = {"name": "tests.faults:CrashOnce", "at_step": 10, "marker": str(marker), "truncate_under": str(study),
             "label": "Crash"}
    spec = parse_spec({
        "name": "ckpt", "problem": PROBLEM, "seeds": [0], "methods": ["ew", crash],
        "train": {"epochs": 4, "batch_size": 64}, "run": {"max_failures": 1},  # 4 steps per epoch
    })
    meta = run_study(spec, str(tmp_path))
    assert marker.exists(), "the fault was not injected"
    assert meta["errored_trials"] == 0
    st = statuses(study)
    assert st.loc["EW", "status"] == "completed" and st.loc["EW", "reason"] == ""
    row = st.loc["Crash"]
    assert row["status"] == "completed" and row["epochs_done"] == 4 and row["restarts"] == 1
    assert row["reason"].startswith("restarted from scratch: checkpoint ") and "state.pt is unreadable" in row["reason"]
    df = results(study)
    assert df.groupby(["method", "epoch"]).size().to_dict() == {(m, e): 10 for m in ("Crash", "EW") for e in range(1, 5)}
    for label, cfg in zip(("EW", "Crash"), spec.trial_configs()):
        direct = train_trial(cfg)  # the marker exists now: no crash
        got = df[(df.method == label) & (df.epoch == 4) & (df.split != "train")].set_index(["split", "task", "metric"])
        assert len(got) == 8
        for (split, task, metric), value in got["value"].items():
            assert value == pytest.approx(direct[f"{split}/{task}/{metric}"], abs=1e-12), (label, split, task, metric)

    # a results part cut short after the study finished: --resume rebuilds it, nothing is re-run
    before = df.sort_values(["trial_id", "epoch", "split", "task", "metric"]).reset_index(drop=True)
    part = next((study / "results").glob("part-*.parquet"))
    part.write_bytes(part.read_bytes()[:200])
    with pytest.raises(Exception):
        results(study)
    meta = run_study(spec, str(tmp_path), resume=True)
    assert meta["status"] == "finished"
    after = results(study).sort_values(["trial_id", "epoch", "split", "task", "metric"]).reset_index(drop=True)
    assert after.equals(before)
    assert len(list((study / "results").glob(".corrupt-*"))) == 1  # set aside, not deleted


def test_out_of_memory_and_a_missing_data_file_are_retried_then_recorded_with_their_reason(ray_session, tmp_path):
    """GPU out of memory and a data file missing on one node may go away on another GPU or node: Ray Tune
    retries them (run.max_failures) from the last checkpoint. A transient one (epoch 2 of the first attempt
    only) completes with every epoch once; a persistent one ends errored with the error's own line as its
    reason; the other trials go on."""
    from study.driver import run_study

    spec = parse_spec({
        "name": "oom", "problem": PROBLEM, "seeds": [0],
        "methods": ["ew",
                    # step 6 = epoch 2: the retry resumes from the epoch-1 checkpoint with a fresh step counter
                    {"name": "tests.faults:RaiseAt", "step": 6, "kind": "oom", "label": "OOM-once"},
                    # step 2 = epoch 1, before any checkpoint: the retry starts over and fails again
                    {"name": "tests.faults:RaiseAt", "step": 2, "kind": "oom", "label": "OOM"},
                    {"name": "tests.faults:RaiseAt", "step": 2, "kind": "data", "label": "NoFile"}],
        "train": {"epochs": 2, "batch_size": 64}, "run": {"max_failures": 1},  # 4 steps per epoch
    })
    meta = run_study(spec, str(tmp_path))
    assert meta["status"] == "finished" and meta["errored_trials"] == 2
    st = statuses(tmp_path / "oom")
    assert st.loc["EW", ["status", "restarts", "epochs_done"]].tolist() == ["completed", 0, 2]
    assert st.loc["OOM-once", ["status", "restarts", "epochs_done", "reason"]].tolist() == ["completed", 1, 2, ""]
    for label, reason in (("OOM", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 "
                                  "has a total capacity of 79.19 GiB of which 1.06 GiB is free."),
                          ("NoFile", "study.errors.DataError: nyuv2: /data/nyuv2/train/depth/17.npy is missing on "
                                     "this node")):
        assert st.loc[label, ["status", "restarts", "epochs_done", "reason"]].tolist() == ["errored", 1, 0, reason]
    df = results(tmp_path / "oom")
    assert df.groupby(["method", "epoch"]).size().to_dict() == {(m, e): 10 for m in ("EW", "OOM-once") for e in (1, 2)}
