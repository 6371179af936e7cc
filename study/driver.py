"""The Ray Tune driver: a validated spec becomes a ``Tuner``; trial results stream into Parquet.

Data flow: ``litmus run spec.yaml`` -> :func:`study.spec.load_spec` -> :func:`run_study` ->
``Tuner(trainable, param_space={"trial": grid_search(configs)})`` -> :func:`trainable` calls
:func:`study.training.train_trial` with a reporter that calls ``tune.report(metrics, checkpoint=...)``
-> :class:`ResultSink` (a Tune callback on the driver) writes Parquet -> ``litmus analyze``.

Everything cluster-specific (resources, storage, failures, concurrency) lives here, in
``RunConfig``/``TuneConfig``; the training code knows nothing of Ray.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from study.errors import DivergedError, LitmusError, SpecError
from study.results import StudyWriter, read_study, resolve_fs, write_study
from study.spec import StudySpec

STATE_FILE = "state.pt"


# -- the trainable ------------------------------------------------------------------------------
def trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one trial, checkpointed every epoch, resumable."""
    import torch

    from study import datacache
    from study.training import train_trial

    import ray

    datacache.configure_from_env()  # reuse loaded data across this process's trials and the node's
    trial_cfg = config["trial"]
    where = {"node_id": ray.get_runtime_context().get_node_id(), "started_at": time.time()}
    resources = tune.get_context().get_trial_resources()
    cpus = resources.required_resources.get("CPU", 1) if resources else 1
    torch.set_num_threads(max(int(cpus), 1))

    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            try:
                state = load_state(Path(d) / STATE_FILE)
            except CheckpointError as exc:  # a retry would read the same file: start over (same seed)
                where["litmus_note"] = f"restarted from scratch: {str(exc).split(';')[0]}"

    def reporter(metrics: dict, state_dict: dict) -> None:
        with tempfile.TemporaryDirectory(prefix="litmus-ckpt-") as d:
            torch.save(state_dict, Path(d) / STATE_FILE)
            tune.report({**metrics, **where, "reported_at": time.time()},
                        checkpoint=tune.Checkpoint.from_directory(d))

    try:
        train_trial(trial_cfg, reporter, resume_state=state)
    except DivergedError as exc:  # the same seed would diverge again: no retry
        tune.report({"litmus_event": "diverged", "reason": str(exc), "epoch": exc.epoch, **where})
    except SpecError as exc:  # a configuration the trial cannot run: no retry
        tune.report({"litmus_event": "failed", "reason": str(exc), "epoch": 0, **where})
    # An unreadable checkpoint restarts the trial from scratch (noted in its status row). Anything else
    # (a dead worker, GPU out of memory, a data file missing on this node: a retry, maybe on another node
    # or GPU, can help) propagates: Ray Tune retries from the last checkpoint up to run.max_failures
    # times, then the trial is recorded as errored with the error's last line.


class CheckpointError(RuntimeError):
    """A trial checkpoint that cannot be read."""


