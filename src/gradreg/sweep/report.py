"""Reports rebuilt from the store alone: a Markdown table in the paper's layout with the
paper's numbers beside ours, a CSV, significance tests, smoothness numbers and a PNG per
figure.

Tuning rule (section 6.1): per cell, the candidate lambda with the best mean dev score over
the seeds wins (accuracy: highest; MSE: lowest); its test score is reported as mean (std),
std with ddof=1, over the seeds. Significance: Welch's t-test of each cell against its row's
baseline cell (or the experiment's explicit pairs), Bonferroni-corrected over the table's
comparisons; ``*`` marks p_adj < 0.05. Each cell against the paper's number, and the rule that
gives its verdict (*consistent*, *differs*, or *too few seeds to judge*): ``gradreg.sweep.agreement``.

A report states only what it measured: the "chosen on the dev set" legend appears only where a
cell had several candidates, the significance legend only where comparisons exist, MSE is in
units of 1e-5 (the paper's Table 7) everywhere, and the run count and training time cover the
runs of this plan alone. Reports of different profiles go to different files
(``NAME.PROFILE.md``, see ``report_stem``). A report with cells too thin to judge says so, and
why, under its profile line.

The Markdown is one function per section (``header_section`` ... ``tuning_section``), joined by
``render_markdown``; plans are ``ReportPlan`` objects (their stored dict form is accepted too).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .. import stats
from ..atomic import write_text_atomic
from ..paper.numbers import TABLES
from ..paper.plan import PlanCell, ReportPlan
from . import robust
from .agreement import ALPHA, DIFFERS, RULE, TOO_FEW, Agreement, paper_agreement
from .figures import draw_figures, has_figure
from .store import Store
from .units import metric_scale

__all__ = [
    "ALPHA",
    "CellSummary",
    "Comparison",
    "ReportPlan",
    "agreement_section",
    "build_report",
    "cells_section",
    "finding_section",
    "header_section",
    "legend_section",
    "mean_std_text",
    "paper_agreement",
    "render_csv",
    "render_markdown",
    "report_paths",
    "report_stem",
    "significance",
    "significance_section",
    "smoothness_section",
    "summarize_cell",
    "tuning_section",
    "write_report",
]


@dataclass
class CellSummary:
    row: str
    col: str
    x: float | None
    lam: float | None  # the chosen candidate's lambda
    n: int
    test: list  # test scores of the chosen candidate, one per seed
    dev_mean: float
    candidates: list  # [{"lambda", "n", "dev_mean", "test_mean"}, ...]
    grad_norms: dict
    weight_norm_sq: float
    train_loss: float
    curve: list  # mean over seeds: [{"step", "dev", "test", "train_loss"}]
    fit: list | None
    errors: int = 0
    p_adj: float | None = None
    significant: bool = False
    compared_to: str | None = None
    runs: list = field(default_factory=list)

    @property
    def mean(self) -> float:
        return sum(self.test) / len(self.test) if self.test else math.nan

    @property
    def std(self) -> float:
        return stats.mean_std(self.test)[1] if len(self.test) > 1 else math.nan


def _mean(values) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else math.nan


def summarize_cell(cell: PlanCell | Mapping[str, Any], rows: Mapping[str, dict], metric: str) -> CellSummary:
    """Pick the candidate with the best mean dev score and summarize it.

    Args:
        cell: The plan's cell (or its stored dict form).
        rows: Stored runs by run key; runs missing from it are not run yet.
        metric: ``"accuracy"`` (the highest dev mean wins) or ``"mse"`` (the lowest).

    Returns:
        The cell's summary; its ``n`` counts the chosen candidate's runs that finished.
    """
    cell = PlanCell.of(cell)
    better = max if metric == "accuracy" else min
    cands: list[dict[str, Any]] = []
    errors = 0
    for cand in cell.candidates:
        got = [rows[k] for k in cand.runs if k in rows]
        ok = [r for r in got if r.get("error") is None]
        errors += len(got) - len(ok)
        cands.append(
            {
                "lambda": cand.lam,
                "runs": ok,
                "n": len(ok),
                "dev_mean": _mean(r["metrics"]["dev"] for r in ok),
                "test_mean": _mean(r["metrics"]["test"] for r in ok),
            }
        )
    scored = [c for c in cands if c["n"] > 0 and not math.isnan(c["dev_mean"])]
    best = (
        better(scored, key=lambda c: c["dev_mean"])
        if scored
        else (cands[0] if cands else {"runs": [], "lambda": None, "dev_mean": math.nan})
    )
    runs = best["runs"]
    curve = []
    if runs:
        for i, point in enumerate(runs[0]["curve"]):
            pts = [r["curve"][i] for r in runs if i < len(r["curve"])]
            curve.append(
                {"step": point["step"], **{k: _mean(p[k] for p in pts) for k in ("dev", "test", "train_loss")}}
            )
    keys = ("train", "test", "off_manifold")
    return CellSummary(
        row=cell.row,
        col=cell.col,
        x=cell.x,
        lam=best["lambda"],
        n=len(runs),
        test=[r["metrics"]["test"] for r in runs],
        dev_mean=best["dev_mean"],
        candidates=[{k: c[k] for k in ("lambda", "n", "dev_mean", "test_mean")} for c in cands],
        grad_norms={k: _mean(r["metrics"].get("grad_norms", {}).get(k) for r in runs) for k in keys},
        weight_norm_sq=_mean(r["metrics"]["weight_norm_sq"] for r in runs),
        train_loss=_mean(r["metrics"]["train_loss"] for r in runs),
        curve=curve,
        fit=runs[0]["metrics"].get("fit") if runs else None,
        errors=errors,
        runs=runs,
    )


class Comparison(NamedTuple):
    """One within-table test: cell ``a`` against cell ``b`` (each ``(row, col)``), Welch's t-test,
    Bonferroni over the table's comparisons. NaN statistics where a side has fewer than 2 seeds."""

    a: tuple[str, str]
    b: tuple[str, str]
    t: float
    df: float
    p: float
    p_adj: float
    significant: bool


