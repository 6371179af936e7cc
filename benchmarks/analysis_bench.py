"""Scale benchmark of ``litmus analyze``: time and peak memory on synthetic studies of growing size.

    python benchmarks/analysis_bench.py                  # 250k and 1M result rows
    python benchmarks/analysis_bench.py --rows 1000000 --rows 4000000 --keep /tmp/bench

Each size is written once (a study of ``trials`` x ``epochs`` over 10 problems and 10 methods, 10 rows
per epoch: train loss for 2 tasks, val and test accuracy and loss for 2 tasks), then analysed in a
fresh subprocess so that its peak RSS is the analysis alone. Reported: rows, trials, seconds for
``analyze`` (read, select, score, test, rank) and for writing the report (figures included), and the
subprocess's peak RSS after its imports, after ``analyze`` and at the end, in MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from analysis.io import find_studies
from analysis.pipeline import Options, analyze
from analysis import report
t_import = time.perf_counter() - t0
rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
a = analyze(find_studies(sys.argv[1]), Options(n_boot=2000))
t_analyze = time.perf_counter() - t0
rss_analyze = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
report.write(a, sys.argv[2])
t_report = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"import_s": t_import, "analyze_s": t_analyze, "report_s": t_report, "peak_rss_mib": rss,
                  "rss_import_mib": rss_import, "rss_analyze_mib": rss_analyze,
                  "trials": int(len(a.trials))}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, action="append", help="result rows per study (repeatable)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--keep", default=None, help="write studies here and keep them (default: a temp dir)")
    args = p.parse_args(argv)
    sizes = args.rows or [250_000, 1_000_000]
    sys.path.insert(0, ROOT)
    from analysis.synthetic import write_large_study

    base = args.keep or tempfile.mkdtemp(prefix="litmus-bench-")
    results = []
    try:
        for rows in sizes:
            trials = max(rows // (10 * args.epochs), 100)
            t0 = time.perf_counter()
            study, n_rows = write_large_study(base, f"bench{rows}", trials=trials, epochs=args.epochs,
                                              problems=10, methods=10)
            t_write = time.perf_counter() - t0
            env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
            out = subprocess.run([sys.executable, "-c", CHILD, study, os.path.join(base, f"report{rows}")],
                                 capture_output=True, text=True, env=env, check=False)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return 1
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r.update(rows=n_rows, write_s=t_write)
            results.append(r)
            print(f"{n_rows:>10,d} rows  {r['trials']:>6,d} trials  analyze {r['analyze_s']:6.2f} s  "
                  f"report {r['report_s']:6.2f} s  (imports {r['import_s']:.2f} s)  peak RSS: after imports "
                  f"{r['rss_import_mib']:5.0f} MiB, analyze {r['rss_analyze_mib']:5.0f} MiB, report "
                  f"{r['peak_rss_mib']:5.0f} MiB   [data written in {t_write:.1f} s]", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