def load_state(path: Path) -> dict:
    """Load a trial checkpoint without executing pickled code; a damaged file raises CheckpointError."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}); restart the trial "
                              f"from scratch with: litmus run SPEC --resume --retry-errored") from None


# -- callbacks ----------------------------------------------------------------------------------
class ResultSink(tune.Callback):
    """Writes every reported epoch to Parquet and keeps one status row per trial."""

    def __init__(self, study_uri: str):
        self.study_uri = study_uri
        self.writer: StudyWriter | None = None
        self.started: dict[str, float] = {}
        self.diverged: dict[str, str] = {}
        self.where: dict[str, dict] = {}
        self.failed: dict[str, str] = {}
        self.restarts: dict[str, int] = {}
        self.notes: dict[str, str] = {}
        self.history: dict[str, list] = {}

    def _w(self) -> StudyWriter:
        if self.writer is None:
            self.writer = StudyWriter(self.study_uri)
        return self.writer

    @staticmethod
    def _gpus(trial) -> float:
        try:
            return float(trial.placement_group_factory.required_resources.get("GPU", 0))
        except Exception:  # noqa: BLE001
            return 0.0

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, time.time())
        cfg = trial.config["trial"]
        self._supersede_restarted(trial.trial_id, cfg)
        self._w().set_status(trial.trial_id, self._recorded(trial.trial_id, cfg), "running",
                             epochs_done=self._w().epochs_done(trial.trial_id), gpus=self._gpus(trial))

    def _history(self, trial_id: str) -> list:
        """``[[first_epoch, tuned], ...]``: the tuned values each stretch of a trial's epochs ran with (PBT
        changes them); carried over from the status row of an earlier run on ``--resume``."""
        if trial_id not in self.history:
            if getattr(self, "_known", None) is None:
                self._known = self._w().statuses()
            old = json.loads(self._known.get(trial_id, ("", "{}"))[1] or "{}")
            self.history[trial_id] = list(old.get(TUNED_HISTORY) or [])
        return self.history[trial_id]

    def _note_tuned(self, trial_id: str, cfg: dict, epoch: int) -> None:
        if "tuned" not in cfg:
            return
        h = self._history(trial_id)
        while h and h[-1][0] > epoch:  # a restart re-reports epochs after its checkpoint
            h.pop()
        if not h:
            h.append([1, dict(cfg["tuned"])])
        elif h[-1][1] != cfg["tuned"] and h[-1][0] < epoch:
            h.append([epoch, dict(cfg["tuned"])])
        elif h[-1][1] != cfg["tuned"]:
            h[-1] = [epoch, dict(cfg["tuned"])]

    def _recorded(self, trial_id: str, cfg: dict) -> dict:
        """The config written to the status row: with the tuned-value history when PBT changed them."""
        h = self._history(trial_id) if "tuned" in cfg else []
        return {**cfg, TUNED_HISTORY: h} if len(h) > 1 else cfg

    def _supersede_restarted(self, trial_id: str, cfg: dict) -> None:
        """``--retry-errored`` restarts an errored trial under a new id: its old rows leave the dataset."""
        if getattr(self, "_known", None) is None:
            self._known = self._w().statuses()
        key = json.dumps(cfg, sort_keys=True, default=str)
        for old_id, (status, config) in list(self._known.items()):
            if old_id != trial_id and status == "errored" and _without_history(config) == key:
                self._w().supersede(old_id, by=trial_id)
                del self._known[old_id]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        cfg = trial.config["trial"]
        if result.get("litmus_note"):
            self.notes[trial.trial_id] = str(result["litmus_note"])
        if "node_id" in result:
            self.where[trial.trial_id] = {"node": str(result["node_id"]), "started_at": float(result["started_at"]),
                                          "ended_at": float(result.get("reported_at", time.time()))}
        if result.get("litmus_event") == "diverged":
            self.diverged[trial.trial_id] = str(result.get("reason", "diverged"))
            return
        if result.get("litmus_event") == "failed":
            self.failed[trial.trial_id] = str(result.get("reason", "failed"))
            return
        if "epoch" in result:
            self._note_tuned(trial.trial_id, cfg, int(result["epoch"]))
        self._w().add_result(trial.trial_id, cfg, result)

    def _finish(self, trial, status: str, reason: str = "") -> None:
        cfg = trial.config["trial"]
        done = self._w().epochs_done(trial.trial_id)
        if trial.trial_id in self.diverged:
            status, reason = "diverged", self.diverged[trial.trial_id]
        elif trial.trial_id in self.failed:
            status, reason = "errored", self.failed[trial.trial_id]
        elif status == "completed" and done < int(cfg["train"]["epochs"]):
            status, reason = "early_stopped", f"stopped by the scheduler after epoch {done}"
        if not reason and trial.trial_id in self.notes:
            reason = self.notes[trial.trial_id]
        elapsed = time.time() - self.started.get(trial.trial_id, time.time())
        device = "cuda" if self._gpus(trial) > 0 else "cpu"
        self._w().set_status(trial.trial_id, self._recorded(trial.trial_id, cfg), status, reason=reason,
                             epochs_done=done, device=device,
                             gpus=self._gpus(trial), time_total_s=elapsed,
                             restarts=self.restarts.get(trial.trial_id, 0),
                             **{"ended_at": time.time(), **self.where.get(trial.trial_id, {})})

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.restarts[trial.trial_id] = self.restarts.get(trial.trial_id, 0) + 1

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, "completed")

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = ""
        try:  # the error file is written locally first and synced to storage later
            local = getattr(trial, "error_file", None)
            err = Path(local).read_text() if local and Path(local).is_file() else trial.get_error()
            if err:
                lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
                reason = lines[-1] if lines else ""
        except Exception:  # noqa: BLE001
            pass
        self._finish(trial, "errored", reason or "the trial raised an error (see its error.txt)")


TUNED_HISTORY = "tuned_history"


def _without_history(config_json: str) -> str:
    """A status row's config JSON as the trial's own config (without the PBT history added to it)."""
    if TUNED_HISTORY not in config_json:
        return config_json
    cfg = json.loads(config_json)
    cfg.pop(TUNED_HISTORY, None)
    return json.dumps(cfg, sort_keys=True, default=str)


class StateGuard(tune.Callback):
    """Keeps a last-known-good copy of Ray Tune's experiment state beside it.

    Tune copies its state files (experiment state, searcher state) from a staging folder to the storage
    folder; a driver killed during that copy leaves them cut short and the study cannot resume. Every
    ``period_s`` this callback checks that each state file parses and, if all do, copies the set to
    ``tune/.state-backup/`` (temp file + rename). :func:`recover_state` puts the backup back on resume.
    """

    PATTERNS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl", "tuner.pkl")

    def __init__(self, experiment_dir: str, period_s: float = 2.0):
        self.experiment_dir = experiment_dir
        self.period_s = period_s
        self._last = 0.0

    def on_step_end(self, iteration, trials, **info):
        now = time.time()
        if now - self._last >= self.period_s and backup_state(self.experiment_dir):
            self._last = now  # a failed check (files mid-copy) is retried at the next step

    def on_experiment_end(self, trials, **info):
        backup_state(self.experiment_dir)


def _state_files(experiment_dir: Path) -> list[Path]:
    return sorted(p for pat in StateGuard.PATTERNS for p in experiment_dir.glob(pat))


def _readable(path: Path) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if not data:
        return False
    try:
        json.loads(data)  # experiment_state-*.json
        return True
    except ValueError:
        pass
    try:  # search_gen_state-*.json and *.pkl are pickles (our own storage: trusted, see README)
        import ray.cloudpickle

        ray.cloudpickle.loads(data)
        return True
    except Exception:  # noqa: BLE001
        return False


def backup_state(experiment_dir: str) -> bool:
    exp = Path(experiment_dir)
    if "://" in experiment_dir or not exp.is_dir():
        return False
    files = _state_files(exp)
    if not files or not all(_readable(f) for f in files):
        return False
    backup = exp / ".state-backup"
    backup.mkdir(exist_ok=True)
    for f in files:
        tmp = backup / f".{f.name}.tmp"
        tmp.write_bytes(f.read_bytes())
        os.replace(tmp, backup / f.name)
    return True


def recover_state(experiment_dir: str) -> list[str]:
    """Replace state files that do not parse by their last good copy; return the names replaced."""
    exp = Path(experiment_dir)
    if "://" in experiment_dir or not exp.is_dir():
        return []
    replaced = []
    backup = exp / ".state-backup"
    for f in _state_files(exp):
        if _readable(f):
            continue
        good = backup / f.name
        if not good.is_file() or not _readable(good):
            raise LitmusError(f"cannot resume: Ray Tune's state file {f} is damaged and has no good backup; "
                              f"start the study again under a new --name")
        tmp = exp / f".{f.name}.tmp"
        tmp.write_bytes(good.read_bytes())
        os.replace(tmp, f)
        replaced.append(f.name)
    return replaced


class ProgressLine(tune.Callback):
    """One readable line per finished trial instead of Ray's tables."""

    def __init__(self, total: int, already: int = 0):
        self.total = total
        self.finished = already
        self.last: dict[str, dict] = {}
        self.t0 = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result

    def _line(self, trial, status: str) -> None:
        self.finished += 1
        cfg = trial.config["trial"]
        res = self.last.get(trial.trial_id, {})
        if res.get("litmus_event") in ("diverged", "failed"):
            status = f"{res['litmus_event']} ({res.get('reason', '')})"
        elif status == "done" and int(res.get("epoch", 0)) < int(cfg["train"]["epochs"]):
            status = "early-stopped"
        tests = [v for k, v in res.items() if isinstance(k, str) and k.startswith("test/") and not k.endswith("/loss")]
        test = f" test {sum(tests) / len(tests):.4f}" if tests else ""
        val = res.get("val_score")
        vals = f" val {val:.4f}" if isinstance(val, float) and math.isfinite(val) else ""
        print(f"[{self.finished}/{self.total}] {cfg['problem']} {cfg['architecture']} {cfg['method']['label']} "
              f"seed={cfg['seed']}: {status}, epochs {res.get('epoch', 0)}{vals}{test} "
              f"({time.time() - self.t0:.0f}s elapsed)", file=sys.stdout, flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "ERROR")