def significance(summaries: Sequence[CellSummary], plan: ReportPlan | Mapping[str, Any]) -> list[Comparison]:
    """Welch tests of each cell against its row's baseline cell, or of the plan's explicit
    pairs; Bonferroni over the table. Sets each tested cell's ``p_adj``, ``significant`` and
    ``compared_to``.

    Args:
        summaries: The report's cells.
        plan: The plan (or its stored dict form): its ``comparisons``, else its ``baseline_col``.

    Returns:
        One ``Comparison`` per pair, in the plan's order.
    """
    plan = ReportPlan.of(plan)
    by = {(s.row, s.col): s for s in summaries}
    pairs: list[tuple[tuple[str, str], tuple[str, str]]] = list(plan.comparisons)
    base = plan.baseline_col
    if not pairs and base:
        pairs = [((s.row, s.col), (s.row, base)) for s in summaries if s.col != base and (s.row, base) in by]
    tests = []
    for a, b in pairs:
        sa, sb = by.get(a), by.get(b)
        if sa is None or sb is None or len(sa.test) < 2 or len(sb.test) < 2:
            tests.append((a, b, math.nan, math.nan, math.nan))
            continue
        t, df, p = stats.welch_t_test(sa.test, sb.test)
        tests.append((a, b, t, df, p))
    m = len(tests)
    out = []
    for a, b, t, df, p in tests:
        p_adj = stats.adjusted(p, m) if not math.isnan(p) else math.nan
        sig = (not math.isnan(p_adj)) and p_adj < ALPHA
        out.append(Comparison(a, b, t, df, p, p_adj, sig))
        sa = by.get(a)
        if sa is not None:
            sa.p_adj, sa.significant, sa.compared_to = p_adj, sig, " / ".join(b)
    return out


# --------------------------------------------------------------------------- rendering


def mean_std_text(mean: float | None, std: float | None, digits: int = 2) -> str:
    """``"mean (std)"`` as the tables print it.

    Args:
        mean: The mean (None or NaN: no value).
        std: The std (None or NaN: left out, as for one seed or a paper cell without one).
        digits: Decimals.

    Returns:
        The text; "–" without a mean.
    """
    if mean is None or math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if std is None or math.isnan(std) else f" ({std:.{digits}f})")


