"""Trial overhead: a study of many short trials on a local Ray, wall time vs the trials' own work.

Runs ``study.driver.run_study`` on a spec of ``--trials`` short ``multidigits`` trials (two methods x
seeds, HPS, ``--epochs`` epochs of ``--n-train`` pairs) on a local Ray with ``--cpus`` CPUs and one CPU
per trial, once per mode, each mode in a fresh Python process and a fresh Ray:

* ``reuse``: ``run.reuse_actors: true`` (the default): one worker process serves many trials;
* ``fresh``: ``run.reuse_actors: false``: a new worker process per trial;

and per ``--cache`` setting of the data cache (``LITMUS_DATA_CACHE``: ``node``, ``process``, ``off``;
see :mod:`study.datacache`; ``node-warm`` is the node cache already written by an earlier study on the
node, ``node`` starts it empty).

Reported per run (``slots`` = trials that run at once = cpus / cpus per trial)::

    own      sum over trials of their training steps + evaluation (time_epoch_s + time_eval_s)
    overhead 1 - own / (slots * wall)     (wall: Tuner.fit, what a user waits for)
    setup    per trial: building the Trial (data load, model, optimizer) inside the worker
    report   per trial: in-process time not spent in setup, training or evaluation (checkpoint save,
             tune.report round trips with the driver)
    outside  per trial: slot time outside the trial function (worker start, Ray scheduling, imports,
             idle slots at the end)

    python benchmarks/trial_overhead.py                       # 50 trials, reuse and fresh, node cache
    python benchmarks/trial_overhead.py --cache node off --modes reuse fresh --out table.md
    python benchmarks/trial_overhead.py --trials 8 --n-train 256 --epochs 1   # smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADER = ("| mode | data cache | trials | slots | wall s | own s | overhead | own s/trial | setup s/trial "
          "| report s/trial | outside s/trial | workers | gap s (median) |")
RULE = "|---" * (HEADER.count("|") - 1) + "|"


def spec_raw(name: str, trials: int, n_train: int, epochs: int, reuse: bool) -> dict:
    seeds = (trials + 1) // 2
    return {
        "name": name,
        "problem": {"name": "multidigits", "n_train": n_train, "n_val": 256, "n_test": 256, "width": 8},
        "architecture": "hps",
        "methods": ["ew", "rlw"],
        "seeds": seeds,
        "train": {"epochs": epochs, "batch_size": 64, "lr": 1e-2},
        "resources": {"cpu": 1, "gpu": 0},
        "run": {"reuse_actors": reuse, "max_failures": 0},
    }


def run_one(mode: str, cache: str, trials: int, n_train: int, epochs: int, cpus: int, storage: str) -> dict:
    """One study in this process (called in a fresh subprocess by :func:`main`)."""
    node_dir = tempfile.mkdtemp(prefix="litmus-bench-cache-")
    os.environ["LITMUS_DATA_CACHE"] = node_dir if cache.startswith("node") else cache
    import pyarrow.parquet as pq

    from study import driver
    from study.spec import parse_spec

    spec = parse_spec(spec_raw(f"overhead_{mode}_{cache}", trials, n_train, epochs, mode == "reuse"))
    configs = spec.trial_configs()[:trials]
    if cache == "node-warm":  # a node cache left by an earlier study on this node
        from study import datacache
        from study.problems import PROBLEMS
        from study.registry import instantiate

        datacache.configure(process=True, node_dir=node_dir)
        cfg = configs[0]
        datacache.load_data(instantiate(PROBLEMS.get(cfg["problem"]), cfg["problem_params"], "problem"),
                            cfg["problem"], cfg["problem_params"], cfg["seed"])
        datacache.configure(process=False)

    results: dict[str, list[dict]] = {}
    original = driver.ResultSink.on_trial_result

    def capture(self, *args, **info):
        trial, result = info["trial"], info["result"]
        results.setdefault(trial.trial_id, []).append(dict(result))
        return original(self, *args, **info)

    driver.ResultSink.on_trial_result = capture
    spec.trial_configs = lambda: configs  # exactly --trials trials
    t0 = time.time()
    meta = driver.run_study(spec, storage, num_cpus=cpus)
    total = time.time() - t0
    import ray

    ray.shutdown()
    status = pq.read_table(os.path.join(storage, spec.name, "trials")).to_pylist()
    own = setup = report = in_proc = 0.0
    for tid, rows in results.items():
        rows = [r for r in rows if "time_epoch_s" in r]
        if not rows:
            continue
        train = sum(float(r["time_epoch_s"]) for r in rows)
        ev = sum(float(r.get("time_eval_s", 0.0)) for r in rows)
        st = float(rows[-1].get("time_setup_s", 0.0))
        span = float(rows[-1]["reported_at"]) - float(rows[0]["started_at"])
        own += train + ev
        setup += st
        in_proc += span
        report += span - st - train - ev
    # between trials on one worker process: from the last report of one to the start of the next
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for rows in results.values():
        rows = [r for r in rows if "time_epoch_s" in r]
        if rows and "pid" in rows[0]:
            by_pid.setdefault(int(rows[0]["pid"]), []).append((float(rows[0]["started_at"]),
                                                               float(rows[-1]["reported_at"])))
    gaps = []
    for spans in by_pid.values():
        spans.sort()
        gaps += [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    n = len(results)
    slots = cpus  # one CPU per trial
    wall = float(meta["wall_time_s"])
    return {
        "mode": mode, "cache": cache, "trials": n, "completed": sum(1 for s in status if s["status"] == "completed"),
        "slots": slots, "wall_s": wall, "run_study_s": total, "own_s": own,
        "overhead": 1.0 - own / (slots * wall), "setup_s": setup / max(n, 1), "report_s": report / max(n, 1),
        "outside_s": (slots * wall - in_proc) / max(n, 1), "own_per_trial_s": own / max(n, 1),
        "workers": len(by_pid), "gap_median_s": float(np.median(gaps)) if gaps else float("nan"),
        "first_start_s": min(float(r[0]["started_at"]) for r in results.values()) - t0,
    }


def row(r: dict) -> str:
    return (f"| {r['mode']} | {r['cache']} | {r['trials']} | {r['slots']} | {r['wall_s']:.1f} | {r['own_s']:.1f} | "
            f"{100 * r['overhead']:.1f}% | {r['own_per_trial_s']:.2f} | {r['setup_s']:.2f} | {r['report_s']:.2f} | "
            f"{r['outside_s']:.2f} | {r['workers']} | {r['gap_median_s']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--n-train", type=int, default=4096, help="training pairs per trial")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (one per trial)")
    ap.add_argument("--modes", nargs="+", default=["reuse", "fresh"], choices=["reuse", "fresh"])
    ap.add_argument("--cache", nargs="+", default=["node"], choices=["node", "node-warm", "process", "off"],
                    help="data cache: node (cold: the study writes it), node-warm (written before the study), "
                         "process, off")
    ap.add_argument("--out", help="also write the table (markdown) here")
    ap.add_argument("--json", help="also write the raw figures (JSON) here")
    ap.add_argument("--one", nargs=2, metavar=("MODE", "CACHE"), help=argparse.SUPPRESS)
    ap.add_argument("--storage", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one:
        r = run_one(args.one[0], args.one[1], args.trials, args.n_train, args.epochs, args.cpus, args.storage)
        print("RESULT " + json.dumps(r), flush=True)
        return 0

    rows = []
    print(HEADER)
    print(RULE)
    for cache in args.cache:
        for mode in args.modes:
            with tempfile.TemporaryDirectory(prefix="litmus-overhead-") as storage:
                cmd = [sys.executable, __file__, "--one", mode, cache, "--trials", str(args.trials),
                       "--n-train", str(args.n_train), "--epochs", str(args.epochs), "--cpus", str(args.cpus),
                       "--storage", storage]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                    raise SystemExit(f"run {mode}/{cache} failed (exit {proc.returncode})")
                r = json.loads(line[len("RESULT "):])
                rows.append(r)
                print(row(r), flush=True)
    if args.out:
        Path(args.out).write_text("\n".join([HEADER, RULE,
                                             *map(row, rows)]) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