# -- running a study ----------------------------------------------------------------------------
def study_uri(storage: str, name: str) -> str:
    return storage.rstrip("/") + "/" + name


def check_study_folder(spec: StudySpec, storage: str, *, resume: bool) -> dict | None:
    """Refuse to overwrite a study; on --resume, check the spec is the same one. Return existing meta."""
    uri = study_uri(storage, spec.name)
    meta = read_study(uri)
    if meta is None:
        if resume:
            raise LitmusError(f"nothing to resume: no study {spec.name!r} in {storage}; run without --resume")
        return None
    if meta.get("spec_hash") != spec.spec_hash:
        raise LitmusError(f"study {spec.name!r} in {storage} was run from a different spec (hash "
                          f"{meta.get('spec_hash')} != {spec.spec_hash}); use --name NEW for a new study")
    if not resume:
        state = meta.get("status", "unknown")
        if state == "finished":
            raise LitmusError(f"study {spec.name!r} already exists in {storage} (finished); pass --name NEW to "
                              f"start another (or --resume --retry-errored to rerun its errored trials); results "
                              f"are never overwritten")
        raise LitmusError(f"study {spec.name!r} already exists in {storage} ({state}); pass --resume to "
                          f"continue it or --name NEW to start another; results are never overwritten")
    return meta