def _p(value: float) -> str:
    """A p-value to three significant digits; "–" where there was no test."""
    return "–" if math.isnan(value) else f"{value:.3g}"


def _hardware(rows: list, planned: int) -> str:
    """One line: where and with what the runs ran, how many, and their summed training time.
    ``rows`` are the stored runs this table uses, of ``planned``."""
    devices = sorted({r.get("device") or "?" for r in rows})
    torches = sorted({r.get("torch_version") or "?" for r in rows})
    versions = sorted({r.get("code_version") or "?" for r in rows})
    wall = sum(r.get("wall_time_s") or 0.0 for r in rows)
    diverged = sum(r.get("error") is not None for r in rows)
    count = f"{len(rows)} runs" if len(rows) == planned else f"{len(rows)} of {planned} planned runs stored"
    return (
        f"hardware: {', '.join(devices)}; torch {', '.join(torches)}; gradreg {', '.join(versions)}; "
        f"{count} behind this table ({diverged} diverged); training time {wall:.{1 if wall < 100 else 0}f} s, "
        f"summed over these runs (each run's share of its ensemble's training loop; loops that ran side by side "
        f"all count; data loading and final evaluation excluded), so not the wall time of a command"
    )


def render_markdown(
    plan: ReportPlan | Mapping[str, Any], summaries: Sequence[CellSummary], tests: Sequence[Comparison], rows: list
) -> str:
    """The report in Markdown: its sections in order, each from its own function.

    Args:
        plan: The plan (or its stored dict form).
        summaries: Its cells, from ``summarize_cell``.
        tests: The within-table comparisons, from ``significance``.
        rows: The stored runs of the plan's cells (every candidate and seed).

    Returns:
        The Markdown text.
    """
    plan = ReportPlan.of(plan)
    scale, unit = metric_scale(plan.to_dict())
    table = TABLES.get(plan.paper_table or "")
    agreement = paper_agreement(summaries, table, scale)
    sections = [
        header_section(plan, rows, agreement),
        legend_section(plan, summaries, tests, table is not None, unit),
        cells_section(plan, summaries, table, scale),
        agreement_section(plan, summaries, agreement, scale),
        robust.section(list(summaries), plan.baseline_col),
        significance_section(summaries, tests),
        finding_section(plan, summaries, scale),
        smoothness_section(summaries),
        tuning_section(summaries, scale),
    ]
    return "\n".join(line for section in sections for line in section)


def header_section(plan: ReportPlan, rows: list, agreement: Sequence[Agreement]) -> list[str]:
    """Title, profile, the verdict rule where some cell is too thin to judge, the command, the
    hardware line and the plan's description.

    Args:
        plan: The plan.
        rows: The stored runs of the plan's cells.
        agreement: The cells against the paper (``paper_agreement``).

    Returns:
        The section's lines, ending with a blank one.
    """
    lines = [f"# {plan.name}: {plan.title}", ""]
    if plan.profile:
        note = plan.profile_note
        lines += [f"profile: {plan.profile}" + (f" ({note})" if note else ""), ""]
    unjudged = sum(1 for r in agreement if r.verdict == TOO_FEW)
    if unjudged:
        lines += [
            f"verdicts: {unjudged} of {len(agreement)} cells compared with the paper read *{TOO_FEW}*. {RULE}",
            "",
        ]
    if plan.command:
        lines += [f"made by: `{plan.command}`", ""]
    lines += [_hardware(rows, len(plan.run_keys())), ""]
    if plan.description:
        lines += [plan.description, ""]
    return lines


def legend_section(
    plan: ReportPlan, summaries: Sequence[CellSummary], tests: Sequence[Comparison], paper: bool, unit: str
) -> list[str]:
    """What a cell of the table shows; each clause only where the report has what it explains.

    Args:
        plan: The plan.
        summaries: Its cells.
        tests: The within-table comparisons.
        paper: Whether the paper prints a table to compare with.
        unit: The metric's display unit (``metric_scale``).

    Returns:
        The legend line and a blank one.
    """
    metric = "test accuracy (%)" if plan.metric == "accuracy" else f"test MSE ({unit})"
    legend = "Each cell: ours, mean (std) over n seeds"
    if paper:
        legend += " · the paper's number · difference"
    legend += f". Metric: {metric}."
    if any(len(s.candidates) > 1 for s in summaries):
        legend += " Where a cell shows λ, that λ was chosen on the dev set among the cell's candidates (see Tuning)."
    if tests:
        legend += f" `*`: significant vs. the compared cell after Bonferroni (alpha {ALPHA})."
    return [legend, ""]


