"""Write an :class:`~analysis.pipeline.Analysis` as ``report.md``, a self-contained ``report.html``
(figures inlined as base64 PNG, no external resource) and its tables as Parquet and CSV.

The report is built once as a list of blocks (headings, paragraphs, tables, figures) and rendered to
both formats, so Markdown and HTML always say the same thing.
"""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import plots
from analysis.pipeline import Analysis
from analysis.scores import CONVENTION_TAGS, CONVENTIONS, EXCLUDED_METRICS

UP, DOWN = "▲", "▼"


@dataclass
class Block:
    kind: str                         # "h1" | "h2" | "h3" | "p" | "note" | "table" | "figure"
    text: str = ""
    table: pd.DataFrame | None = None
    png: bytes | None = None
    name: str = ""                    # figure file name


# --------------------------------------------------------------------------------------------- format
def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, (float, np.floating)):
        if not np.isfinite(x):
            return "–"
        text = f"{x:.{digits}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    return str(x)


def fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "undefined"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def pm(mean: float, std: float, digits: int = 2) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    if std is None or not np.isfinite(std):
        return f"{fmt(mean, digits)}"
    return f"{fmt(mean, digits)} ± {fmt(std, digits)}"


def metric_digits(values: pd.Series) -> int:
    v = np.nanmax(np.abs(values.to_numpy(dtype=float))) if len(values) else 1.0
    return 4 if v < 1.5 else 2


def marker(verdict: str | None) -> str:
    return {"better than": f" {UP}", "worse than": f" {DOWN}"}.get(verdict or "", "")


