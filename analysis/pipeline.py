"""From Parquet rows to the tables of the report: read, filter trials, select epochs, score, test, rank.

:func:`analyze` is the one entry point; it returns an :class:`Analysis` holding tidy pandas tables and
the notes the report must show (fallbacks, underpowered tests, selection on test data, ...).

Units of analysis
-----------------
* A *problem* is a problem name, or ``problem/architecture`` when one problem was run with several
  architectures. Blocks for tests over seeds are the seeds of one problem (matched by seed).
* Delta_m of a trial is taken against the Delta_m reference method's mean (over its seeds) of the same
  test metric at its selected epochs, so the reference's own Delta_m averages to 0.
* Litmus verdicts compare each method with the litmus reference (random weighting, RLW by default)
  by a paired test over matched seeds per problem, Holm-corrected across methods; overall by the same
  test over all matched (problem, seed) pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import stats
from analysis.errors import AnalysisError
from analysis.io import StudyRef, plan_by_problem, read_results, read_trials, release_memory, study_labels
from analysis.schema import RESULTS_DIR
from analysis.scores import CONVENTIONS, EXCLUDED_METRICS, delta_m_frame, task_delta_frame
from analysis.select import TRIAL_KEYS, best_epochs, epoch_scores, last_epoch_rows, parse_criterion

COMPLETE = "completed"
TKEY = ["tkey"]
DEFAULT_REFERENCE = "RLW"
DEFAULT_DELTA_REFERENCE = "EW"


@dataclass
class Options:
    """What ``litmus analyze`` was asked for. ``None`` references mean "the default, with fallback"."""

    reference: str | None = None            # litmus reference for verdicts (default RLW)
    delta_reference: str | None = None      # Delta_m reference (default EW)
    select: str = "delta_m"
    alpha: float = 0.05
    include_incomplete: bool = False
    test: str = "wilcoxon"
    convention: str = "per-task"
    problems: Sequence[str] | None = None
    methods: Sequence[str] | None = None
    studies: Sequence[str] | None = None    # study names to keep when PATH holds several
    confidence: float = 0.95
    n_boot: int = 9999
    seed: int = 0

    def validate(self) -> None:
        if not (0 < self.alpha < 1):
            raise AnalysisError(f"--alpha must be in (0, 1), got {self.alpha}")
        if self.test not in stats.TESTS:
            raise AnalysisError(f"--test must be one of {', '.join(stats.TESTS)}, got {self.test!r}")
        if self.convention not in CONVENTIONS:
            raise AnalysisError(f"--convention must be one of {', '.join(CONVENTIONS)}, got {self.convention!r}")
        parse_criterion(self.select)


@dataclass
class Analysis:
    """Everything the report shows; each table is a tidy frame also written as Parquet/CSV."""

    options: Options
    studies: list[StudyRef]
    reference: str | None                    # litmus reference label actually used
    delta_reference: dict[str, str]          # per problem, the Delta_m reference label used
    notes: list[str] = field(default_factory=list)
    status: pd.DataFrame = field(default_factory=pd.DataFrame)        # problem, method, status, trials
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)        # one row per analysed trial
    task_scores: pd.DataFrame = field(default_factory=pd.DataFrame)   # trial x task relative improvement
    trial_metrics: pd.DataFrame = field(default_factory=pd.DataFrame) # trial x task x metric at the selected epoch
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)       # problem, method, task, metric: mean/std/n
    per_problem: pd.DataFrame = field(default_factory=pd.DataFrame)   # problem x method summary and tests
    tests: pd.DataFrame = field(default_factory=pd.DataFrame)         # paired tests vs each reference
    metric_tests: pd.DataFrame = field(default_factory=pd.DataFrame)  # per metric tests vs the litmus reference
    overall: pd.DataFrame = field(default_factory=pd.DataFrame)       # per method, across problems
    ranks: pd.DataFrame = field(default_factory=pd.DataFrame)         # blocks x methods ranks (problems)
    task_ranks: pd.DataFrame = field(default_factory=pd.DataFrame)    # blocks x methods ranks (problem/task)
    friedman: dict = field(default_factory=dict)                      # "problems"/"tasks" -> FriedmanResult
    nemenyi: dict = field(default_factory=dict)                       # same keys -> p-value frames
    cd: dict = field(default_factory=dict)                            # same keys -> (q, CD, groups, ranks)
    pairwise: pd.DataFrame = field(default_factory=pd.DataFrame)
    cost: pd.DataFrame = field(default_factory=pd.DataFrame)
    selected_on: dict[str, str] = field(default_factory=dict)        # problem -> split used for selection

    @property
    def problems(self) -> list[str]:
        return sorted(self.trials["problem"].unique().tolist()) if len(self.trials) else []

    @property
    def methods(self) -> list[str]:
        return method_order(self.trials, self.reference, self.delta_reference) if len(self.trials) else []

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def method_order(trials: pd.DataFrame, reference: str | None, delta_ref: dict[str, str]) -> list[str]:
    """References first (Delta_m reference, then the litmus one), the rest alphabetically."""
    names = sorted(set(trials["method"].astype(str)), key=str.lower)
    first = [m for m in dict.fromkeys(list(delta_ref.values()) + [reference]) if m in names]
    return first + [m for m in names if m not in first]


def _match(label: str, names: Sequence[str]) -> str | None:
    low = {n.lower(): n for n in names}
    return low.get(label.lower())


def resolve_reference(requested: str | None, default: str, names: Sequence[str], what: str, flag: str,
                      fallbacks: Sequence[str], notes: list[str]) -> str | None:
    """The label of a reference method: the requested one (error if absent), else the default, else a
    fallback with a note, else None with a note."""
    names = list(names)
    if requested is not None:
        found = _match(requested, names)
        if found is None:
            raise AnalysisError(f"{flag} {requested!r}: no such method in the results; "
                                f"methods: {', '.join(sorted(names, key=str.lower))}")
        return found
    found = _match(default, names)
    if found is not None:
        return found
    for fb in fallbacks:
        if fb in names:
            notes.append(f"The default {what} {default} is not in the results; using {fb} instead "
                         f"(set {flag} to choose).")
            return fb
    notes.append(f"The default {what} {default} is not in the results and no fallback exists.")
    return None


def select_studies(studies: Sequence[StudyRef], names: Sequence[str] | None) -> list[StudyRef]:
    """The studies named in ``names`` (``--study``), before any of their files is read; all if None."""
    studies = list(studies)
    if names is None:
        return studies
    labels = study_labels(studies)
    have = {s.name for s in studies} | set(labels)
    missing = [n for n in dict.fromkeys(names) if n not in have]
    if missing:
        raise AnalysisError(f"--study {missing[0]!r}: no such study at this path; studies: "
                            f"{', '.join(sorted({s.name for s in studies}))}")
    want = set(names)
    return [s for s, label in zip(studies, labels) if s.name in want or label in want]


# ---------------------------------------------------------------------------------------------- main
def analyze(studies: Sequence[StudyRef], options: Options | None = None) -> Analysis:
    """Read, select, score and test ``studies``; see the module docstring for the units of analysis.

    Memory is bounded by the largest problem: the metric rows are read one problem at a time (filtered
    in the Parquet scan), reduced to each trial's selected epoch and per-epoch timings, and dropped.
    """
    opts = options or Options()
    opts.validate()
    studies = select_studies(studies, opts.studies)
    status = read_trials(studies)
    plan = plan_by_problem(studies, status, problems=opts.problems, methods=opts.methods)
    if not plan.pairs:
        if not any(s.filesystem.get_file_info(f"{s.root}/{RESULTS_DIR}").type.name == "Directory" for s in studies):
            raise AnalysisError(f"no result files under {', '.join(s.root + '/' + RESULTS_DIR for s in studies)}; "
                                "has any trial finished an epoch?")
        raise AnalysisError("no results match the filters; check --problem / --method")
    names = sorted({m for _, m in plan.pairs})
    notes: list[str] = []
    rlw_like = [m for m in names if m.lower().startswith("rlw") or m.lower().startswith("rgw")]
    reference = resolve_reference(opts.reference, DEFAULT_REFERENCE, names, "litmus reference", "--reference",
                                  rlw_like, notes)
    delta_default = resolve_reference(opts.delta_reference, DEFAULT_DELTA_REFERENCE, names, "Delta_m reference",
                                      "--delta-reference", [m for m in names if m.lower() in ("stl", "single-task")]
                                      + sorted(names, key=str.lower), notes)
    a = Analysis(opts, list(studies), reference, {}, notes=notes)

    infos, tests, epochs = [], [], []
    offset = 0
    for problem in sorted(plan.files):
        rows = read_results(studies, problems=[problem], methods=opts.methods, splits=("val", "test"),
                            files=plan.files[problem])
        if rows.empty:
            continue
        rows = _problem_labels(rows)
        # One integer per trial: every large join and filter below works on it, never on strings.
        rows["tkey"] = rows.groupby(TRIAL_KEYS, observed=True, sort=False).ngroup().astype(np.int64) + offset
        offset = int(rows["tkey"].max()) + 1
        info = _trial_table(rows, status, studies)
        infos.append(info)
        epochs.append(rows[["tkey", "epoch", "time_epoch_s", "time_step_s"]].drop_duplicates(["tkey", "epoch"]))
        if not opts.include_incomplete:
            done = info["tkey"][info["status"] == COMPLETE].to_numpy()
            if len(done) < len(info):
                rows = rows[rows["tkey"].isin(done)]
        if len(rows):
            tests.append(_select(a, rows, delta_default))
        del rows
        release_memory()
    if not infos:
        raise AnalysisError("no validation or test rows match the filters; check --problem / --method")
    trial_info = pd.concat(infos, ignore_index=True)

    # Trial status: counted and shown; incomplete ones excluded unless asked.
    a.status = (trial_info.groupby(["problem", "method", "status"], observed=True).size()
                .rename("trials").reset_index())
    incomplete = trial_info["status"] != COMPLETE
    if incomplete.any():
        n_inc = int(incomplete.sum())
        a.note(f"{n_inc} of {len(trial_info)} trials are incomplete (errored, diverged, early-stopped or still "
               f"running); they are {'INCLUDED (--include-incomplete)' if opts.include_incomplete else 'excluded (use --include-incomplete to include them)'}.")
    keep = trial_info if opts.include_incomplete else trial_info[~incomplete]
    if keep.empty:
        raise AnalysisError("every trial is incomplete; rerun with --include-incomplete to analyse them anyway")
    at = pd.concat(tests, ignore_index=True)
    dropped = len(keep) - at["tkey"].nunique()
    if dropped > 0:
        a.note(f"{dropped} trials have no finite selection score at any epoch and are left out.")
    a.trials = _score_trials(a, at, keep)
    a.trial_metrics = _str_frame(at, ["study", "trial_id", "problem", "method", "task", "metric"])[
        ["study", "trial_id", "problem", "method", "seed", "epoch", "task", "metric", "value", "higher_is_better"]]
    a.metrics = _metric_summary(at)
    _per_problem(a, at)
    _across_problems(a)
    a.cost = _cost(pd.concat(epochs, ignore_index=True), trial_info)
    _name_convention(a)
    return a


def _name_convention(a: Analysis) -> None:
    """Every tidy table that carries Delta_m says which convention and which reference it is in."""
    for name in ("trials", "per_problem", "tests", "overall"):
        t = getattr(a, name)
        if len(t.columns):
            t["delta_m_convention"] = a.options.convention
            if "problem" in t.columns:
                t["delta_m_reference"] = t["problem"].astype(str).map(a.delta_reference)


def _select(a: Analysis, rows: pd.DataFrame, delta_default: str | None) -> pd.DataFrame:
    """Select each trial's epoch in ``rows`` (one problem, maybe several architectures) and return the
    test rows at the selected epochs (validation rows where a problem has no test split)."""
    opts = a.options
    out = []
    for problem, prow in rows.groupby("problem", observed=True, sort=True):
        present = _values(prow["method"])
        dref = delta_default if delta_default in present else None
        if dref is None:
            fallback = sorted(present, key=str.lower)[0]
            if opts.delta_reference is not None:
                a.note(f"Problem {problem}: the Delta_m reference {delta_default} has no trials here; "
                       f"using {fallback}.")
            else:
                a.note(f"Problem {problem}: no {delta_default} trials; Delta_m is taken against {fallback}.")
            dref = fallback
        a.delta_reference[str(problem)] = dref
        has_val = (prow["split"] == "val").any()
        split = "val" if has_val else "test"
        a.selected_on[str(problem)] = split
        if not has_val:
            a.note(f"Problem {problem} has no validation split: epochs were SELECTED ON TEST DATA, "
                   "so its test scores are optimistic.")
        sel_rows = prow[prow["split"] == split]
        ref_vals = None
        if parse_criterion(opts.select)[0] == "delta_m":
            ref_rows = last_epoch_rows(sel_rows[(sel_rows["method"] == dref)], TKEY)
            ref_vals = _reference_values(ref_rows)
        best = best_epochs(epoch_scores(sel_rows, opts.select, ref_vals, opts.convention, TKEY), TKEY)
        test = prow[prow["split"] == "test"]
        if test.empty:
            a.note(f"Problem {problem} has no test split; its validation metrics are reported instead.")
            test = prow[prow["split"] == "val"]
        out.append(test.merge(best[TKEY + ["epoch"]], on=TKEY + ["epoch"], how="inner"))
    return pd.concat(out, ignore_index=True)


def _values(col: pd.Series) -> set[str]:
    """The distinct values of a (large, categorical) column as strings, without a per-row pass in Python."""
    return {str(v) for v in col.unique()}


def _problem_labels(rows: pd.DataFrame) -> pd.DataFrame:
    archs = rows.groupby("problem", observed=True)["architecture"].nunique()
    multi = set(archs[archs > 1].index.astype(str))
    if not multi:
        return rows
    label = rows["problem"].astype(str)
    m = label.isin(multi)
    label = label.where(~m, label + "/" + rows["architecture"].astype(str))
    rows = rows.copy()
    rows["problem"] = label.astype("category")
    return rows


def _trial_table(rows: pd.DataFrame, status: pd.DataFrame, studies: Sequence[StudyRef]) -> pd.DataFrame:
    first = ~rows["tkey"].duplicated().to_numpy()
    info = rows.loc[first, ["tkey", "study", "trial_id", "problem", "method", "seed", "weighting", "method_params"]]
    info = info.merge(rows.groupby("tkey")["epoch"].max().rename("epochs_seen").reset_index(), on="tkey")
    for c in ("problem", "method", "weighting", "method_params", "study", "trial_id"):
        info[c] = info[c].astype(str)
    if len(status):
        st = status[["study", "trial_id", "status", "reason", "epochs_done", "epochs_planned", "gpus",
                     "time_total_s"]].copy()
        st["study"] = st["study"].astype(str)
        st["trial_id"] = st["trial_id"].astype(str)
        st["status"] = st["status"].astype(str)
        st = st.drop_duplicates(TRIAL_KEYS, keep="last")
        info = info.merge(st, on=TRIAL_KEYS, how="left")
    else:
        info = info.assign(status=np.nan, reason="", epochs_done=np.nan, epochs_planned=np.nan, gpus=np.nan,
                           time_total_s=np.nan)
    running = {label for s, label in zip(studies, study_labels(studies))
               if str(s.info.get("status", "")).lower() == "running"}
    no_row = info["status"].isna()
    if no_row.any():
        # A trial with results but no status row has not ended yet in a running study; in a finished
        # study its status row was lost, and its rows are taken as they are.
        info.loc[no_row, "status"] = np.where(info.loc[no_row, "study"].isin(running), "running", COMPLETE)
    return info


def _reference_values(ref_rows: pd.DataFrame) -> pd.DataFrame:
    r = ref_rows[~ref_rows["metric"].isin(EXCLUDED_METRICS)]
    out = r.groupby(["problem", "task", "metric"], observed=True)["value"].mean().rename("ref").reset_index()
    for c in ("problem", "task", "metric"):
        out[c] = out[c].astype(str)
    return out


def _str_frame(f: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    f = f.copy()
    for c in cols:
        f[c] = f[c].astype(str)
    return f


def _score_trials(a: Analysis, at: pd.DataFrame, keep: pd.DataFrame) -> pd.DataFrame:
    at = _str_frame(at, ["study", "trial_id", "problem", "task", "metric", "method"])
    refs = []
    for problem, dref in a.delta_reference.items():
        sub = at[(at["problem"] == problem) & (at["method"] == dref)]
        refs.append(_reference_values(sub))
    ref = pd.concat(refs, ignore_index=True) if refs else pd.DataFrame(columns=["problem", "task", "metric", "ref"])
    keys = TRIAL_KEYS + ["problem", "method", "seed", "epoch"]
    dm = delta_m_frame(at, ref, keys, a.options.convention, what="test reference")
    td = task_delta_frame(at, ref, keys, what="test reference")
    a.task_scores = td
    # Average metric for single-type problems (e.g. accuracy on every task), as in the paper.
    q = at[~at["metric"].isin(EXCLUDED_METRICS)]
    kinds = q.groupby("problem")["metric"].nunique()
    single = set(kinds[kinds == 1].index)
    avg = (q[q["problem"].isin(single)].groupby(TRIAL_KEYS)["value"].mean().rename("avg_metric").reset_index())
    out = dm.merge(avg, on=TRIAL_KEYS, how="left")
    info = keep[TRIAL_KEYS + ["status", "weighting", "method_params"]].copy()
    out = out.merge(info, on=TRIAL_KEYS, how="left")
    out["seed"] = out["seed"].astype(int)
    # "score": Delta_m signed so that positive is better whatever the convention; tests and ranks use it.
    out["score"] = out["delta_m"] * (-1.0 if a.options.convention == "all-metrics" else 1.0)
    return out.sort_values(["problem", "method", "seed"]).reset_index(drop=True)


def _metric_summary(at: pd.DataFrame) -> pd.DataFrame:
    at = _str_frame(at, ["problem", "task", "metric", "method"])
    g = at.groupby(["problem", "method", "task", "metric"], sort=False)
    out = g["value"].agg(mean="mean", std="std", n="count").reset_index()
    out = out.merge(g["higher_is_better"].first().reset_index(), on=["problem", "method", "task", "metric"])
    return out


def _by_seed(frame: pd.DataFrame, value: str, keys: list[str]) -> dict:
    """Per group of ``keys``, a seeds x methods table of ``value`` (mean over duplicate seeds)."""
    if frame.empty:
        return {}
    wide = frame.pivot_table(index=keys + ["seed"], columns="method", values=value, aggfunc="mean", observed=True)
    levels = list(range(len(keys)))
    out = {}
    for k, g in wide.groupby(level=levels, sort=True):
        out[k[0] if len(keys) == 1 and isinstance(k, tuple) else k] = g.droplevel(levels)
    return out


def _against(wide: pd.DataFrame, ref: str, test: str, sign: float = 1.0) -> list[tuple[str, stats.PairedResult]]:
    """Each method column of a seeds x methods table tested against the ``ref`` column, seed-matched."""
    cols = [str(c) for c in wide.columns]
    if ref not in cols:
        return []
    arr = sign * wide.to_numpy(dtype=float)
    j = cols.index(ref)
    return [(m, stats.paired_test(arr[:, i], arr[:, j], test)) for i, m in enumerate(cols) if m != ref]


def _per_problem(a: Analysis, at: pd.DataFrame) -> None:
    opts = a.options
    t = a.trials
    rows = []
    for (problem, method), g in t.groupby(["problem", "method"], sort=True):
        v = g["delta_m"].to_numpy(dtype=float)
        lo, hi = stats.bootstrap_ci(v, opts.confidence, opts.n_boot, opts.seed)
        rows.append({"problem": problem, "method": method, "n_seeds": int(np.isfinite(v).sum()),
                     "delta_m_mean": float(np.nanmean(v)) if np.isfinite(v).any() else math.nan,
                     "delta_m_std": float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else math.nan,
                     "delta_m_ci_low": lo, "delta_m_ci_high": hi,
                     "avg_metric_mean": float(g["avg_metric"].mean()) if g["avg_metric"].notna().any() else math.nan,
                     "avg_metric_std": float(g["avg_metric"].std()) if g["avg_metric"].notna().sum() > 1 else math.nan})
    per = pd.DataFrame(rows)
    # Rank of each method within the problem over its test metrics (mean rank over metrics, "MR").
    m = a.metrics[~a.metrics["metric"].isin(EXCLUDED_METRICS)]
    mr = []
    for problem, g in m.groupby("problem"):
        signed = g.assign(s=np.where(g["higher_is_better"], g["mean"], -g["mean"]))
        wide = signed.pivot_table(index=["task", "metric"], columns="method", values="s")
        r = stats.average_ranks(wide, higher_is_better=True)
        mr += [{"problem": problem, "method": k, "metric_rank": float(v)} for k, v in r.items()]
    if mr:
        per = per.merge(pd.DataFrame(mr), on=["problem", "method"], how="left")

    # Paired tests over matched seeds against each reference, Holm-corrected across methods per problem.
    tests = []
    seeds = _by_seed(t, "score", ["problem"])
    runs = {k: g.to_numpy(dtype=float) for k, g in t.groupby(["problem", "method"])["score"]}
    for problem in per["problem"].unique():
        for role, ref in (("litmus", a.reference), ("delta", a.delta_reference.get(problem))):
            if ref is None:
                continue
            results = _against(seeds.get(problem, pd.DataFrame()), ref, opts.test)
            if not results:
                a.note(f"Problem {problem}: the reference {ref} has no trials, so no tests against it.")
                continue
            ys = runs.get((problem, ref), np.empty(0))
            block = pd.DataFrame([
                {"problem": problem, "role": role, "reference": ref, "method": method, "n_pairs": r.n,
                 "mean_diff": r.mean_diff, "statistic": r.statistic, "p": r.p, "min_p": r.min_p,
                 "effect_dz": r.effect, "effect": r.effect_label,
                 "prob_improvement": stats.prob_improvement(runs.get((problem, method), np.empty(0)), ys),
                 "flag": r.flag} for method, r in results])
            block["p_holm"] = stats.holm(block["p"].to_numpy())
            block["verdict"] = [stats.verdict(p, d, opts.alpha) for p, d in zip(block["p_holm"], block["mean_diff"])]
            block["can_reach_alpha"] = block["min_p"] < opts.alpha
            tests.append(block)
    a.tests = pd.concat(tests, ignore_index=True) if tests else pd.DataFrame(
        columns=["problem", "role", "reference", "method", "n_pairs", "mean_diff", "statistic", "p", "min_p",
                 "effect_dz", "effect", "prob_improvement", "flag", "p_holm", "verdict", "can_reach_alpha"])
    if len(a.tests):
        weak = a.tests[~a.tests["can_reach_alpha"] & (a.tests["flag"] == "")]
        for problem, g in weak.groupby("problem"):
            n = int(g["n_pairs"].max())
            a.note(f"Problem {problem}: with {n} matched seeds the {opts.test} test cannot reach alpha = "
                   f"{opts.alpha:g} (smallest attainable p = {g['min_p'].min():.3g}); verdicts there are "
                   f"'indistinguishable' by construction. Run more seeds ({_seeds_needed(opts.test, opts.alpha)}+).")
    lit = a.tests[a.tests["role"] == "litmus"] if len(a.tests) else a.tests
    if len(lit):
        per = per.merge(lit[["problem", "method", "p", "p_holm", "effect_dz", "effect", "prob_improvement",
                             "verdict", "flag", "can_reach_alpha"]], on=["problem", "method"], how="left")
    per.loc[per["method"] == a.reference, "verdict"] = "reference"
    a.per_problem = per
    a.metric_tests = _metric_tests(a, at)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _seeds_needed(test: str, alpha: float) -> int:
    for n in range(2, 100):
        if stats.min_attainable_p(test, n) < alpha:
            return n
    return 100


def _metric_tests(a: Analysis, at: pd.DataFrame) -> pd.DataFrame:
    """Per problem, task metric and method: paired test vs the litmus reference (Holm across methods),
    in the metric's direction; for the significance markers of the paper-style table."""
    if a.reference is None:
        return pd.DataFrame()
    at = _str_frame(at, ["problem", "task", "metric", "method"])
    at = at[~at["metric"].isin(EXCLUDED_METRICS)]
    hib = at.groupby(["problem", "task", "metric"])["higher_is_better"].first().to_dict()
    out = []
    for (problem, task, metric), wide in _by_seed(at, "value", ["problem", "task", "metric"]).items():
        sign = 1.0 if hib[(problem, task, metric)] else -1.0
        results = _against(wide, a.reference, a.options.test, sign)
        if results:
            block = pd.DataFrame([{"problem": problem, "task": task, "metric": metric, "method": m, "p": r.p,
                                   "mean_diff": r.mean_diff, "flag": r.flag} for m, r in results])
            block["p_holm"] = stats.holm(block["p"].to_numpy())
            block["verdict"] = [stats.verdict(p, d, a.options.alpha) for p, d in zip(block["p_holm"], block["mean_diff"])]
            out.append(block)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _across_problems(a: Analysis) -> None:
    opts = a.options
    t = a.trials
    problems = sorted(t["problem"].unique())
    # Overall litmus verdict: paired test over all matched (problem, seed) pairs, Holm across methods.
    overall = []
    if a.reference is not None:
        lit = a.tests[a.tests["role"] == "litmus"] if len(a.tests) else pd.DataFrame(columns=["method", "prob_improvement"])
        poi = lit.groupby("method")["prob_improvement"].mean().to_dict()
        wide = t.groupby(["problem", "seed", "method"])["score"].mean().unstack("method")
        for m in wide.columns:
            if m == a.reference:
                continue
            pair = wide[[m, a.reference]].dropna()
            r = stats.paired_test(pair[m].to_numpy(), pair[a.reference].to_numpy(), opts.test)
            overall.append({"method": m, "n_pairs": r.n, "n_problems": pair.index.get_level_values(0).nunique(),
                            "mean_diff": r.mean_diff, "p": r.p, "min_p": r.min_p, "effect_dz": r.effect,
                            "effect": r.effect_label, "flag": r.flag,
                            # Agarwal et al.: the average over problems of the per-problem probability
                            "prob_improvement": poi.get(m, math.nan)})
    ov = pd.DataFrame(overall, columns=["method", "n_pairs", "n_problems", "mean_diff", "p", "min_p", "effect_dz",
                                        "effect", "flag", "prob_improvement"])
    weak = ov[(ov["flag"] == "") & (ov["min_p"] >= opts.alpha)]
    if len(weak):
        a.note(f"Overall verdicts: with {int(weak['n_pairs'].max())} matched (problem, seed) pairs the {opts.test} "
               f"test cannot reach alpha = {opts.alpha:g} (smallest attainable p = {weak['min_p'].min():.3g}).")
    ov["p_holm"] = stats.holm(ov["p"].to_numpy()) if len(ov) else []
    ov["verdict"] = [stats.verdict(p, d, opts.alpha) for p, d in zip(ov["p_holm"], ov["mean_diff"])]
    per = a.per_problem
    if "verdict" in per:
        counts = per[per["verdict"] != "reference"].groupby("method")["verdict"].value_counts().unstack(fill_value=0)
        for col in ("better than", "indistinguishable from", "worse than", "undefined"):
            if col not in counts:
                counts[col] = 0
        counts = counts[["better than", "indistinguishable from", "worse than", "undefined"]]
        counts.columns = ["problems_better", "problems_indistinguishable", "problems_worse", "problems_undefined"]
        ov = ov.merge(counts.reset_index(), on="method", how="left")
    # IQM of Delta_m over (problem, seed) runs with stratified bootstrap CIs.
    iq = []
    for m, g in t.groupby("method"):
        point, lo, hi = stats.stratified_bootstrap_iqm(g["delta_m"].to_numpy(), g["problem"].to_numpy(),
                                                       opts.confidence, min(opts.n_boot, 2000), opts.seed)
        iq.append({"method": m, "iqm": point, "iqm_ci_low": lo, "iqm_ci_high": hi,
                   "delta_m_mean": float(g["delta_m"].mean())})
    iq = pd.DataFrame(iq)
    ov = iq.merge(ov, on="method", how="left")
    if a.reference is not None:
        ov.loc[ov["method"] == a.reference, "verdict"] = "reference"

    # Ranks across problems (blocks = problems, score = mean Delta_m) and across tasks.
    means = t.groupby(["problem", "method"])["score"].mean().unstack("method")
    ts = a.task_scores.copy()
    ts["block"] = ts["problem"].astype(str) + "/" + ts["task"].astype(str)
    tmeans = ts.groupby(["block", "method"])["task_delta"].mean().unstack("method")
    for key, mat, what in (("problems", means, "problems"), ("tasks", tmeans, "tasks (problem/task)")):
        full = mat.dropna(axis=1, how="any")
        missing = sorted(set(mat.columns) - set(full.columns))
        if missing:
            a.note(f"Ranks across {what} use only methods present in every block; left out: {', '.join(missing)}.")
        ranks = full.rank(axis=1, ascending=False, method="average")
        if key == "problems":
            a.ranks = ranks
        else:
            a.task_ranks = ranks
        fr = stats.friedman(full.to_numpy())
        a.friedman[key] = fr
        avg = ranks.mean(axis=0)
        if fr.flag:
            if not (key == "problems" and len(problems) < 2):   # that case has its own note below
                a.note(f"Friedman test across {what}: not computed ({fr.flag}; have {_n(fr.n_blocks, 'block')}, "
                       f"{_n(fr.k, 'method')}).")
        elif fr.min_p >= opts.alpha:
            a.note(f"Friedman test across {what}: with {_n(fr.n_blocks, 'block')} and {_n(fr.k, 'method')} it cannot reach "
                   f"alpha = {opts.alpha:g} (smallest attainable p = {fr.min_p:.3g}).")
        if fr.n_blocks >= 2 and fr.k >= 3 and not fr.flag:
            a.nemenyi[key] = stats.nemenyi(full.to_numpy(), list(full.columns))
            q, cd = stats.critical_difference(fr.k, fr.n_blocks, opts.alpha)
            a.cd[key] = {"q": q, "cd": cd, "groups": stats.cd_groups(avg.to_dict(), cd), "ranks": avg.to_dict(),
                         "n": fr.n_blocks}
        if key == "problems":
            ov = ov.merge(avg.rename("avg_rank_problems").reset_index(), on="method", how="left")
            if len(full) >= 2 and full.shape[1] >= 2:
                pw = stats.pairwise_wilcoxon(full, opts.test)
                a.pairwise = pw
                if len(pw) and (pw["min_p"] >= opts.alpha).all():
                    a.note(f"Pairwise tests across problems: with {len(full)} problems no pair can reach "
                           f"alpha = {opts.alpha:g} (smallest attainable p = {pw['min_p'].min():.3g}).")
        else:
            ov = ov.merge(avg.rename("avg_rank_tasks").reset_index(), on="method", how="left")
    if len(problems) < 2:
        a.note("Only one problem was analysed: no Friedman test, Nemenyi post-hoc or critical-difference "
               "diagram across problems (they need at least two problems); ranks across tasks are shown instead.")
    a.overall = ov


def _cost(epochs: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    """Median wall time per epoch and per step, total GPU-hours and wall-hours per method, over every
    trial run (incomplete ones included: they cost as much)."""
    ep = epochs.merge(info[["tkey", "method"]], on="tkey")
    med = ep.groupby("method").agg(median_epoch_s=("time_epoch_s", "median"), median_step_s=("time_step_s", "median"))
    # Trials without a status row: their wall time is the sum of epoch times.
    ep_sum = ep.groupby("tkey")["time_epoch_s"].sum().rename("epoch_sum").reset_index()
    inf = info.merge(ep_sum, on="tkey", how="left")
    total = inf["time_total_s"].where(inf["time_total_s"].notna(), inf["epoch_sum"]).fillna(0.0)
    gpus = inf["gpus"].fillna(0.0)
    inf = inf.assign(wall_h=total / 3600.0, gpu_h=total * gpus / 3600.0)
    hours = inf.groupby("method").agg(trials=("trial_id", "count"), wall_hours=("wall_h", "sum"),
                                      gpu_hours=("gpu_h", "sum"))
    return med.join(hours, how="outer").reset_index()
