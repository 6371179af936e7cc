"""``litmus analyze PATH [--out DIR] ...``: the analysis as a command.

The lead's CLI calls :func:`configure_parser` on the ``analyze`` sub-parser and :func:`run` with the
parsed arguments. User errors raise :class:`~analysis.errors.AnalysisError` (``exit_code = 2``).
"""

from __future__ import annotations

import argparse
import os
import sys

from analysis.errors import AnalysisError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``analyze`` arguments (PATH included) to ``parser``."""
    parser.add_argument("path", metavar="PATH",
                        help="a study folder (with study.json) or a storage folder of studies; local or a URI "
                             "such as s3://bucket/studies")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where to write report.md, report.html, figures/ and tables/ (default: PATH/report)")
    parser.add_argument("--reference", metavar="METHOD", default=None,
                        help="litmus reference for the verdicts, a method label (default: RLW)")
    parser.add_argument("--delta-reference", metavar="METHOD", default=None,
                        help="reference method of Delta_m, a method label such as EW or STL (default: EW)")
    parser.add_argument("--select", default="delta_m", metavar="{delta_m,metric:NAME,last}",
                        help="model selection per trial on the validation split: best Delta_m (default), "
                             "best value of a metric (metric:accuracy, metric:TASK/METRIC, metric:loss), or last epoch")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default: 0.05)")
    parser.add_argument("--test", choices=("wilcoxon", "ttest"), default="wilcoxon",
                        help="paired test over matched seeds (default: wilcoxon signed-rank)")
    parser.add_argument("--convention", choices=("per-task", "all-metrics"), default="per-task",
                        help="Delta_m convention: per-task averaging, positive = better (default), or the flat "
                             "mean over all metrics, positive = worse")
    parser.add_argument("--include-incomplete", action="store_true",
                        help="include errored, diverged, early-stopped and running trials (at their best epoch so far)")
    parser.add_argument("--problem", dest="problems", action="append", metavar="NAME",
                        help="analyse only this problem (repeatable)")
    parser.add_argument("--study", dest="studies", action="append", metavar="NAME",
                        help="when PATH holds several studies, analyse only this one (repeatable; default: all)")
    parser.add_argument("--method", dest="methods", action="append", metavar="LABEL",
                        help="analyse only this method label (repeatable)")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default: 0.95)")
    parser.add_argument("--bootstrap", type=int, default=9999, metavar="N", help="bootstrap resamples (default: 9999)")


def options_from_args(args: argparse.Namespace):
    from analysis.pipeline import Options

    if not (0 < args.confidence < 1):
        raise AnalysisError(f"--confidence must be in (0, 1), got {args.confidence}")
    if args.bootstrap < 100:
        raise AnalysisError(f"--bootstrap must be at least 100, got {args.bootstrap}")
    return Options(reference=args.reference, delta_reference=args.delta_reference, select=args.select,
                   alpha=args.alpha, include_incomplete=args.include_incomplete, test=args.test,
                   convention=args.convention, problems=args.problems, methods=args.methods,
                   studies=getattr(args, "studies", None),
                   confidence=args.confidence, n_boot=args.bootstrap)


def default_out(path: str) -> str:
    if "://" in path:
        raise AnalysisError("--out DIR is required when PATH is a URI (the report is written locally)")
    return os.path.join(path, "report")


def run(args: argparse.Namespace) -> int:
    """Analyse, write the report, print where it is; return the exit code (0)."""
    from analysis import report
    from analysis.io import find_studies
    from analysis.pipeline import analyze

    options = options_from_args(args)
    studies = find_studies(args.path)
    result = analyze(studies, options)
    out = args.out or default_out(args.path)
    paths = report.write(result, out)
    print(f"report: {paths['html']}")
    print(f"        {paths['markdown']}")
    print(f"tables: {paths['tables']}")
    for n in result.notes:
        print(f"note: {n}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m analysis.cli``), mirroring ``litmus analyze``."""
    parser = argparse.ArgumentParser(prog="litmus analyze", description="Analyse a study's results.")
    configure_parser(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except Exception as e:  # noqa: BLE001 - user errors carry exit_code
        code = getattr(e, "exit_code", None)
        if code is None:
            raise
        print(f"litmus: error: {e}", file=sys.stderr)
        return int(code)


if __name__ == "__main__":
    sys.exit(main())