# --------------------------------------------------------------------------------------------- blocks
def build(a: Analysis) -> list[Block]:
    o = a.options
    conv = CONVENTIONS[o.convention]
    ref = a.reference
    dref_names = sorted(set(a.delta_reference.values()))
    tag = CONVENTION_TAGS[o.convention]
    # Every table that shows Delta_m names its convention in the column header.
    dm_label = f"Δm (%) vs {'/'.join(dref_names) or '–'} [{tag}]"
    b: list[Block] = [Block("h1", "mtl-litmus report: " + ", ".join(s.name for s in a.studies))]
    test_name = "Wilcoxon signed-rank test" if o.test == "wilcoxon" else "paired t-test"
    test_selected = [p for p in a.problems if a.selected_on.get(p, "val") != "val"]
    on_test = (f" (ON TEST DATA for {', '.join(test_selected)}: no validation split)" if test_selected else "")
    b.append(Block("p", (
        f"Studies: {', '.join(s.name for s in a.studies)}. Problems: {', '.join(a.problems)}. "
        f"Methods: {', '.join(a.methods)}. Trials analysed: {len(a.trials)}. "
        f"Model selection: `{o.select}` on the validation split{on_test}; each trial's test metrics are reported at "
        f"its selected epoch. Litmus reference (verdicts): **{ref or 'none'}**. "
        f"Δm reference: **{', '.join(dref_names) or 'none'}**. Paired {test_name} over matched seeds, "
        f"Holm-corrected across methods, alpha = {o.alpha:g}.")))
    b.append(Block("p", f"Convention: {conv}."))
    if a.notes:
        b.append(Block("h2", "Read this first"))
        for n in a.notes:
            b.append(Block("note", n))

    # --- the litmus verdict
    b.append(Block("h2", f"Litmus verdict: is each method better than {ref or 'random weighting'}?"))
    if ref is None or a.per_problem.empty or "verdict" not in a.per_problem:
        b.append(Block("p", "No litmus reference method in the results: no verdicts."))
    else:
        grid = a.per_problem.pivot_table(index="method", columns="problem", values="verdict", aggfunc="first")
        grid = grid.reindex([m for m in a.methods if m in grid.index])
        ov = a.overall.set_index("method") if len(a.overall) else pd.DataFrame()
        grid["overall"] = [ov["verdict"].get(m, "–") if "verdict" in ov else "–" for m in grid.index]
        grid = grid.fillna("–")
        # each cell reads as a sentence: "better than RLW", "indistinguishable from RLW", "worse than RLW"
        grid = grid.map(lambda v: f"{v} {ref}" if v in ("better than", "worse than", "indistinguishable from") else v)
        table = grid.reset_index().rename(columns={"method": "method"})
        b.append(Block("table", table=table))
        b.append(Block("p", (f"Per problem: {o.test} test of each method's Δm against {ref}'s over matched seeds, "
                             f"Holm-corrected across methods ({o.convention} Δm, {tag}). Overall: the same test over all matched "
                             f"(problem, seed) pairs, Holm-corrected across methods. 'indistinguishable from' "
                             f"means no significant difference at alpha = {o.alpha:g}, not equality.")))

    # --- per problem
    for problem in a.problems:
        b.append(Block("h2", f"Problem: {problem}"))
        split = a.selected_on.get(problem, "val")
        if split != "val":
            b.append(Block("note", f"Epochs of {problem} were selected on TEST data (no validation split)."))
        b.append(Block("table", table=paper_table(a, problem, dm_label)))
        markers = (f"{UP}/{DOWN}: significantly better/worse than {ref} (paired {o.test}, Holm across methods, "
                   f"alpha = {o.alpha:g}). " if ref else "No litmus reference in the results: no significance markers. ")
        b.append(Block("p", (f"Mean ± std over seeds at each trial's selected epoch. {markers}"
                             f"{conv}. Δm reference here: {a.delta_reference.get(problem)}. "
                             "Rank: mean rank over the test metrics (1 = best).")))
        b.append(Block("table", table=test_table(a, problem)))
        b.append(Block("p", ("mean Δm diff: mean paired difference of Δm over matched seeds, signed so that positive = "
                             "method better whatever the convention; "
                             "p (Holm) adjusted across methods; d_z: Cohen's paired effect size (undefined "
                             "when the differences have no variance); P(improve): probability that a run of "
                             "the method beats a run of the reference (Agarwal et al., 2021); min p: the "
                             "smallest p-value the test can give with this many seeds.")))
        ylabel = dm_label
        fig = plots.problem_figure(a.trials, a.per_problem, problem, a.methods, ref, ylabel, o.confidence)
        if fig:
            b.append(Block("figure", (f"{problem}: left, mean Δm with its {o.confidence:.0%} bootstrap CI over "
                                      "seeds; right, Δm of every seed (dots), box = quartiles, ◇ = mean."),
                           png=fig, name=f"problem_{_slug(problem)}.png"))
        fig = plots.pareto_scatter(a.trial_metrics, problem, a.methods, ref)
        if fig:
            b.append(Block("figure", f"{problem}: two-task trade-off at the selected epochs.",
                           png=fig, name=f"pareto_{_slug(problem)}.png"))

    # --- across problems and tasks
    b.append(Block("h2", "Across problems and tasks"))
    b.append(Block("table", table=overall_table(a, dm_label)))
    b.append(Block("p", ("IQM: interquartile mean of Δm over all (problem, seed) runs, CI by bootstrap "
                         "resampling seeds within each problem. Rank (problems): mean rank of mean Δm over "
                         "problems; rank (tasks): mean rank of each task's mean relative improvement over "
                         "(problem, task) blocks. better/indist./worse: number of problems with each verdict.")))
    for key, what in (("problems", "problems"), ("tasks", "tasks")):
        fr = a.friedman.get(key)
        if fr is None:
            continue
        if fr.flag:
            b.append(Block("p", f"Friedman test across {what}: not computed ({fr.flag}; "
                                f"{_count(fr.n_blocks, 'block')}, {_count(fr.k, 'method')})."))
            continue
        reach = "" if fr.min_p < o.alpha else f" (cannot reach alpha: smallest attainable p = {fmt_p(fr.min_p)})"
        b.append(Block("p", f"Friedman test across {what} ({fr.n_blocks} blocks, {fr.k} methods): "
                            f"chi² = {fmt(fr.statistic, 3)}, p = {fmt_p(fr.p)}{reach}."))
        cd = a.cd.get(key)
        if cd:
            fig = plots.cd_diagram(cd["ranks"], cd["cd"], cd["groups"],
                                   f"Critical difference across {what}: Nemenyi, alpha = {o.alpha:g}, "
                                   f"N = {cd['n']}, CD = {cd['cd']:.3f}")
            b.append(Block("figure", (f"Critical-difference diagram across {what}: average ranks (1 = best); "
                                      f"bars join methods whose ranks differ by less than CD = {cd['cd']:.3f} "
                                      f"(q = {cd['q']:.3f})."), png=fig, name=f"cd_{key}.png"))
        nm = a.nemenyi.get(key)
        if nm is not None:
            t = nm.map(lambda v: fmt_p(float(v))).reset_index().rename(columns={"index": "Nemenyi p"})
            b.append(Block("h3", f"Nemenyi post-hoc p-values across {what}"))
            b.append(Block("table", table=t))
    if len(a.pairwise):
        b.append(Block("h3", "Pairwise tests across problems (Holm over all pairs)"))
        pw = a.pairwise.copy()
        b.append(Block("table", table=pd.DataFrame({
            "method A": pw["method_a"], "method B": pw["method_b"], "problems": pw["n"],
            f"mean Δm diff A − B [{o.convention}, + = A better]": pw["mean_diff"].map(fmt), "p": pw["p"].map(fmt_p), "p (Holm)": pw["p_holm"].map(fmt_p),
            "min p": pw["min_p"].map(fmt_p), "note": pw["flag"]})))
    fig = plots.overall_iqm_plot(a.overall, a.methods, ref, dm_label)
    if fig:
        b.append(Block("figure", "IQM of Δm over all runs with stratified bootstrap CI.", png=fig, name="iqm.png"))
    families = _distribution_families(a)
    if families:
        fig = plots.distribution_boxplots(a.trials, families, dm_label)
        if fig:
            b.append(Block("h2", "Distribution study"))
            b.append(Block("figure", "Random-weighting variants by sampling distribution: Δm over seeds.",
                           png=fig, name="distributions.png"))

    # --- cost
    b.append(Block("h2", "Cost beside quality"))
    b.append(Block("table", table=cost_table(a, dm_label)))
    b.append(Block("p", "Median wall time per training epoch and per step over all epochs run; GPU-hours = "
                        "Σ trial wall time × GPUs held; wall-hours = Σ trial wall time (all trials, "
                        "including incomplete ones)."))

    # --- trials
    b.append(Block("h2", "Trials"))
    st = a.status.pivot_table(index=["problem", "method"], columns="status", values="trials", aggfunc="sum",
                              fill_value=0).reset_index()
    st.columns.name = None
    b.append(Block("table", table=st))
    return b


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(s))