def check_address(address: str, timeout: float = 10.0) -> None:
    """Fail in one line, within ``timeout`` seconds, when ``--address HOST:PORT`` (or ``ray://HOST:PORT``)
    does not accept connections; Ray itself retries such an address for minutes. ``auto`` is left to Ray."""
    import socket

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise LitmusError(f"cannot reach a Ray cluster at --address {address} ({exc.strerror or exc}); start one "
                          f"there (`ray start --head`), or leave --address out for a local Ray") from None


def init_ray(address: str | None, num_cpus: int | None = None, dashboard: bool = False) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False,
                              "configure_logging": True}
    if address:
        check_address(address)
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                 dashboard_host="127.0.0.1", **kwargs)


class ProblemResources:
    """Each trial's resource request, from its own problem: the problem's defaults under the spec's
    ``resources`` (CPUs, a GPU fraction so several small trials share a GPU, memory where known)."""

    def __init__(self, spec: StudySpec):
        self.by_problem = {}
        for p in spec.problems:
            r = spec.trial_resources(p["name"])
            self.by_problem[p["name"]] = {"cpu": r.get("cpu", 1), "gpu": r.get("gpu", 0),
                                          **({"memory": int(r["memory_gb"] * 2**30)} if r.get("memory_gb") else {})}

    def request(self, config: dict) -> dict:
        problem = (config.get("trial") or {}).get("problem")
        return self.by_problem.get(problem) or next(iter(self.by_problem.values()))

    def __call__(self, config: dict):
        from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

        return resource_dict_to_pg_factory(self.request(config))