def cells_section(plan: ReportPlan, summaries: Sequence[CellSummary], table, scale: float) -> list[str]:
    """The table in the paper's layout: ours as mean (std), n, the chosen λ, and the paper's
    number with the difference where the paper prints one.

    Args:
        plan: The plan.
        summaries: Its cells.
        table: The paper's table, or None.
        scale: Natural units to display units.

    Returns:
        The table's lines and a blank one.
    """
    row_labels = list(dict.fromkeys(s.row for s in summaries))
    col_labels = list(dict.fromkeys(s.col for s in summaries))
    by = {(s.row, s.col): s for s in summaries}
    lines = ["| | " + " | ".join(col_labels) + " |", "|---" * (len(col_labels) + 1) + "|"]
    for r in row_labels:
        cells = []
        for c in col_labels:
            s = by.get((r, c))
            if s is None:
                cells.append("")
                continue
            paper = table.cells.get((r, c)) if table is not None else None
            if s.n == 0:
                lam = "" if s.lam is None else f" λ={s.lam:g}"
                cells.append(
                    f"not run yet{lam}" + (f" · paper {mean_std_text(paper.mean, paper.std)}" if paper else "")
                )
                continue
            text = f"{mean_std_text(s.mean * scale, s.std * scale)}{' *' if s.significant else ''} n={s.n}"
            if s.lam is not None and (len(s.candidates) > 1 or (plan.profile == "published" and c != f"{s.lam:g}")):
                text += f" λ={s.lam:g}"
            if paper is not None:
                text += f" · paper {mean_std_text(paper.mean, paper.std)} · Δ {s.mean * scale - paper.mean:+.2f}"
            if s.errors:
                text += f" · {s.errors} diverged"
            cells.append(text)
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines + [""]


