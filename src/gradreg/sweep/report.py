"""Reports rebuilt from the store alone: a Markdown table in the paper's layout with the
paper's numbers beside ours, a CSV, significance tests, smoothness numbers and a PNG per
figure.

Tuning rule (section 6.1): per cell, the candidate lambda with the best mean dev score over
the seeds wins (accuracy: highest; MSE: lowest); its test score is reported as mean (std),
std with ddof=1, over the seeds. Significance: Welch's t-test of each cell against its row's
baseline cell (or the experiment's explicit pairs), Bonferroni-corrected over the table's
comparisons; ``*`` marks p_adj < 0.05.

A report states only what it measured: the "chosen on the dev set" legend appears only where a
cell had several candidates, the significance legend only where comparisons exist, MSE is in
units of 1e-5 (the paper's Table 7) everywhere, and the run count and training time cover the
runs of this plan alone. Reports of different profiles go to different files
(``NAME.PROFILE.md``, see :func:`report_stem`).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import stats
from ..atomic import write_text_atomic
from ..paper.numbers import TABLES
from . import robust
from .figures import draw_figures, has_figure
from .store import Store
from .units import metric_scale

ALPHA = 0.05


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


def summarize_cell(cell: dict, rows: dict, metric: str) -> CellSummary:
    """Pick the candidate with the best mean dev score; summarize it."""
    better = max if metric == "accuracy" else min
    cands, errors = [], 0
    for cand in cell["candidates"]:
        got = [rows[k] for k in cand["runs"] if k in rows]
        ok = [r for r in got if r.get("error") is None]
        errors += len(got) - len(ok)
        cands.append(
            {
                "lambda": cand["lambda"],
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
        row=cell["row"],
        col=cell["col"],
        x=cell.get("x"),
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


def significance(summaries: list, plan: dict) -> list:
    """Welch tests (baseline column or explicit pairs), Bonferroni over the table. Returns
    [(label_a, label_b, t, df, p, p_adj, significant)]."""
    by = {(s.row, s.col): s for s in summaries}
    pairs = [tuple(map(tuple, c)) for c in plan.get("comparisons", [])]
    base = plan.get("baseline_col")
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
        out.append((a, b, t, df, p, p_adj, sig))
        sa = by.get(a)
        if sa is not None:
            sa.p_adj, sa.significant, sa.compared_to = p_adj, sig, " / ".join(b)
    return out


# --------------------------------------------------------------------------- rendering


def _fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if std is None or math.isnan(std) else f" ({std:.{digits}f})")


def _plan_keys(plan: dict) -> list:
    """Every run key the plan's cells use (all candidates and seeds), deduplicated, in order."""
    return list(dict.fromkeys(k for c in plan["cells"] for cand in c["candidates"] for k in cand["runs"]))


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