def tuner_arguments(spec: StudySpec, configs: list[dict]) -> dict:
    """``param_space`` and ``TuneConfig`` for a spec: a plain grid, one Optuna study per grid cell, or (with
    ``scheduler: pbt``) a grid over PBT's seeded initial population, ``num_samples`` members per cell."""
    from study.search import make_scheduler, make_searcher, pbt_population

    metric = spec.tune["metric"] if spec.tune else "val_score"
    mode = spec.tune["mode"] if spec.tune else "max"
    epochs = max(int(c["train"]["epochs"]) for c in configs)
    scheduler = make_scheduler(spec.scheduler, epochs, metric, mode, spec.tune, configs)
    max_concurrent = spec.run.get("max_concurrent")
    reuse = bool(spec.run.get("reuse_actors", True))  # one worker process serves many trials
    if is_pbt(spec):
        # PBT mutates running trials' configs: Ray refuses a searcher beside it, and the population (the
        # same members on every run, each with its ``cell`` and ``tuned``) is the grid.
        population = pbt_population(spec.tune, configs)
        return {"param_space": {"trial": tune.grid_search(population)}, "tune_config": tune.TuneConfig(
            scheduler=scheduler, reuse_actors=reuse, max_concurrent_trials=max_concurrent)}
    if spec.tune:
        searcher = make_searcher(spec.tune, configs)
        return {"param_space": {}, "tune_config": tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=len(configs) * spec.tune["num_samples"],
            reuse_actors=reuse, max_concurrent_trials=max_concurrent)}
    tc = tune.TuneConfig(scheduler=scheduler, reuse_actors=reuse, max_concurrent_trials=max_concurrent)
    return {"param_space": {"trial": tune.grid_search(configs)}, "tune_config": tc}


def is_pbt(spec: StudySpec) -> bool:
    return bool(spec.scheduler) and spec.scheduler.get("name") == "pbt"


def checkpoints_to_keep(spec: StudySpec) -> int:
    """Checkpoints kept per trial. PBT's exploit step hands a member the checkpoint its clone had at the
    last perturbation; the clone may run up to ``perturbation_interval`` more epochs (one checkpoint each)
    before the member restores it, so that many more are kept."""
    if is_pbt(spec):
        return int(spec.scheduler.get("perturbation_interval", 1)) + 2
    return 1


def trial_statuses(uri: str) -> list[str]:
    """The status of every trial with a status row (running, completed, diverged, errored, early_stopped)."""
    import pyarrow.dataset as pads

    from analysis.schema import TRIALS_DIR
    from study.results import exists, join

    fs, root = resolve_fs(uri)
    path = join(root, TRIALS_DIR)
    if not exists(fs, path):
        return []
    try:
        status = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=["status"]).column("status")
    except Exception:  # noqa: BLE001 - a count for display and the study's status only
        return []
    return [str(s) for s in status.to_pylist()]


def finished_trials(uri: str) -> int:
    """Trials of a study that already ended (for the progress count on --resume)."""
    return sum(1 for s in trial_statuses(uri) if s != "running")


def planned_trials(spec: StudySpec) -> int:
    n = len(spec.trial_configs())
    return n * spec.tune["num_samples"] if spec.tune else n


