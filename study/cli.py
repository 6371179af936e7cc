"""``litmus``: the command line of mtl-litmus.

    litmus run SPEC [--storage DIR] [--name NAME] [--address ADDR] [--resume]
    litmus analyze PATH [--out DIR]
    litmus train SPEC [--method LABEL] [--seed N]     one trial, no Ray (debugging)
    litmus methods | problems | architectures
    litmus check-data PROBLEM PATH
    litmus check-cluster CLUSTER_YAML                 offline check of a Ray autoscaler config
    litmus best STUDY_DIR [--seeds N] [--out FILE]     a tuned study's best settings -> seed-sweep spec

User errors print one line, ``litmus: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_STORAGE = "litmus_results"


def _cmd_run(args: argparse.Namespace) -> int:
    from study.errors import LitmusError
    from study.spec import load_spec

    if args.num_cpus is not None and args.num_cpus < 1:
        raise LitmusError(f"--num-cpus must be >= 1 (CPUs of the local Ray), got {args.num_cpus}")
    if args.retry_errored and not args.resume:
        raise LitmusError("--retry-errored restarts the errored trials of an existing study: use it with --resume")
    spec = load_spec(args.spec, name=args.name)
    from study.driver import check_study_folder, run_study

    check_study_folder(spec, args.storage, resume=args.resume)
    from study.driver import check_address, planned_trials

    if args.address:
        check_address(args.address)

    n = planned_trials(spec)
    tuned = f", {spec.tune['num_samples']} tuned samples per cell" if spec.tune else ""
    print(f"study {spec.name!r}: {n} trials ({len(spec.methods)} methods x {len(spec.seeds)} seeds{tuned}"
          f"{'' if len(spec.problems) == 1 else f' x {len(spec.problems)} problems'}"
          f"{'' if len(spec.architectures) == 1 else f' x {len(spec.architectures)} architectures'})"
          f" -> {args.storage}/{spec.name}", flush=True)
    meta = run_study(spec, args.storage, address=args.address, resume=args.resume,
                     retry_errored=args.retry_errored, verbose=args.verbose, num_cpus=args.num_cpus,
                     dashboard=args.dashboard)
    if meta.get("status") == "interrupted":
        print(f"study {spec.name!r} interrupted: {meta.get('ended_trials', 0)} of {n} trials ended, results so far "
              f"in {args.storage}/{spec.name}/results; continue with: litmus run {args.spec} --storage "
              f"{args.storage} --name {spec.name} --resume", file=sys.stderr)
        return 130
    print(f"study {spec.name!r} {meta.get('status')}: results in {args.storage}/{spec.name}/results "
          f"({meta.get('errored_trials', 0)} errored); next: litmus analyze {args.storage}/{spec.name}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from study.spec import load_spec
    from study.errors import LitmusError
    from study.training import train_trial

    if args.seed < 0:
        raise LitmusError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.epochs is not None and args.epochs < 1:
        raise LitmusError(f"--epochs must be >= 1, got {args.epochs}")
    spec = load_spec(args.spec)
    configs = spec.trial_configs()
    if args.method:
        configs = [c for c in configs if c["method"]["label"].lower() == args.method.lower()]
        if not configs:
            raise LitmusError(f"no method labelled {args.method!r} in {args.spec}; valid: "
                              f"{', '.join(m['label'] for m in spec.methods)}")
    config = next((c for c in configs if c["seed"] == args.seed), configs[0])
    config = {**config, "seed": args.seed}
    if args.epochs:
        config["train"] = {**config["train"], "epochs": args.epochs}
    # as many threads as the trial gets under Ray (which sets OMP_NUM_THREADS to its CPUs), so the
    # floating-point reductions, and so the numbers, are those of the same trial in `litmus run`
    import torch

    torch.set_num_threads(max(1, int(spec.trial_resources(config["problem"]).get("cpu", 1))))
    print(f"training {config['problem']} / {config['architecture']} / {config['method']['label']} "
          f"seed={config['seed']} for {config['train']['epochs']} epochs (no Ray)")

    def reporter(metrics: dict, state: dict) -> None:
        shown = {k: round(v, 4) for k, v in metrics.items()
                 if isinstance(v, float) and (k.startswith(("val/", "test/")) and not k.endswith("/loss"))}
        print(f"epoch {metrics['epoch']}: {json.dumps(shown)} ({metrics['time_epoch_s']:.1f}s)", flush=True)

    train_trial(config, reporter)
    return 0


def params_of(cls, skip=("self", "num_tasks"), required: bool = False) -> str:
    """``name=default`` of a class's constructor parameters (and the required ones by name)."""
    import inspect

    sig = inspect.signature(cls.__init__)
    ps = [n if p.default is p.empty else f"{n}={p.default!r}" for n, p in sig.parameters.items()
          if n not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
          and (required or p.default is not p.empty)]
    return ", ".join(ps)


