"""Find studies and read their Parquet results (local folders or object storage) into tidy frames.

A PATH is either one study folder (holding ``study.json``) or a storage folder whose subfolders are
studies. Rows are read with :mod:`pyarrow.dataset`, projected to the columns the analysis needs and
filtered by study / problem / method / split *before* they are loaded, so memory grows with what is
analysed, not with what is stored.
"""

from __future__ import annotations

import ctypes
import json
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from analysis.errors import AnalysisError
from analysis.schema import RESULT_SCHEMA, RESULTS_DIR, STUDY_FILE, TRIAL_SCHEMA, TRIALS_DIR

#: columns of the result rows the analysis reads (the rest of RESULT_SCHEMA stays on disk)
RESULT_COLUMNS = ("study", "trial_id", "problem", "architecture", "method", "weighting", "aggregator",
                  "method_params", "seed", "epoch", "split", "task", "metric", "value", "higher_is_better",
                  "time_epoch_s", "time_step_s")


@dataclass(frozen=True)
class StudyRef:
    """One study found under a PATH: where it lives and what its ``study.json`` says."""

    root: str                       # folder path inside ``filesystem``
    filesystem: pafs.FileSystem = field(compare=False, repr=False)
    info: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        return str(self.info.get("name") or posixpath.basename(self.root.rstrip("/")))


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise AnalysisError(f"cannot open {path}: {e}") from e
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path)).replace(os.sep, "/")


def _is_file(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def _read_json(fs: pafs.FileSystem, path: str) -> dict:
    try:
        with fs.open_input_stream(path) as f:
            data = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise AnalysisError(f"cannot read {path}: {e}; is it a study written by `litmus run`?") from e
    return data if isinstance(data, dict) else {}


def find_studies(path: str) -> list[StudyRef]:
    """The studies at ``path``: the folder itself if it holds ``study.json``, else its subfolders that do."""
    fs, root = _filesystem(str(path))
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise AnalysisError(f"{path} does not exist; give a study folder (with {STUDY_FILE}) or a storage folder of studies")
    if info.type != pafs.FileType.Directory:
        raise AnalysisError(f"{path} is not a folder; give a study folder (with {STUDY_FILE}) or a storage folder of studies")
    if _is_file(fs, f"{root}/{STUDY_FILE}"):
        return [StudyRef(root, fs, _read_json(fs, f"{root}/{STUDY_FILE}"))]
    studies = []
    for sub in sorted(fs.get_file_info(pafs.FileSelector(root, recursive=False)), key=lambda i: i.path):
        if sub.type == pafs.FileType.Directory and not sub.base_name.startswith((".", "_")):
            if _is_file(fs, f"{sub.path}/{STUDY_FILE}"):
                studies.append(StudyRef(sub.path, fs, _read_json(fs, f"{sub.path}/{STUDY_FILE}")))
    if not studies:
        raise AnalysisError(f"no study found at {path}: expected {path}/{STUDY_FILE} or subfolders with a {STUDY_FILE}")
    return studies


def _isin(name: str, values: Iterable[str] | None):
    if values is None:
        return None
    return ds.field(name).isin(pa.array(sorted(set(values)), pa.string()))


def _and(*exprs):
    out = None
    for e in exprs:
        if e is not None:
            out = e if out is None else (out & e)
    return out


#: result files read per scan: reading many small Parquet files leaves ~75 KB of freed heap per file
#: that glibc keeps until trimmed, so large studies are scanned in groups with a trim in between
FILES_PER_SCAN = 256


def release_memory() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``); a no-op elsewhere."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def _dictionary_schema(schema: pa.Schema) -> tuple[pa.Schema, list[str]]:
    strings = [f.name for f in schema if pa.types.is_string(f.type)]
    fields = [pa.field(f.name, pa.dictionary(pa.int32(), pa.string())) if f.name in strings else f for f in schema]
    return pa.schema(fields), strings


def _dataset(study: StudyRef, sub: str, schema: pa.Schema, files: Sequence[str] | None = None) -> ds.Dataset | None:
    """The Parquet files of one study folder (or the given ``files`` of it), string columns decoded
    straight to dictionary arrays: a study repeats a handful of labels a million times."""
    dict_schema, strings = _dictionary_schema(schema)
    fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=strings))
    if files is not None:
        return ds.dataset(list(files), format=fmt, filesystem=study.filesystem, schema=dict_schema) if files else None
    folder = f"{study.root}/{sub}"
    if study.filesystem.get_file_info(folder).type != pafs.FileType.Directory:
        return None
    d = ds.dataset(folder, format=fmt, filesystem=study.filesystem, schema=dict_schema,
                   ignore_prefixes=[".", "_"])
    return d if d.files else None


def study_labels(studies: Sequence[StudyRef]) -> list[str]:
    """A unique label per study: its name, or name@folder when two folders hold studies of one name."""
    names = [s.name for s in studies]
    return [n if names.count(n) == 1 else f"{n}@{s.root}" for n, s in zip(names, studies)]