def render_markdown(plan: dict, summaries: list, tests: list, rows: list) -> str:
    """The report. ``rows``: the stored runs of the plan's cells (every candidate and seed)."""
    scale, unit = metric_scale(plan)
    table = TABLES.get(plan.get("paper_table") or "")
    lines = [f"# {plan['name']}: {plan['title']}", ""]
    if plan.get("profile"):
        note = plan.get("profile_note")
        lines += [f"profile: {plan['profile']}" + (f" ({note})" if note else ""), ""]
    if plan.get("command"):
        lines += [f"made by: `{plan['command']}`", ""]
    lines += [_hardware(rows, len(_plan_keys(plan))), ""]
    if plan.get("description"):
        lines += [plan["description"], ""]
    metric = "test accuracy (%)" if plan["metric"] == "accuracy" else f"test MSE ({unit})"
    legend = "Each cell: ours, mean (std) over n seeds"
    if table is not None:
        legend += " · the paper's number · difference"
    legend += f". Metric: {metric}."
    if any(len(s.candidates) > 1 for s in summaries):
        legend += " Where a cell shows λ, that λ was chosen on the dev set among the cell's candidates (see Tuning)."
    if tests:
        legend += f" `*`: significant vs. the compared cell after Bonferroni (alpha {ALPHA})."
    lines += [legend, ""]
    row_labels = list(dict.fromkeys(s.row for s in summaries))
    col_labels = list(dict.fromkeys(s.col for s in summaries))
    by = {(s.row, s.col): s for s in summaries}
    lines.append("| | " + " | ".join(col_labels) + " |")
    lines.append("|---" * (len(col_labels) + 1) + "|")
    for r in row_labels:
        cells = []
        for c in col_labels:
            s = by.get((r, c))
            if s is None:
                cells.append("")
                continue
            if s.n == 0:
                paper = table.cells.get((r, c)) if table is not None else None
                lam = "" if s.lam is None else f" λ={s.lam:g}"
                cells.append(f"not run yet{lam}" + (f" · paper {_fmt(paper.mean, paper.std)}" if paper else ""))
                continue
            ours = _fmt(s.mean * scale, s.std * scale)
            text = f"{ours}{' *' if s.significant else ''} n={s.n}"
            if s.lam is not None and (
                len(s.candidates) > 1 or (plan.get("profile") == "published" and c != f"{s.lam:g}")
            ):
                text += f" λ={s.lam:g}"
            paper = table.cells.get((r, c)) if table is not None else None
            if paper is not None:
                text += f" · paper {_fmt(paper.mean, paper.std)} · Δ {s.mean * scale - paper.mean:+.2f}"
            if s.errors:
                text += f" · {s.errors} diverged"
            cells.append(text)
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += agreement_section(plan, summaries, table, scale)
    lines += robust.section(summaries, plan.get("baseline_col"))
    if tests:
        lines += [
            "## Significance (Welch's t-test, Bonferroni)",
            "",
            "| cell | vs. | t | df | p | p adjusted | |",
            "|---|---|---|---|---|---|---|",
        ]

        def unrun(cell) -> bool:
            s = by.get(tuple(cell))
            return s is not None and s.n == 0

        waiting = [x for x in tests if unrun(x[0]) or unrun(x[1])]
        for a, b, t, df, p, p_adj, sig in tests:
            if unrun(a) or unrun(b):
                continue
            lines.append(
                f"| {' / '.join(a)} | {' / '.join(b)} | {t:.2f} | {df:.1f} | {p:.3g} | {p_adj:.3g} "
                f"| {'*' if sig else ''} |"
            )
        if waiting:
            lines += ["", f"{len(waiting)} comparison(s) wait for runs not stored yet."]
        lines.append("")
    from ..paper.explanations import finding

    words = finding(plan, summaries, scale)
    if words:
        figure = plan.get("kind") == "figure"
        heading = "The paper's claims about this figure, checked" if figure else "What the comparisons show"
        lines += [f"## {heading}", "", words, ""]
    lines += [
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
    lines.append("")
    tuned = [s for s in summaries if len(s.candidates) > 1]
    if tuned:
        lines += [
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
        lines.append("")
    return "\n".join(lines)


def paper_agreement(summaries: list, table, scale: float, alpha: float = ALPHA) -> list[dict]:
    """Each cell against the paper's: Welch's t-test from the paper's summary (mean, std,
    n = its runs) where it prints a std, else a one-sample t-test of our seeds against its
    number; Bonferroni over the table's cells -- every cell of the plan that the paper prints,
    tested yet or not, so a verdict does not change as the other cells' runs arrive.
    ``verdict``: "consistent" or "differs" (seeds that all agree test as exact: "differs"
    unless they equal the paper's number)."""
    out = []
    m = sum(1 for s in summaries if table is not None and (s.row, s.col) in table.cells)
    for s in summaries:
        paper = table.cells.get((s.row, s.col)) if table is not None else None
        if paper is None or len(s.test) < 2:
            continue
        ours = [v * scale for v in s.test]
        mean, std = stats.mean_std(ours)
        if paper.std is not None and paper.std > 0:
            t, df, p = stats.welch_from_summary(
                mean, std, len(ours), paper.mean, paper.std, getattr(table, "n_runs", 10) or 10
            )
            test = "Welch"
        else:  # without a spread on either side: p = 0 where the means differ, NaN where equal
            t, df, p = stats.welch_from_summary(mean, std, len(ours), paper.mean, 0.0, 2)
            test = "one-sample"
        out.append(
            {
                "row": s.row,
                "col": s.col,
                "ours": mean,
                "ours_std": std,
                "n": len(ours),
                "paper": paper.mean,
                "paper_std": paper.std,
                "test": test,
                "t": t,
                "p": p,
            }
        )
    for r in out:
        r["m"] = m
        r["p_adj"] = stats.adjusted(r["p"], m) if not math.isnan(r["p"]) else math.nan
        r["verdict"] = "differs" if not math.isnan(r["p"]) and r["p"] * m < alpha else "consistent"
    return out


def agreement_section(plan: dict, summaries: list, table, scale: float) -> list[str]:
    rows = paper_agreement(summaries, table, scale)
    if not rows:
        return []
    lines = [
        "## Agreement with the paper",
        "",
        f"Each cell against the paper's: Welch's t-test from the paper's summary (mean, std, n = 10) where it "
        f"prints a std, else a one-sample t-test of our seeds against its single number; Bonferroni over the "
        f"{rows[0]['m']} cells (alpha {ALPHA}"
        + (f"; {len(rows)} of them have runs yet" if len(rows) < rows[0]["m"] else "")
        + "). *differs*: the difference is larger than both spreads explain.",
        "",
        "| cell | ours | paper | test | p | p adjusted | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = f"{r['paper']:.2f}" + (f" ({r['paper_std']:.2f})" if r["paper_std"] is not None else "")
        lines.append(
            f"| {r['row']} / {r['col']} | {r['ours']:.2f} ({r['ours_std']:.2f}) n={r['n']} | {paper} | {r['test']} "
            f"| {r['p']:.3g} | {r['p_adj']:.3g} | {r['verdict']} |"
        )
    lines.append("")
    differs = [r for r in rows if r["verdict"] == "differs"]
    if differs:
        from ..paper.explanations import explain

        lines += ["## Where we differ, and why", ""]
        lines += [explain(plan, summaries, differs, scale), ""]
    return lines


def render_csv(plan: dict, summaries: list) -> str:
    scale, label = metric_scale(plan)
    unit = label.lstrip("×")  # "%" or "1e-5", as in gradreg.paper.numbers
    table = TABLES.get(plan.get("paper_table") or "")
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
                plan["name"],
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
    """The files :func:`write_report` writes for ``name`` and ``profile``: ``.md``, ``.csv``
    and, for experiments with a figure, ``.png``."""
    stem = Path(out_dir) / report_stem(name, profile)
    suffixes = (".md", ".csv") + ((".png",) if has_figure(name) else ())
    return [stem.with_name(stem.name + s) for s in suffixes]


def build_report(store_path, name: str, profile: str | None = None) -> dict:
    """Everything a report holds, from the store: ``{"markdown", "csv", "summaries", "plan"}``.
    ``profile``: the plan of that profile (None: the plan stored last)."""
    with Store(store_path) as store:
        plan = store.plan(name, profile)
        if plan is None:
            stored = store.profiles(name)
            if profile is not None and stored:
                raise ValueError(
                    f"the store {store_path} has no plan for {name!r} with profile {profile!r} "
                    f"(it has: {', '.join(stored)}); run `gradreg run {name} --profile {profile}` first"
                )
            raise ValueError(f"the store {store_path} has no plan for {name!r}; run `gradreg run {name}` first")
        used = set(_plan_keys(plan))
        rows = [r for r in store.rows(name) if r["run_key"] in used]
    by_key = {r["run_key"]: r for r in rows}
    summaries = [summarize_cell(c, by_key, plan["metric"]) for c in plan["cells"]]
    tests = significance(summaries, plan)
    return {
        "plan": plan,
        "summaries": summaries,
        "tests": tests,
        "markdown": render_markdown(plan, summaries, tests, rows),
        "csv": render_csv(plan, summaries),
    }


def write_report(store_path, name: str, out_dir, profile: str | None = None) -> list[Path]:
    """Write ``NAME.PROFILE.md``, ``.csv`` and the figure (``.png``) into ``out_dir`` (see
    :func:`report_stem`); ``profile`` as in :func:`build_report`."""
    out_dir = Path(out_dir)
    rep = build_report(store_path, name, profile)
    stem = report_stem(name, rep["plan"].get("profile"))
    paths = []
    for suffix, text in ((".md", rep["markdown"]), (".csv", rep["csv"])):
        p = out_dir / f"{stem}{suffix}"
        write_text_atomic(p, text)
        paths.append(p)
    paths += draw_figures(rep["plan"], rep["summaries"], out_dir, stem)
    return paths