def agreement_section(
    plan: ReportPlan, summaries: Sequence[CellSummary], rows: Sequence[Agreement], scale: float
) -> list[str]:
    """Each cell against the paper's number with its verdict, then the words on the cells that
    differ (``gradreg.paper.explanations``).

    Args:
        plan: The plan.
        summaries: Its cells.
        rows: The cells against the paper (``paper_agreement``).
        scale: Natural units to display units.

    Returns:
        The section's lines; none without a paper table or cells with runs.
    """
    if not rows:
        return []
    m = rows[0].m
    lines = [
        "## Agreement with the paper",
        "",
        f"Each cell against the paper's: Welch's t-test from the paper's summary (mean, std, n = 10) where it "
        f"prints a std, else a one-sample t-test of our seeds against its single number; Bonferroni over the "
        f"{m} cells (alpha {ALPHA}"
        + (f"; {len(rows)} of them have runs yet" if len(rows) < m else "")
        + f"). *differs*: the difference is larger than both spreads explain. {RULE}",
        "",
        "| cell | ours | paper | test | p | p adjusted | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours, paper = mean_std_text(r.ours, r.ours_std), mean_std_text(r.paper, r.paper_std)
        lines.append(f"| {r.cell} | {ours} n={r.n} | {paper} | {r.test} | {_p(r.p)} | {_p(r.p_adj)} | {r.verdict} |")
    lines.append("")
    differs = [r for r in rows if r.verdict == DIFFERS]
    if differs:
        from ..paper.explanations import explain

        lines += ["## Where we differ, and why", "", explain(plan.name, list(summaries), differs, scale), ""]
    return lines


def significance_section(summaries: Sequence[CellSummary], tests: Sequence[Comparison]) -> list[str]:
    """The within-table Welch tests; a comparison whose cells have no runs yet is counted, not printed.

    Args:
        summaries: The report's cells.
        tests: The comparisons (``significance``).

    Returns:
        The section's lines; none without comparisons.
    """
    if not tests:
        return []
    by = {(s.row, s.col): s for s in summaries}

    def unrun(cell: tuple[str, str]) -> bool:
        s = by.get(cell)
        return s is not None and s.n == 0

    lines = [
        "## Significance (Welch's t-test, Bonferroni)",
        "",
        "| cell | vs. | t | df | p | p adjusted | |",
        "|---|---|---|---|---|---|---|",
    ]
    waiting = [x for x in tests if unrun(x.a) or unrun(x.b)]
    for x in tests:
        if unrun(x.a) or unrun(x.b):
            continue
        lines.append(
            f"| {' / '.join(x.a)} | {' / '.join(x.b)} | {x.t:.2f} | {x.df:.1f} | {x.p:.3g} | {x.p_adj:.3g} "
            f"| {'*' if x.significant else ''} |"
        )
    if waiting:
        lines += ["", f"{len(waiting)} comparison(s) wait for runs not stored yet."]
    return lines + [""]


def finding_section(plan: ReportPlan, summaries: Sequence[CellSummary], scale: float) -> list[str]:
    """What the comparisons show (``gradreg.paper.explanations.finding``): for a figure, the
    paper's sentences about it, checked; beyond the paper, each column against the baseline.

    Args:
        plan: The plan.
        summaries: Its cells.
        scale: Natural units to display units.

    Returns:
        The section's lines; none where the experiment has no such words.
    """
    from ..paper.explanations import finding

    words = finding(plan.name, list(summaries), scale, plan.baseline_col)
    if not words:
        return []
    heading = "The paper's claims about this figure, checked" if plan.kind == "figure" else "What the comparisons show"
    return [f"## {heading}", "", words, ""]


def smoothness_section(summaries: Sequence[CellSummary]) -> list[str]:
    """Mean ||J_g(x)||_F of each cell's models at training, test and off-manifold points.

    Args:
        summaries: The report's cells; those without runs are left out.

    Returns:
        The section's lines.
    """
    lines = [
        "## Global smoothness: mean ||J_g(x)||_F of the models behind each cell",
        "",
        "At training points, test points, and off-manifold points (random interpolations between two test inputs).",
        "",
        "| cell | λ | train | test | off-manifold | off/train |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        if s.n == 0:
            continue
        g = s.grad_norms
        ratio = g["off_manifold"] / g["train"] if g.get("train") else math.nan
        lam = "–" if s.lam is None else f"{s.lam:g}"
        lines.append(
            f"| {s.row} / {s.col} | {lam} | {g['train']:.4g} | {g['test']:.4g} | {g['off_manifold']:.4g} "
            f"| {ratio:.2f} |"
        )
    return lines + [""]


def tuning_section(summaries: Sequence[CellSummary], scale: float) -> list[str]:
    """The mean dev and test score of every candidate of each tuned cell.

    Args:
        summaries: The report's cells.
        scale: Natural units to display units.

    Returns:
        The section's lines; none where no cell had several candidates.
    """
    tuned = [s for s in summaries if len(s.candidates) > 1]
    if not tuned:
        return []
    lines = [
        "## Tuning: mean dev score of every candidate",
        "",
        "| cell | λ | n | dev | test |",
        "|---|---|---|---|---|",
    ]
    for s in tuned:
        for c in s.candidates:
            mark = " (chosen)" if c["lambda"] == s.lam else ""
            lines.append(
                f"| {s.row} / {s.col} | {c['lambda']:g}{mark} | {c['n']} | {c['dev_mean'] * scale:.3f} "
                f"| {c['test_mean'] * scale:.3f} |"
            )
    return lines + [""]


def render_csv(plan: ReportPlan | Mapping[str, Any], summaries: Sequence[CellSummary]) -> str:
    """One CSV line per cell: ours in display units, the paper's number, the significance of the
    within-table comparison, the smoothness probes and the unit.

    Args:
        plan: The plan (or its stored dict form).
        summaries: Its cells.

    Returns:
        The CSV text, with a header line.
    """
    plan = ReportPlan.of(plan)
    scale, label = metric_scale(plan.to_dict())
    unit = label.lstrip("×")  # "%" or "1e-5", as in gradreg.paper.numbers
    table = TABLES.get(plan.paper_table or "")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "experiment",
            "row",
            "col",
            "x",
            "lambda",
            "n",
            "test_mean",
            "test_std",
            "dev_mean",
            "paper_mean",
            "paper_std",
            "diff",
            "p_adjusted",
            "significant",
            "grad_norm_train",
            "grad_norm_test",
            "grad_norm_off_manifold",
            "weight_norm_sq",
            "train_loss",
            "diverged",
            "unit",
        ]
    )
    for s in summaries:
        paper = table.cells.get((s.row, s.col)) if table is not None else None
        w.writerow(
            [
                plan.name,
                s.row,
                s.col,
                s.x,
                s.lam,
                s.n,
                s.mean * scale,
                s.std * scale,
                s.dev_mean * scale,
                None if paper is None else paper.mean,
                None if paper is None else paper.std,
                None if paper is None else s.mean * scale - paper.mean,
                s.p_adj,
                s.significant,
                s.grad_norms["train"],
                s.grad_norms["test"],
                s.grad_norms["off_manifold"],
                s.weight_norm_sq,
                s.train_loss,
                s.errors,
                unit,
            ]
        )
    return buf.getvalue()


