"""Load a trial's data once per worker process and once per node, not once per trial.

Trials run in Ray worker processes; with ``run.reuse_actors`` (the default) one process serves many
trials in a row, and several processes run side by side on a node. Two levels of sharing:

* **Process cache** (every problem): the last data set loaded in this process is kept, keyed by the
  problem's class, its parameters and, where ``load(seed)`` depends on the seed, the seed. The next trial
  of the same problem gets the same objects back at no cost. One entry (the previous one is dropped
  before a different data set loads), so a reused process never holds two data sets at once.
* **Node cache** (in-memory data sets): a data set made only of in-memory tensors
  (:class:`~study.problems.base.TensorPairs` splits, e.g. ``multidigits`` or the dense problems with
  ``in_memory: true``; XTREME :class:`~study.problems._xtreme.Features`) is written once per node as
  ``.npy`` files under the node cache folder, and every trial process on the node memory-maps them
  (copy-on-write): one copy in the page cache however many trials share it, and a fresh process does not
  run the problem's reader at all (for ``multidigits`` that skips importing scikit-learn). A file lock
  makes one process write while the others wait; the folder appears by an atomic rename.

File-backed readers (CelebA with or without ``cache_dir``, the dense problems' per-sample ``.npy``
files, Office image lists) are already shared by the operating system's page cache: their data objects
hold paths or memory maps, so only the process cache applies.

The built-in problems' ``load(seed)`` ignores the seed (their splits are fixed by ``split_seed`` or by the
release), so their key leaves it out; a problem class may declare ``data_depends_on_seed = False`` (or
``True``), and problems outside :mod:`study.problems` are keyed by seed unless they say otherwise.

A node cache entry is keyed by the problem class, its parameters, the seed where it matters, the version of
this package and a fingerprint of the data source (names, sizes and modification times of the entries
directly under the problem's ``root``; scikit-learn's version for ``multidigits``). Data files edited in
place deeper in the tree are not noticed: delete the cache folder after changing a data set.

Configuration: the Ray trainable calls :func:`configure_from_env`; plain ``train_trial`` calls (tests,
notebooks) load directly unless :func:`configure` is called. ``LITMUS_DATA_CACHE``:

* unset or ``node``: process and node cache, node folder ``$TMPDIR/litmus-data-cache-$UID``;
* a folder path: process and node cache in that folder (node-local disk: NVMe or ``/dev/shm``);
* ``process``: process cache only;  ``off``: load for every trial.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import uuid
from typing import Any

import numpy as np
import torch

ENV = "LITMUS_DATA_CACHE"
MANIFEST = "manifest.json"

_lock = threading.Lock()
_settings: dict[str, Any] = {"process": False, "node_dir": None}
_entry: tuple[str, Any] | None = None  # (key, data) of the last data set loaded in this process
stats = {"loads": 0, "process_hits": 0, "node_hits": 0, "node_writes": 0}


# -- configuration --------------------------------------------------------------------------------
def default_node_dir() -> str:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"litmus-data-cache-{uid}")


def configure(*, process: bool = True, node_dir: str | None = None) -> None:
    """Turn the process cache on or off and set (or, with ``None``, turn off) the node cache folder."""
    global _entry
    with _lock:
        _settings["process"] = bool(process)
        _settings["node_dir"] = os.path.expanduser(node_dir) if node_dir else None
        if not process:
            _entry = None


def configure_from_env() -> None:
    """Apply ``LITMUS_DATA_CACHE`` (see the module docs); called by the Ray trainable in each trial."""
    value = os.environ.get(ENV, "node").strip()
    low = value.lower()
    if low in ("off", "0", "false", "no", "none"):
        configure(process=False)
    elif low == "process":
        configure(process=True, node_dir=None)
    elif low in ("", "node", "1", "true", "yes", "on"):
        configure(process=True, node_dir=default_node_dir())
    else:
        configure(process=True, node_dir=value)


def clear_process_cache() -> None:
    global _entry
    with _lock:
        _entry = None


# -- keys -----------------------------------------------------------------------------------------
def depends_on_seed(problem) -> bool:
    """Whether ``problem.load(seed)`` can return different data for different seeds."""
    declared = getattr(problem, "data_depends_on_seed", None)
    if declared is not None:
        return bool(declared)
    # Built-in readers: splits are fixed by the release or by split_seed, never by the trial seed
    # (tests/test_perf_cache.py checks this for every built-in problem it can load).
    return not type(problem).__module__.startswith("study.problems.")


def _source_fingerprint(problem) -> list:
    root = getattr(problem, "root", None)
    out: list = []
    if isinstance(root, (str, os.PathLike)) and os.path.isdir(root):
        with os.scandir(root) as it:
            for e in sorted(it, key=lambda e: e.name):
                st = e.stat()
                out.append([e.name, st.st_size, st.st_mtime_ns])
    if type(problem).__module__ == "study.problems.multidigits":
        import importlib.metadata

        out.append(["scikit-learn", importlib.metadata.version("scikit-learn")])
    return out


def data_key(problem, name: str, params: dict | None, seed: int, *, fingerprint: bool = False) -> str:
    from study import __version__

    cls = type(problem)
    payload = {
        "problem": name, "class": f"{cls.__module__}.{cls.__qualname__}", "params": params or {},
        "seed": int(seed) if depends_on_seed(problem) else None, "version": __version__,
    }
    if fingerprint:
        payload["source"] = _source_fingerprint(problem)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


# -- loading --------------------------------------------------------------------------------------
def load_data(problem, name: str, params: dict | None, seed: int) -> Any:
    """``problem.load(seed)``, through the process and node caches when they are configured."""
    global _entry
    if not _settings["process"]:
        stats["loads"] += 1
        return problem.load(seed)
    key = data_key(problem, name, params, seed)
    with _lock:
        if _entry is not None and _entry[0] == key:
            stats["process_hits"] += 1
            return _entry[1]
        _entry = None  # drop the previous data set before loading another
        node_dir = _settings["node_dir"]
        data = None
        if node_dir:
            data = _node_load(node_dir, data_key(problem, name, params, seed, fingerprint=True),
                              lambda: problem.load(seed))
        if data is None:
            stats["loads"] += 1
            data = problem.load(seed)
        _entry = (key, data)
        return data


# -- node cache: in-memory tensors as memory-mapped .npy files ------------------------------------
class _NotShareable(Exception):
    pass


def _tensor_types():
    from study.problems.base import TensorPairs

    types: dict[str, tuple[type, Any, Any]] = {
        "TensorPairs": (TensorPairs, lambda d: {"x": d.x, **{f"y.{t}": y for t, y in d.targets.items()}},
                        lambda a: TensorPairs(a["x"], {k[2:]: v for k, v in a.items() if k.startswith("y.")})),
    }
    try:
        from study.problems._xtreme import Features

        types["Features"] = (Features, lambda d: d.tensors(), lambda a: Features(**a))
    except Exception:  # noqa: BLE001 - optional
        pass
    return types


def _flatten(data: Any, arrays: list[np.ndarray], types) -> Any:
    """A JSON manifest of ``data`` whose tensors are appended to ``arrays``; _NotShareable otherwise."""
    if data is None:
        return None
    if isinstance(data, dict):
        return {"dict": {str(k): _flatten(v, arrays, types) for k, v in data.items()}}
    for tname, (cls, to_tensors, _) in types.items():
        if type(data) is cls:
            fields = {}
            for field, t in to_tensors(data).items():
                if not isinstance(t, torch.Tensor) or t.dtype in (torch.bfloat16,) or t.is_complex():
                    raise _NotShareable(tname)
                arrays.append(t.detach().cpu().contiguous().numpy())
                fields[field] = len(arrays) - 1
            return {"type": tname, "fields": fields}
    raise _NotShareable(type(data).__name__)


def _unflatten(node: Any, folder: str, types) -> Any:
    if node is None:
        return None
    if "dict" in node:
        return {k: _unflatten(v, folder, types) for k, v in node["dict"].items()}
    _, _, build = types[node["type"]]
    tensors = {f: torch.from_numpy(np.load(os.path.join(folder, f"{i}.npy"), mmap_mode="c"))
               for f, i in node["fields"].items()}
    return build(tensors)


def _read_entry(folder: str):
    manifest = os.path.join(folder, MANIFEST)
    if not os.path.isfile(manifest):
        return None
    with open(manifest) as f:
        node = json.load(f)
    if node.get("shareable") is False:
        return False
    return _unflatten(node["data"], folder, _tensor_types())


def _node_load(node_dir: str, key: str, load):
    """The data set from the node cache, writing it there first if this process is the first to ask.

    Returns None when the data set is not made of in-memory tensors (the caller loads it directly) or
    when the folder cannot be used (read-only disk, out of space): the cache never fails a trial.
    """
    folder = os.path.join(node_dir, key)
    try:
        data = _read_entry(folder)
        if data is False:
            return None
        if data is not None:
            stats["node_hits"] += 1
            return data
        os.makedirs(node_dir, exist_ok=True)
        with _file_lock(os.path.join(node_dir, f"{key}.lock")):
            data = _read_entry(folder)  # written while we waited for the lock
            if data is False:
                return None
            if data is not None:
                stats["node_hits"] += 1
                return data
            stats["loads"] += 1
            loaded = load()
            _write_entry(folder, loaded)
            stats["node_writes"] += 1
            mapped = _read_entry(folder)
            return loaded if mapped in (None, False) else mapped
    except OSError:
        return None


def _write_entry(folder: str, data: Any) -> None:
    tmp = f"{folder}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    try:
        arrays: list[np.ndarray] = []
        try:
            manifest = {"data": _flatten(data, arrays, _tensor_types())}
        except _NotShareable as exc:
            arrays, manifest = [], {"shareable": False, "reason": str(exc)}
        for i, a in enumerate(arrays):
            np.save(os.path.join(tmp, f"{i}.npy"), a)
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f)
        try:
            os.rename(tmp, folder)  # atomic; fails if another writer got there first
        except OSError:
            if not os.path.isfile(os.path.join(folder, MANIFEST)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path: str):
    import fcntl

    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released by the kernel if this process dies
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def clear_node_cache(node_dir: str | None = None) -> None:
    """Delete the node cache folder (after a data set changed on disk)."""
    shutil.rmtree(node_dir or _settings["node_dir"] or default_node_dir(), ignore_errors=True)
