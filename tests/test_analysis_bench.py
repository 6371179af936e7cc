"""The analysis scale benchmark runs and prints a well-formed line per size (never timed against a limit)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_analysis_bench_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "analysis_bench.py"), "--rows", "10000",
                           "--epochs", "5", "--keep", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    m = re.match(r"\s*([\d,]+) rows\s+([\d,]+) trials\s+analyze\s+([\d.]+) s\s+report\s+([\d.]+) s", line)
    assert m, line
    # 200 trials (10 problems x 10 methods x 2 seeds) x 5 epochs x 10 rows per epoch.
    assert int(m.group(1).replace(",", "")) == 10_000 and int(m.group(2).replace(",", "")) == 200
    assert re.search(r"peak RSS: after imports\s+\d+ MiB, analyze\s+\d+ MiB, report\s+\d+ MiB", line)
    assert (tmp_path / "report10000" / "report.html").is_file()
