"""The performance benchmarks run and print well-formed tables (never timed against a limit here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

NUMBER = r"[0-9][0-9,]*(\.[0-9]+)?"


def _table(lines: list[str], header_start: str) -> list[list[str]]:
    """The rows (cells) of the markdown table whose header starts with ``header_start``."""
    i = next(k for k, ln in enumerate(lines) if ln.startswith(header_start))
    width = lines[i].count("|")
    assert re.fullmatch(r"(\|---)+\|", lines[i + 1]) and lines[i + 1].count("|") == width
    rows = []
    for ln in lines[i + 2:]:
        if not ln.startswith("|"):
            break
        assert ln.count("|") == width, ln
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


def test_gpu_script_smoke_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--smoke", "--problems", "celeba",
                           "--methods", "ew", "rlw"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (tmp_path / "gpu_bench.md").read_text()
    assert text.strip() in proc.stdout  # printed and written alike
    lines = text.splitlines()
    assert lines[0].startswith("# gpu_bench on CPU (smoke run)")
    steps = _table(lines, "| method | fp32 ms | bf16 ms")
    assert [r[0] for r in steps] == ["ew", "rlw"]
    for r in steps:  # measured, or explicitly skipped for the time budget
        assert all(re.fullmatch(NUMBER, c) or c == "skipped (budget)" for c in r[1:3]), r
    assert re.search(r"### Step time: celeba \(T=4, input 4x3x8x8\)", text)
    assert steps[0][3] in ("1.00", "")  # EW against itself
    frac = _table(lines, "| trials on one GPU")
    assert [r[0] for r in frac] == ["1 (1/1)", "2 (1/2)"]
    for r in frac:
        assert r[1] == "skipped (budget)" or (re.fullmatch(NUMBER, r[1]) and r[3].endswith("x")), r
    assert re.search(r"^total \d+ s$", text, re.M)


def test_gpu_script_refuses_cpu_without_smoke():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--sections", "step"],
                          capture_output=True, text=True, timeout=120)
    if "no CUDA device" not in proc.stderr:
        pytest.skip("a CUDA device is present")
    assert proc.returncode != 0


def test_data_path_tables(tmp_path):
    out = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_path.py"), "--tiny", "--no-model",
                           "--only", "multidigits", "celeba", "udpos", "--workers", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _table(out.read_text().splitlines(), "| problem | reader")
    assert [(r[0], r[1].split(" (")[0]) for r in rows] == [
        ("celeba", "JPEG files"), ("celeba", "cache_dir memmap"), ("multidigits", "in memory"),
        ("udpos", "cached features")]
    shapes = {r[0] + r[1].split(" (")[0]: r[2] for r in rows}
    assert shapes["celebaJPEG files"] == shapes["celebacache_dir memmap"] == "3x64x64"  # resized by the reader
    assert shapes["multidigitsin memory"] == "1x12x12"
    for r in rows:
        assert int(r[5]) > 0 and re.fullmatch(NUMBER, r[8]), r


def test_trial_overhead_spec_and_reuse_switch():
    import trial_overhead

    from study.driver import tuner_arguments
    from study.spec import parse_spec

    for reuse in (True, False):
        spec = parse_spec(trial_overhead.spec_raw("t", 50, 128, 1, reuse))
        configs = spec.trial_configs()
        assert len(configs) == 50 and {c["method"]["label"] for c in configs} == {"EW", "RLW"}
        assert tuner_arguments(spec, configs)["tune_config"].reuse_actors is reuse
    raw = trial_overhead.spec_raw("t", 4, 128, 1, True)
    raw["run"]["reuse_actors"] = "yes"
    with pytest.raises(Exception, match="run.reuse_actors"):
        parse_spec(raw)
    line = trial_overhead.row({"mode": "reuse", "cache": "node", "trials": 50, "slots": 2, "wall_s": 60.0,
                               "own_s": 100.0, "overhead": 1 - 100 / 120, "setup_s": 0.1, "report_s": 0.05,
                               "outside_s": 0.3, "own_per_trial_s": 2.0, "workers": 2, "gap_median_s": 0.04})
    assert line.count("|") == trial_overhead.HEADER.count("|") and "| 16.7% |" in line