def _cmd_methods(args: argparse.Namespace) -> int:
    import inspect

    from study.weighting import AGGREGATORS, WEIGHTINGS
    from study.weighting.distributions import DISTRIBUTIONS

    def first_line(cls) -> str:
        return summary(inspect.getdoc(cls))

    for title, registry in (("Loss weightings (methods: [NAME] or {name: NAME, param: value}):", WEIGHTINGS),
                            ("\nGradient methods:", AGGREGATORS)):
        print(title)
        for name in registry.names():
            cls = registry.get(name)
            print(f"  {name:<16} {first_line(cls)}")
            if params_of(cls):
                print(f"  {'':<16}   params: {params_of(cls)}")
    from study.weighting.method import PRESETS

    print("\nPresets (a name that stands for a combination):")
    for name, preset in PRESETS.items():
        parts = [f"{k}: {preset[k]}" for k in ("weighting", "aggregator") if k in preset]
        print(f"  {name:<16} {preset.get('label', name)} = {', '.join(parts)}")
    print("\nDistributions for rlw/rgw (distribution: NAME):")
    for name in DISTRIBUTIONS.names():
        cls = DISTRIBUTIONS.get(name)
        print(f"  {name:<22} {first_line(cls)}  [{params_of(cls)}]")
    print()
    return _cmd_architectures(args)


def summary(doc: str | None, width: int = 110) -> str:
    """A docstring's first paragraph on one line, cut at ``width`` characters."""
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def _cmd_architectures(args: argparse.Namespace) -> int:
    from study import architectures

    print("Architectures (architecture: NAME or {name: NAME, hyperparameter: value}):")
    import yaml

    def scalar(v) -> str:  # as it is written in a spec (true/false, null, 0.9)
        return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()

    for name, doc, hp in architectures.describe_architectures():
        cls = architectures.ARCHITECTURES.get(name)
        print(f"  {name:<14} {doc}")
        if hp:
            print(f"  {'':<14}   hyperparameters: {', '.join(f'{k}: {scalar(v)}' for k, v in hp.items())}")
        kinds = ", ".join(cls.encoder_kinds) if cls.encoder_kinds else "any"
        rep = "yes" if cls.has_shared_representation else "no (parameter-level gradient methods only)"
        print(f"  {'':<14}   encoders: {kinds}; shared representation: {rep}")
    return 0


def _cmd_problems(args: argparse.Namespace) -> int:
    from study.problems import PROBLEMS

    print("Problems (problem: NAME or {name: NAME, root: DATA_DIR, ...}):")
    for name in PROBLEMS.names():
        cls = PROBLEMS.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        kind = "multi-input" if cls.multi_input else "single-input"
        tasks = ", ".join(cls.tasks) if len(cls.tasks) <= 6 else f"{len(cls.tasks)} tasks"
        print(f"  {name:<12} {doc}")
        if tasks:
            print(f"  {'':<12}   {kind}; tasks: {tasks}")
        if params_of(cls, skip=("self",), required=True):
            print(f"  {'':<12}   params: {params_of(cls, skip=('self',), required=True)}")
        if getattr(cls, "defaults", None):
            print(f"  {'':<12}   train defaults: {', '.join(f'{k}={v!r}' for k, v in cls.defaults.items())}")
        print(f"  {'':<12}   resources per trial: {', '.join(f'{k}={v}' for k, v in cls.resources.items())}")
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    try:
        from study import data_check
    except ImportError:
        from study.errors import LitmusError

        raise LitmusError("check-data is not available in this build") from None
    problems = data_check.check_data(args.problem, args.path)
    if problems:
        for line in problems:
            print(f"litmus: error: {line}", file=sys.stderr)
        return 2
    print(data_check.summarize(args.problem, args.path))
    return 0