def run_study(spec: StudySpec, storage: str, *, address: str | None = None, resume: bool = False,
              retry_errored: bool = False, verbose: int = 0, num_cpus: int | None = None,
              dashboard: bool = False) -> dict:
    """Run (or resume) a study; return its metadata. Raises LitmusError before Ray starts on bad input."""
    meta = check_study_folder(spec, storage, resume=resume)
    uri = study_uri(storage, spec.name)
    configs = spec.trial_configs()
    if meta is not None and meta.get("status") == "finished" and not retry_errored:
        repaired = StudyWriter(uri).repair()
        if repaired:
            print(f"rebuilt {len(repaired)} damaged result file(s) from the journal: {', '.join(repaired)}")
        print(f"study {spec.name!r} is already finished in {storage}; nothing to do")
        return meta

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")
    # Save the experiment state (trials, searcher) often, so a killed driver loses at most seconds.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    init_ray(address, num_cpus=num_cpus, dashboard=dashboard)

    if meta is None:
        meta = {"name": spec.name, "spec_hash": spec.spec_hash, "status": "running", "trials": planned_trials(spec),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source": spec.source or ""}
        write_study(uri, meta)
        fs, root = resolve_fs(uri)
        import yaml

        from study.results import join, write_bytes_atomic

        write_bytes_atomic(fs, join(root, "spec.yaml"), yaml.safe_dump(spec.raw, sort_keys=False).encode())

    trainer = tune.with_resources(trainable, ProblemResources(spec))
    run = spec.run
    fs, root = resolve_fs(uri)
    storage_path = uri if "://" in uri else root
    experiment = storage_path.rstrip("/") + "/tune"
    already = finished_trials(uri) if resume else 0
    callbacks = [ResultSink(uri), ProgressLine(planned_trials(spec), already), StateGuard(experiment)]
    run_config = tune.RunConfig(
        name="tune",
        storage_path=storage_path,
        callbacks=callbacks,
        verbose=verbose,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_to_keep(spec)),
        failure_config=tune.FailureConfig(max_failures=int(run.get("max_failures", 1)),
                                          fail_fast=bool(run.get("fail_fast", False))),
    )
    if resume:
        fixed = recover_state(experiment)
        if fixed:
            print(f"Ray Tune state was cut short by the crash; restored the last good copy of: {', '.join(fixed)}")
    if resume and not tune.Tuner.can_restore(experiment):
        raise LitmusError(f"cannot resume study {spec.name!r}: no Ray Tune state was saved in {experiment} "
                          f"before the driver stopped; start it again under a new --name")
    if resume:
        repaired = StudyWriter(uri).repair()
        if repaired:
            print(f"rebuilt {len(repaired)} damaged result file(s) from the journal: {', '.join(repaired)}")
        tuner = tune.Tuner.restore(experiment, trainable=trainer, resume_unfinished=True,
                                   resume_errored=False, restart_errored=retry_errored)
        # callbacks are not pickled with the experiment state: give them back
        tuner._local_tuner._run_config.callbacks = callbacks  # noqa: SLF001
    else:
        tuner = tune.Tuner(trainer, run_config=run_config, **tuner_arguments(spec, configs))
    t0 = time.time()
    grid = tuner.fit()
    # The status rows, not the ResultGrid, say how the study ended: Tune returns from fit() after Ctrl-C
    # too (trials still running or never started), and a trial refused inside the trainable ends "errored"
    # in its status row without a Tune error.
    statuses = trial_statuses(uri)
    ended = sum(1 for s in statuses if s != "running")
    errors = max(sum(1 for s in statuses if s == "errored"), sum(1 for r in grid if r.error is not None))
    status = "finished" if ended >= planned_trials(spec) else "interrupted"
    meta.update({"status": status, "errored_trials": errors, "ended_trials": ended,
                 "wall_time_s": round(time.time() - t0, 1)})
    write_study(uri, meta)
    return meta
