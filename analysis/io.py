"""Find studies and read their Parquet results (local folders or object storage) into tidy frames.

A PATH is either one study folder (holding ``study.json``) or a storage folder whose subfolders are
studies. Rows are read with :mod:`pyarrow.dataset`, projected to the columns the analysis needs and
filtered by study / problem / method / split *before* they are loaded, so memory grows with what is
analysed, not with what is stored.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable, Sequence
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


def _dataset(study: StudyRef, sub: str, schema: pa.Schema) -> ds.Dataset | None:
    folder = f"{study.root}/{sub}"
    if study.filesystem.get_file_info(folder).type != pafs.FileType.Directory:
        return None
    d = ds.dataset(folder, format="parquet", filesystem=study.filesystem, schema=schema,
                   ignore_prefixes=[".", "_"])
    return d if d.files else None


def study_labels(studies: Sequence[StudyRef]) -> list[str]:
    """A unique label per study: its name, or name@folder when two folders hold studies of one name."""
    names = [s.name for s in studies]
    return [n if names.count(n) == 1 else f"{n}@{s.root}" for n, s in zip(names, studies)]


def _read(studies: Sequence[StudyRef], sub: str, schema: pa.Schema, columns: Sequence[str], flt) -> pa.Table | None:
    """Rows of every study, each study's ``study`` column set to its label (folders are the truth:
    a study copied or renamed keeps its rows, and two studies never share a trial key)."""
    tables = []
    for study, label in zip(studies, study_labels(studies)):
        data = _dataset(study, sub, schema)
        if data is None:
            continue
        try:
            t = data.to_table(columns=list(columns), filter=flt)
        except (pa.ArrowInvalid, OSError) as e:
            raise AnalysisError(f"cannot read {study.root}/{sub}: {e}") from e
        if "study" in t.column_names:
            const = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(t), np.int32)), pa.array([label]))
            t = t.set_column(t.column_names.index("study"), "study", const)
        tables.append(t)
    if not tables:
        return None
    return pa.concat_tables(tables)


def read_results(studies: Sequence[StudyRef], *, problems: Iterable[str] | None = None,
                 methods: Iterable[str] | None = None, splits: Iterable[str] | None = None,
                 columns: Sequence[str] = RESULT_COLUMNS) -> pd.DataFrame:
    """Tidy metric rows of ``studies``, filtered before loading; string columns come back categorical."""
    flt = _and(_isin("problem", problems), _isin("method", methods), _isin("split", splits))
    table = _read(studies, RESULTS_DIR, RESULT_SCHEMA, columns, flt)
    if table is None:
        raise AnalysisError(f"no result files under {', '.join(s.root + '/' + RESULTS_DIR for s in studies)}; "
                            "has any trial finished an epoch?")
    return _to_frame(table)


def read_trials(studies: Sequence[StudyRef]) -> pd.DataFrame:
    """One status row per trial (TRIAL_SCHEMA without the config), or an empty frame with those columns."""
    cols = [f.name for f in TRIAL_SCHEMA if f.name != "config"]
    table = _read(studies, TRIALS_DIR, TRIAL_SCHEMA, cols, None)
    if table is None:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in cols})
    return _to_frame(table)


def _to_frame(table: pa.Table) -> pd.DataFrame:
    # Dictionary-encode strings in Arrow: a categorical column costs one small int per row.
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