def report_stem(name: str, profile: str | None) -> str:
    """File names of a report: ``NAME.PROFILE`` (``table1.quick``), so reports of different
    profiles never overwrite each other; ``NAME`` for a plan stored without a profile."""
    return f"{name}.{profile}" if profile else name


def report_paths(name: str, profile: str | None, out_dir) -> list[Path]:
    """The files ``write_report`` writes for ``name`` and ``profile``: ``.md``, ``.csv``
    and, for experiments with a figure, ``.png``."""
    stem = Path(out_dir) / report_stem(name, profile)
    suffixes = (".md", ".csv") + ((".png",) if has_figure(name) else ())
    return [stem.with_name(stem.name + s) for s in suffixes]


def build_report(store_path, name: str, profile: str | None = None) -> dict:
    """Everything a report holds, from the store alone.

    Args:
        store_path: The SQLite store.
        name: The experiment.
        profile: The plan of that profile (None: the plan stored last).

    Returns:
        ``{"plan": ReportPlan, "summaries", "tests", "agreement", "markdown", "csv"}``.

    Raises:
        ValueError: The store has no plan for ``name`` (of ``profile``).
    """
    with Store(store_path) as store:
        stored_plan = store.plan(name, profile)
        if stored_plan is None:
            stored = store.profiles(name)
            if profile is not None and stored:
                raise ValueError(
                    f"the store {store_path} has no plan for {name!r} with profile {profile!r} "
                    f"(it has: {', '.join(stored)}); run `gradreg run {name} --profile {profile}` first"
                )
            raise ValueError(f"the store {store_path} has no plan for {name!r}; run `gradreg run {name}` first")
        plan = ReportPlan.of(stored_plan)
        used = set(plan.run_keys())
        rows = [r for r in store.rows(name) if r["run_key"] in used]
    by_key = {r["run_key"]: r for r in rows}
    summaries = [summarize_cell(c, by_key, plan.metric) for c in plan.cells]
    tests = significance(summaries, plan)
    scale, _ = metric_scale(plan.to_dict())
    return {
        "plan": plan,
        "summaries": summaries,
        "tests": tests,
        "agreement": paper_agreement(summaries, TABLES.get(plan.paper_table or ""), scale),
        "markdown": render_markdown(plan, summaries, tests, rows),
        "csv": render_csv(plan, summaries),
    }


def write_report(store_path, name: str, out_dir, profile: str | None = None) -> list[Path]:
    """Write ``NAME.PROFILE.md``, ``.csv`` and the figure (``.png``) into ``out_dir``.

    Args:
        store_path: The SQLite store.
        name: The experiment.
        out_dir: Where the files go (see ``report_stem`` for their names).
        profile: As in ``build_report``.

    Returns:
        The paths written.
    """
    out_dir = Path(out_dir)
    rep = build_report(store_path, name, profile)
    stem = report_stem(name, rep["plan"].profile)
    paths = []
    for suffix, text in ((".md", rep["markdown"]), (".csv", rep["csv"])):
        p = out_dir / f"{stem}{suffix}"
        write_text_atomic(p, text)
        paths.append(p)
    paths += draw_figures(rep["plan"].to_dict(), rep["summaries"], out_dir, stem)
    return paths