def _read(studies: Sequence[StudyRef], sub: str, schema: pa.Schema, columns: Sequence[str], flt,
          files: Mapping[str, Sequence[str]] | None = None) -> pa.Table | None:
    """Rows of every study, each study's ``study`` column set to its label (folders are the truth:
    a study copied or renamed keeps its rows, and two studies never share a trial key)."""
    tables = []
    for study, label in zip(studies, study_labels(studies)):
        if files is not None and label not in files:
            continue
        data = _dataset(study, sub, schema, None if files is None else files[label])
        if data is None:
            continue
        paths = list(data.files)
        parts = []
        for i in range(0, len(paths), FILES_PER_SCAN):
            group = data if len(paths) <= FILES_PER_SCAN else _dataset(study, sub, schema, paths[i:i + FILES_PER_SCAN])
            try:
                parts.append(group.to_table(columns=list(columns), filter=flt).combine_chunks())
            except (pa.ArrowInvalid, OSError) as e:
                raise AnalysisError(f"cannot read {study.root}/{sub}: {' '.join(str(e).split())}; a part file "
                                    f"cut short is rebuilt from the study's journal by `litmus run SPEC "
                                    f"--storage ... --resume`") from e
            release_memory()
        t = pa.concat_tables(parts)
        if "study" in t.column_names:
            const = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(t), np.int32)), pa.array([label]))
            t = t.set_column(t.column_names.index("study"), "study", const)
        tables.append(t)
    if not tables:
        return None
    return pa.concat_tables(tables)


def read_results(studies: Sequence[StudyRef], *, problems: Iterable[str] | None = None,
                 methods: Iterable[str] | None = None, splits: Iterable[str] | None = None,
                 columns: Sequence[str] = RESULT_COLUMNS,
                 files: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Tidy metric rows of ``studies``, filtered before loading; string columns come back categorical.

    ``files`` (study label -> result file paths, from :func:`plan_by_problem`) restricts the scan.
    """
    flt = _and(_isin("problem", problems), _isin("method", methods), _isin("split", splits))
    table = _read(studies, RESULTS_DIR, RESULT_SCHEMA, columns, flt, files)
    if table is None:
        if files is not None:
            return _to_frame(pa.table({c: pa.array([], RESULT_SCHEMA.field(c).type) for c in columns}))
        raise AnalysisError(f"no result files under {', '.join(s.root + '/' + RESULTS_DIR for s in studies)}; "
                            "has any trial finished an epoch?")
    return _to_frame(table)


@dataclass
class Plan:
    """Which result files hold which problem, and the (problem, method) pairs they contain."""

    files: dict[str, dict[str, list[str]]]      # problem -> study label -> file paths
    pairs: set[tuple[str, str]]                 # (problem, method)


def plan_by_problem(studies: Sequence[StudyRef], trials: pd.DataFrame, *, problems: Iterable[str] | None = None,
                    methods: Iterable[str] | None = None) -> Plan:
    """Group each study's result files by problem so that every problem is read in one scan of its
    own files only, each file opened once.

    A trial's file is ``results/part-TRIAL.parquet`` (the contract in :mod:`analysis.schema`); its
    problem and method come from the trial's status row. Files without a status row (a trial still
    running, a lost status file) are opened to find out.
    """
    problems = None if problems is None else set(problems)
    methods = None if methods is None else set(methods)
    files: dict[str, dict[str, dict[str, None]]] = {}
    pairs: set[tuple[str, str]] = set()
    known: dict[tuple[str, str], tuple[str, str]] = {}
    if len(trials):
        for r in trials[["study", "trial_id", "problem", "method"]].astype(str).itertuples(index=False):
            known[(r.study, f"part-{r.trial_id}.parquet")] = (r.problem, r.method)
    for study, label in zip(studies, study_labels(studies)):
        data = _dataset(study, RESULTS_DIR, RESULT_SCHEMA)
        if data is None:
            continue
        for path in data.files:
            hit = known.get((label, posixpath.basename(path)))
            if hit is not None:
                found = {hit}
            else:
                try:
                    t = _dataset(study, RESULTS_DIR, RESULT_SCHEMA, [path]).to_table(columns=["problem", "method"])
                except (pa.ArrowInvalid, OSError) as e:
                    raise AnalysisError(f"cannot read result file {path}: {str(e).splitlines()[0]}; move it away "
                                        "(or leave its study out with --study)") from e
                found = {(str(p), str(m)) for p, m in t.to_pandas().drop_duplicates().itertuples(index=False)}
            for problem, method in found:
                if (problems is not None and problem not in problems) or (methods is not None and method not in methods):
                    continue
                pairs.add((problem, method))
                files.setdefault(problem, {}).setdefault(label, {})[path] = None
    return Plan({p: {k: list(v) for k, v in by.items()} for p, by in files.items()}, pairs)


def read_trials(studies: Sequence[StudyRef]) -> pd.DataFrame:
    """One status row per trial (TRIAL_SCHEMA without the config), or an empty frame with those columns."""
    cols = [f.name for f in TRIAL_SCHEMA if f.name != "config"]
    table = _read(studies, TRIALS_DIR, TRIAL_SCHEMA, cols, None)
    if table is None:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in cols})
    return _to_frame(table)


def _to_frame(table: pa.Table) -> pd.DataFrame:
    # Strings stay dictionary-encoded: a categorical column costs one small int per row.
    arrays = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = pc.dictionary_encode(col)
        arrays.append(col)
    frame = pa.table(arrays, names=table.column_names).to_pandas()
    for c in frame.columns:
        if isinstance(frame[c].dtype, pd.CategoricalDtype):
            frame[c] = frame[c].cat.remove_unused_categories()
    return frame
