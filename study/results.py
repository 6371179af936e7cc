"""The Parquet result sink: tidy rows per trial, written as trials report, never partially visible.

Runs on the Ray driver as a Tune callback, so it works whether trials run on this machine or on a
cluster, and writes to a local folder, NFS, or object storage (``s3://``, ``gs://``) through pyarrow
filesystems. Layout and schemas: :mod:`analysis.schema`.

Exactly-once: each trial has one part file holding all its epochs so far, rewritten (atomically: temp
file + rename) on every report and keyed by epoch. A trial resumed from a checkpoint re-reports the
epochs after that checkpoint, which replace the same keys: no duplicates, no gaps.

Nothing lost: on local and NFS storage every report is also appended to a per-trial journal
(``results/_journal/TRIAL.jsonl``, ignored by dataset readers). A part file that cannot be read (a disk
fault, a copy cut short) is set aside as ``.corrupt-*`` and rebuilt from the journal by
:meth:`StudyWriter.repair`, which ``litmus run --resume`` runs first.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analysis.schema import RESULT_SCHEMA, RESULTS_DIR, STUDY_FILE, TRIAL_SCHEMA, TRIALS_DIR

SPLITS = ("train", "val", "test")


# -- filesystem helpers -------------------------------------------------------------------------
def resolve_fs(path: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local folder or a URI."""
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    import os

    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(*parts: str) -> str:
    return str(PurePosixPath(*parts))


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    parent = str(PurePosixPath(path).parent)
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = join(parent, f".{PurePosixPath(path).name}.{uuid.uuid4().hex}.tmp")
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)  # rename(2): atomic on POSIX filesystems
    else:  # object stores: a PUT is atomic
        with fs.open_output_stream(path) as f:
            f.write(data)


def write_table_atomic(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(fs, path, sink.getvalue().to_pybytes())


def read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    if not exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.readall().decode())


def write_json(fs: pafs.FileSystem, path: str, obj: dict) -> None:
    write_bytes_atomic(fs, path, json.dumps(obj, indent=2, sort_keys=True).encode())


# -- rows ---------------------------------------------------------------------------------------
def metric_directions(problem_name: str, problem_params: dict) -> dict[tuple[str, str], bool]:
    """``(task, metric) -> higher_is_better`` for a problem; every task's ``loss`` is lower-is-better."""
    from study.problems import PROBLEMS
    from study.registry import instantiate

    problem = instantiate(PROBLEMS.get(problem_name), problem_params, "problem")
    out = {}
    for task, metrics in problem.metrics().items():
        out[(task, "loss")] = False
        for m in metrics:
            out[(task, m.name)] = m.higher_is_better
    return out


def trial_identity(config: dict) -> dict[str, Any]:
    from study.weighting.method import method_json

    method = config["method"]
    return {
        "study": config.get("study", ""),
        "spec_hash": config.get("spec_hash", ""),
        "problem": config["problem"],
        "architecture": config.get("architecture", "hps"),
        "method": method["label"],
        "weighting": (method.get("weighting") or {}).get("name", ""),
        "aggregator": (method.get("aggregator") or {}).get("name", ""),
        "method_params": method_json(method),
        "seed": int(config["seed"]),
    }


def metric_rows(trial_id: str, config: dict, result: dict, directions: dict) -> list[dict]:
    ident = trial_identity(config)
    epoch = int(result["epoch"])
    rows = []
    for key, value in result.items():
        if not isinstance(key, str) or key.count("/") != 2:
            continue
        split, task, metric = key.split("/")
        if split not in SPLITS or not isinstance(value, (int, float)):
            continue
        hib = directions.get((task, metric))
        if hib is None:
            continue
        rows.append({
            **ident, "trial_id": trial_id, "epoch": epoch, "split": split, "task": task, "metric": metric,
            "value": float(value), "higher_is_better": bool(hib),
            "time_epoch_s": float(result.get("time_epoch_s", math.nan)),
            "time_step_s": float(result.get("time_step_s", math.nan)),
        })
    return rows