def _distribution_families(a: Analysis) -> dict[str, str]:
    """Random-weighting variants (RLW/RGW family) with a readable distribution label, if 2+ exist."""
    if "weighting" not in a.trials:
        return {}
    t = a.trials.drop_duplicates("method")
    fam = {}
    for _, r in t.iterrows():
        m = str(r["method"])
        w = str(r.get("weighting", "")).lower()
        if w in ("rlw", "rgw") or m.lower().startswith(("rlw", "rgw")):
            fam[m] = plots.distribution_label(str(r.get("method_params", "")), m)
    # Different methods may map to the same label: keep them distinct.
    if len(set(fam.values())) < len(fam):
        fam = {m: m for m in fam}
    return fam if len(fam) >= 2 else {}


def paper_table(a: Analysis, problem: str, dm_label: str) -> pd.DataFrame:
    """The paper's table layout: per task metric mean ± std, average metric, Δm, CI, rank, seeds."""
    m = a.metrics[(a.metrics["problem"] == problem) & ~a.metrics["metric"].isin(EXCLUDED_METRICS)]
    per = a.per_problem[a.per_problem["problem"] == problem].set_index("method")
    cells = {(r.method, r.task, r.metric): (r.mean, r.std) for r in m.itertuples(index=False)}
    hib = {(r.task, r.metric): bool(r.higher_is_better) for r in m.itertuples(index=False)}
    digits = {k: metric_digits(g["mean"]) for k, g in m.groupby(["task", "metric"], sort=False)}
    marks = {}
    mt = a.metric_tests
    if len(mt):
        for r in mt[mt["problem"] == problem].itertuples(index=False):
            marks[(r.method, r.task, r.metric)] = marker(r.verdict)
    cols = list(dict.fromkeys(zip(m["task"], m["metric"])))
    ci_head = "95% CI" if a.options.confidence == 0.95 else f"{a.options.confidence:.0%} CI"
    rows = []
    for method in [x for x in a.methods if x in per.index]:
        row = {"method": method + (" (ref)" if method == a.reference else "")}
        for task, metric in cols:
            head = f"{task} {metric} {'↑' if hib[(task, metric)] else '↓'}"
            cell = cells.get((method, task, metric))
            row[head] = "–" if cell is None else (pm(cell[0], cell[1], digits[(task, metric)])
                                                  + marks.get((method, task, metric), ""))
        pr = per.loc[method]
        if np.isfinite(pr.get("avg_metric_mean", math.nan)):
            name = m["metric"].iloc[0]
            head = f"avg {name} {'↑' if bool(m['higher_is_better'].iloc[0]) else '↓'}"
            row[head] = pm(pr["avg_metric_mean"], pr["avg_metric_std"], metric_digits(per["avg_metric_mean"]))
        row[dm_label] = pm(pr["delta_m_mean"], pr["delta_m_std"]) + marker(pr.get("verdict"))
        row[ci_head] = f"[{fmt(pr['delta_m_ci_low'])}, {fmt(pr['delta_m_ci_high'])}]"
        row["rank"] = fmt(pr.get("metric_rank", math.nan))
        row["seeds"] = int(pr["n_seeds"])
        rows.append(row)
    return pd.DataFrame(rows)


