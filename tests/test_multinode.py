"""A local multi-node Ray cluster (head + 2 workers faking one GPU each), 0.5 GPU per trial."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_max_overlap_counts_concurrent_intervals():
    assert max_overlap([(0, 2), (1, 3), (2.5, 4)]) == 2
    assert max_overlap([(0, 1), (1, 2)]) == 1  # an end and a start at the same instant do not overlap
    assert max_overlap([(0, 10), (1, 2), (1.5, 3)]) == 3


def test_study_spreads_over_two_fake_gpu_nodes_two_trials_per_gpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "tests.multinode_study", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert "STATUS finished 0" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    st = ds.dataset(tmp_path / "multinode" / "trials", format="parquet").to_table().to_pandas()
    assert len(st) == 8 and (st.status == "completed").all()
    assert (st.gpus == 0.5).all()
    nodes = st.groupby("node")
    assert nodes.ngroups == 2, st[["trial_id", "node"]]  # both workers ran trials, the head none
    overlaps = {node: max_overlap(list(zip(g.started_at, g.ended_at))) for node, g in nodes}
    assert max(overlaps.values()) == 2, overlaps  # two trials shared a GPU, never three (0.5 GPU each)
    df = ds.dataset(tmp_path / "multinode" / "results", format="parquet").to_table().to_pandas()
    assert df.groupby("trial_id").epoch.nunique().eq(2).all() and df.trial_id.nunique() == 8
