"""Shared fixtures. Ray starts once per session, only for tests that ask for it."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs, no dashboard, a small object store, in a short temp dir."""
    import ray

    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             _temp_dir=tmp, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def tiny_trial_config(method: dict | str = "ew", *, seed: int = 0, epochs: int = 1, **train) -> dict:
    """A fast multidigits trial config (a few hundred samples)."""
    from study.weighting.method import normalize_method

    return {
        "study": "test", "spec_hash": "0", "problem": "multidigits",
        "problem_params": {"n_train": 256, "n_val": 128, "n_test": 128, "width": 8},
        "architecture": "hps", "architecture_params": {},
        "method": normalize_method(method), "seed": seed,
        "train": {"epochs": epochs, "batch_size": 64, "lr": 1e-2, **train},
    }