def test_table(a: Analysis, problem: str) -> pd.DataFrame:
    t = a.tests[a.tests["problem"] == problem] if len(a.tests) else a.tests
    if t is None or t.empty:
        return pd.DataFrame({"tests": ["no reference with trials in this problem"]})
    order = {m: i for i, m in enumerate(a.methods)}
    t = t.assign(_o=t["method"].map(order)).sort_values(["role", "_o"], ascending=[False, True])
    return pd.DataFrame({
        "method": t["method"], "vs": t["reference"], "seeds": t["n_pairs"],
        f"mean Δm diff [{a.options.convention}, + = method better]": t["mean_diff"].map(fmt),
        "p": t["p"].map(fmt_p), "p (Holm)": t["p_holm"].map(fmt_p), "min p": t["min_p"].map(fmt_p),
        "d_z": t["effect_dz"].map(fmt), "effect": t["effect"], "P(improve)": t["prob_improvement"].map(fmt),
        "verdict": [f"{v} {r}" if v not in ("undefined",) else "undefined" for v, r in zip(t["verdict"], t["reference"])],
        "note": [_flag_note(f, c) for f, c in zip(t["flag"], t["can_reach_alpha"])],
    })


def _flag_note(flag: str, can_reach: bool) -> str:
    if flag:
        return flag
    return "" if can_reach else "cannot reach alpha"


def overall_table(a: Analysis, dm_label: str) -> pd.DataFrame:
    ov = a.overall.set_index("method") if len(a.overall) else pd.DataFrame()
    rows = []
    for m in a.methods:
        if m not in ov.index:
            continue
        r = ov.loc[m]
        rows.append({
            "method": m + (" (ref)" if m == a.reference else ""),
            f"mean {dm_label}": fmt(r.get("delta_m_mean", math.nan)),
            "IQM [95% CI]" if a.options.confidence == 0.95 else "IQM [CI]":
                f"{fmt(r['iqm'])} [{fmt(r['iqm_ci_low'])}, {fmt(r['iqm_ci_high'])}]",
            "rank (problems)": fmt(r.get("avg_rank_problems", math.nan)),
            "rank (tasks)": fmt(r.get("avg_rank_tasks", math.nan)),
            "better/indist./worse": ("–" if m == a.reference or not np.isfinite(r.get("problems_better", math.nan))
                                     else f"{int(r['problems_better'])}/{int(r['problems_indistinguishable'])}/"
                                          f"{int(r['problems_worse'])}"),
            f"p vs {a.reference or 'reference'} (Holm)": "–" if m == a.reference else fmt_p(r.get("p_holm", math.nan)),
            "P(improve)": fmt(r.get("prob_improvement", math.nan)),
            "verdict": r.get("verdict", "–") if isinstance(r.get("verdict", None), str) else "–",
        })
    return pd.DataFrame(rows)