def _cmd_best(args: argparse.Namespace) -> int:
    from study import best

    return best.run(args.study, seeds=args.seeds, out=args.out, name=args.name, problem=args.problem,
                    architecture=args.architecture, force=args.force)


def _cmd_check_cluster(args: argparse.Namespace) -> int:
    from study import cluster_check

    problems = cluster_check.check_cluster(args.path)
    if problems:
        for line in problems:
            print(f"litmus: error: {line}", file=sys.stderr)
        return 2
    print(cluster_check.summarize_cluster(args.path))
    print("no problems found; start it with: ray up " + args.path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litmus",
        description="Run the random-weighting litmus test for multi-task learning: studies on Ray Tune, "
                    "results in Parquet, a statistics report.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run a study spec on Ray Tune (local or a cluster)",
                       description="Run a study: every (problem, architecture, method, seed) trial of SPEC.")
    p.add_argument("spec", metavar="SPEC", help="YAML study spec, e.g. search_spaces/demo.yaml")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help=f"folder or URI (s3://, gs://) holding studies (default: {DEFAULT_STORAGE})")
    p.add_argument("--name", help="study name (default: the spec's name)")
    p.add_argument("--address", help="join an existing Ray cluster (e.g. auto or ray://host:10001); "
                                     "default: start a local Ray on this machine")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study of the same name")
    p.add_argument("--retry-errored", action="store_true", help="with --resume: restart errored trials")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (on 127.0.0.1 only)")
    p.add_argument("-v", "--verbose", type=int, default=0, choices=[0, 1, 2],
                   help="Ray Tune's own progress output (default 0: one line per finished trial)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("analyze", help="analyze results: Delta_m, tests, ranks, report",
                       description="Analyze a study folder (or a storage folder holding studies).")
    try:
        from analysis import cli as analysis_cli

        analysis_cli.configure_parser(p)
        p.set_defaults(func=analysis_cli.run)
    except ImportError:  # pragma: no cover - analysis package always ships
        p.add_argument("path")
        p.set_defaults(func=lambda a: 2)

    p = sub.add_parser("train", help="train one trial without Ray (debugging)",
                       description="Train one trial of SPEC in this process, printing metrics per epoch.")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--method", help="method label (default: the first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("methods", help="list weighting methods, distributions and architectures")
    p.set_defaults(func=_cmd_methods)
    p = sub.add_parser("architectures", help="list architectures and their hyperparameters")
    p.set_defaults(func=_cmd_architectures)
    p = sub.add_parser("problems", help="list problems and their tasks")
    p.set_defaults(func=_cmd_problems)

    p = sub.add_parser("check-data", help="validate a data folder for a problem",
                       description="Check that PATH holds PROBLEM's data in the expected on-disk format.")
    p.add_argument("problem", metavar="PROBLEM")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=_cmd_check_data)

    p = sub.add_parser("check-cluster", help="check a Ray cluster config offline (no cloud calls)",
                       description="Check a Ray autoscaler config (e.g. cluster.yaml) against Ray's schema and "
                                   "what a study needs, without touching a cloud; run it where you run ray up.")
    p.add_argument("path", metavar="CLUSTER_YAML")
    p.set_defaults(func=_cmd_check_cluster)

    p = sub.add_parser("best", help="a tuned study's best setting per method, as a seed-sweep spec",
                       description="Read a finished tuned study (a spec with tune:), take each method's best "
                                   "trial (highest tune metric at its best validation epoch) and write a grid "
                                   "spec with those settings fixed and seeds 0..N-1.")
    p.add_argument("study", metavar="STUDY_DIR", help="the tuned study's folder, e.g. litmus_results/tune_baselines")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the follow-up, 0..N-1 (default: 3)")
    p.add_argument("--out", help="spec file to write (default: NAME.yaml)")
    p.add_argument("--name", help="name of the follow-up study (default: STUDY_best)")
    p.add_argument("--problem", help="with several problems in the tuned study: the one to follow up")
    p.add_argument("--architecture", help="with several architectures in the tuned study: the one to follow up")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_cmd_best)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `litmus methods | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("litmus: interrupted; resume with --resume", file=sys.stderr)
        return 130
    except Exception as exc:  # user errors carry exit_code; anything else is a bug: show the traceback
        code = getattr(exc, "exit_code", None)
        if code is None:
            raise
        print(f"litmus: error: {exc}", file=sys.stderr)
        return int(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