class StudyWriter:
    """Writes one study's result parts and trial status rows. Used by the Tune callback and by tests."""

    def __init__(self, study_uri: str):
        self.fs, self.root = resolve_fs(study_uri)
        self._rows: dict[str, dict[int, list[dict]]] = {}
        self._directions: dict[str, dict] = {}

    def part_path(self, trial_id: str) -> str:
        return join(self.root, RESULTS_DIR, f"part-{trial_id}.parquet")

    def journal_path(self, trial_id: str) -> str:
        return join(self.root, RESULTS_DIR, "_journal", f"{trial_id}.jsonl")

    @property
    def journaled(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def _append_journal(self, trial_id: str, epoch: int, rows: list[dict]) -> None:
        if not self.journaled:
            return
        import os

        path = self.journal_path(trial_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        line = json.dumps({"epoch": epoch, "rows": rows}, default=float) + "\n"
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def _replay_journal(self, trial_id: str) -> dict[int, list[dict]]:
        by_epoch: dict[int, list[dict]] = {}
        path = self.journal_path(trial_id)
        if not self.journaled or not exists(self.fs, path):
            return by_epoch
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash: the epoch is re-reported
                    continue
                _apply(by_epoch, int(entry["epoch"]), entry["rows"])
        return by_epoch

    def _write_part(self, trial_id: str, by_epoch: dict[int, list[dict]]) -> None:
        all_rows = [r for e in sorted(by_epoch) for r in by_epoch[e]]
        write_table_atomic(self.fs, self.part_path(trial_id), pa.Table.from_pylist(all_rows, schema=RESULT_SCHEMA))

    def repair(self) -> list[str]:
        """Rebuild unreadable or stale part files from the journals; return the trial ids repaired."""
        repaired = []
        if not self.journaled:
            return repaired
        import os

        jdir = join(self.root, RESULTS_DIR, "_journal")
        if not os.path.isdir(jdir):
            return repaired
        for name in sorted(os.listdir(jdir)):
            if not name.endswith(".jsonl"):
                continue
            trial_id = name[: -len(".jsonl")]
            journal = self._replay_journal(trial_id)
            try:
                current = self._read_part(trial_id)
            except Exception:  # noqa: BLE001 - any unreadable file is set aside, never deleted
                current = None
                path = self.part_path(trial_id)
                self.fs.move(path, join(str(PurePosixPath(path).parent), f".corrupt-{uuid.uuid4().hex[:8]}-"
                                                                        f"{PurePosixPath(path).name}"))
            if journal and (current is None or _epochs(current) != _epochs(journal)):
                self._write_part(trial_id, journal)
                self._rows[trial_id] = journal
                repaired.append(trial_id)
        return repaired

    def status_path(self, trial_id: str) -> str:
        return join(self.root, TRIALS_DIR, f"{trial_id}.parquet")

    def _read_part(self, trial_id: str) -> dict[int, list[dict]]:
        path = self.part_path(trial_id)
        by_epoch: dict[int, list[dict]] = {}
        if exists(self.fs, path):
            with self.fs.open_input_file(path) as f:
                for row in pq.read_table(f).to_pylist():
                    by_epoch.setdefault(int(row["epoch"]), []).append(row)
        return by_epoch

    def _load_existing(self, trial_id: str) -> dict[int, list[dict]]:
        try:
            part = self._read_part(trial_id)
        except Exception:  # noqa: BLE001 - unreadable: the journal has every report
            part = None
        journal = self._replay_journal(trial_id)
        if part is None or (journal and _epochs(journal) != _epochs(part)):
            return journal
        return part

    def directions(self, config: dict) -> dict:
        key = json.dumps([config["problem"], config.get("problem_params") or {}], sort_keys=True, default=str)
        if key not in self._directions:
            self._directions[key] = metric_directions(config["problem"], config.get("problem_params") or {})
        return self._directions[key]

    def add_result(self, trial_id: str, config: dict, result: dict) -> int:
        """Record one epoch's result (replacing an earlier copy of the same epoch); return rows written."""
        if trial_id not in self._rows:
            self._rows[trial_id] = self._load_existing(trial_id)
        rows = metric_rows(trial_id, config, result, self.directions(config))
        if not rows:
            return 0
        epoch = int(result["epoch"])
        self._append_journal(trial_id, epoch, rows)
        _apply(self._rows[trial_id], epoch, rows)
        self._write_part(trial_id, self._rows[trial_id])
        return len(rows)

    def set_status(self, trial_id: str, config: dict, status: str, *, reason: str = "", epochs_done: int = 0,
                   device: str = "", gpus: float = 0.0, time_total_s: float = 0.0, node: str = "",
                   started_at: float | None = None, ended_at: float | None = None, restarts: int = 0) -> None:
        row = {
            **trial_identity(config), "trial_id": trial_id, "status": status, "reason": reason[:2000],
            "epochs_done": int(epochs_done), "epochs_planned": int(config.get("train", {}).get("epochs", 0)),
            "device": device, "gpus": float(gpus), "time_total_s": float(time_total_s),
            "config": json.dumps(config, sort_keys=True, default=str),
            "node": node, "started_at": started_at, "ended_at": ended_at, "restarts": int(restarts),
        }
        write_table_atomic(self.fs, self.status_path(trial_id), pa.Table.from_pylist([row], schema=TRIAL_SCHEMA))

    def statuses(self) -> dict[str, tuple[str, str]]:
        """``trial_id -> (status, config JSON)`` of every trial recorded so far."""
        path = join(self.root, TRIALS_DIR)
        if not exists(self.fs, path):
            return {}
        import pyarrow.dataset as pads

        table = pads.dataset(path, filesystem=self.fs, format="parquet").to_table(
            columns=["trial_id", "status", "config"])
        return {t: (s, c) for t, s, c in zip(*(table.column(n).to_pylist() for n in ("trial_id", "status", "config")))}

    def supersede(self, trial_id: str, by: str) -> None:
        """Move a trial restarted from scratch (under a new id) out of the dataset, keeping its files."""
        for path, sub in ((self.part_path(trial_id), RESULTS_DIR), (self.status_path(trial_id), TRIALS_DIR)):
            if exists(self.fs, path):
                dest_dir = join(self.root, sub, "_superseded")
                self.fs.create_dir(dest_dir, recursive=True)
                self.fs.move(path, join(dest_dir, PurePosixPath(path).name))
        write_bytes_atomic(self.fs, join(self.root, TRIALS_DIR, "_superseded", f"{trial_id}.by"), by.encode())
        self._rows.pop(trial_id, None)

    def epochs_done(self, trial_id: str) -> int:
        by_epoch = self._rows.get(trial_id)
        if by_epoch is None:
            by_epoch = self._load_existing(trial_id)
        return max(by_epoch, default=0)


def _apply(by_epoch: dict[int, list[dict]], epoch: int, rows: list[dict]) -> None:
    """Record ``epoch``; a resumed trial restarts after its checkpoint, so later epochs are stale."""
    for e in [e for e in by_epoch if e > epoch]:
        del by_epoch[e]
    by_epoch[epoch] = rows


def _epochs(by_epoch: dict[int, list[dict]]) -> list[tuple[int, int]]:
    return sorted((e, len(r)) for e, r in by_epoch.items())


# -- study metadata -----------------------------------------------------------------------------
def read_study(study_uri: str) -> dict | None:
    fs, root = resolve_fs(study_uri)
    return read_json(fs, join(root, STUDY_FILE))


def write_study(study_uri: str, meta: dict) -> None:
    fs, root = resolve_fs(study_uri)
    meta = {**meta, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(fs, join(root, STUDY_FILE), meta)