def cost_table(a: Analysis, dm_label: str) -> pd.DataFrame:
    c = a.cost.set_index("method") if len(a.cost) else pd.DataFrame()
    per = a.overall.set_index("method") if len(a.overall) else pd.DataFrame()
    rows = []
    for m in a.methods:
        if m not in c.index:
            continue
        r = c.loc[m]
        rows.append({"method": m, f"mean {dm_label}": fmt(per["delta_m_mean"].get(m, math.nan)) if len(per) else "–",
                     "median s/epoch": fmt(r["median_epoch_s"], 3), "median s/step": fmt(r["median_step_s"], 4),
                     "trials": int(r["trials"]) if np.isfinite(r["trials"]) else 0,
                     "wall-hours": fmt(r["wall_hours"], 3), "GPU-hours": fmt(r["gpu_hours"], 3)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- render
def _md_table(t: pd.DataFrame) -> str:
    cols = [str(c) for c in t.columns]
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in t.iterrows():
        lines.append("| " + " | ".join(esc(v) for v in r.tolist()) + " |")
    return "\n".join(lines)


def to_markdown(blocks: list[Block], figure_dir: str = "figures") -> str:
    out = []
    for bl in blocks:
        if bl.kind == "h1":
            out.append(f"# {bl.text}")
        elif bl.kind == "h2":
            out.append(f"## {bl.text}")
        elif bl.kind == "h3":
            out.append(f"### {bl.text}")
        elif bl.kind == "p":
            out.append(bl.text)
        elif bl.kind == "note":
            out.append(f"> **Note.** {bl.text}")
        elif bl.kind == "table":
            out.append(_md_table(bl.table))
        elif bl.kind == "figure":
            out.append(f"![{bl.text}]({figure_dir}/{bl.name})\n\n*{bl.text}*")
    return "\n\n".join(out) + "\n"


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #444}h2{font-size:1.3em;border-bottom:1px solid #bbb;margin-top:1.8em}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.88em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}tr:nth-child(even){background:#fafafa}
.note{background:#fff6dd;border-left:4px solid #e0a800;padding:0.4em 0.8em;margin:0.5em 0}
figure{margin:1em 0}figcaption{font-size:0.85em;color:#555}img{max-width:100%}
td.better{color:#0a7d20;font-weight:600}td.worse{color:#b00020;font-weight:600}
"""


def _cell_class(v: str) -> str:
    s = str(v)
    if s.startswith("better than") or s.endswith(UP):
        return ' class="better"'
    if s.startswith("worse than") or s.endswith(DOWN):
        return ' class="worse"'
    return ""


def to_html(blocks: list[Block], title: str) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    for bl in blocks:
        if bl.kind in ("h1", "h2", "h3"):
            out.append(f"<{bl.kind}>{html.escape(bl.text)}</{bl.kind}>")
        elif bl.kind == "p":
            out.append(f"<p>{_inline(bl.text)}</p>")
        elif bl.kind == "note":
            out.append(f'<div class="note"><b>Note.</b> {_inline(bl.text)}</div>')
        elif bl.kind == "table":
            t = bl.table
            rows = ["<table><thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in t.columns) + "</tr></thead><tbody>"]
            for _, r in t.iterrows():
                rows.append("<tr>" + "".join(f"<td{_cell_class(v)}>{html.escape(str(v))}</td>" for v in r.tolist()) + "</tr>")
            rows.append("</tbody></table>")
            out.append("".join(rows))
        elif bl.kind == "figure":
            data = base64.b64encode(bl.png).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(bl.text)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{html.escape(bl.text)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escape, then render **bold** and `code` spans."""
    s = html.escape(text)
    parts = s.split("**")
    s = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = s.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


TABLES = ("trials", "trial_metrics", "task_scores", "metrics", "per_problem", "tests", "metric_tests", "overall", "pairwise", "cost",
          "status")


def write(a: Analysis, out_dir: str) -> dict[str, str]:
    """Write report.md, report.html, figures/ and tables/ under ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    fig_dir = os.path.join(out_dir, "figures")
    tab_dir = os.path.join(out_dir, "tables")
    os.makedirs(fig_dir, exist_ok=True)
    os.makedirs(tab_dir, exist_ok=True)
    blocks = build(a)
    for bl in blocks:
        if bl.kind == "figure":
            with open(os.path.join(fig_dir, bl.name), "wb") as f:
                f.write(bl.png)
    title = "mtl-litmus report: " + ", ".join(s.name for s in a.studies)
    md = os.path.join(out_dir, "report.md")
    htm = os.path.join(out_dir, "report.html")
    _atomic_text(md, to_markdown(blocks))
    _atomic_text(htm, to_html(blocks, title))
    for name in TABLES:
        t = getattr(a, name)
        if isinstance(t, pd.DataFrame) and len(t.columns):
            t = t.reset_index(drop=True)
            for c in t.columns:
                if isinstance(t[c].dtype, pd.CategoricalDtype):
                    t[c] = t[c].astype(str)
            t.to_parquet(os.path.join(tab_dir, f"{name}.parquet"), index=False)
            t.to_csv(os.path.join(tab_dir, f"{name}.csv"), index=False)
    if len(a.ranks):
        a.ranks.reset_index().to_csv(os.path.join(tab_dir, "ranks_problems.csv"), index=False)
    if len(a.task_ranks):
        a.task_ranks.reset_index().to_csv(os.path.join(tab_dir, "ranks_tasks.csv"), index=False)
    return {"markdown": md, "html": htm, "tables": tab_dir, "figures": fig_dir}


def _atomic_text(path: str, text: str) -> None:
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
