"""The robustness part of a report: what each cell's runs withstand, read from their probes.

Each run with probes (`gradreg.probes`) holds, per (norm, eps) in pixel units, its PGD, FGSM and
transfer accuracy on the first test images, and its PGD accuracy at a large L-infinity budget. Per cell
this module gives the mean (std) over seeds of each, Welch's t-test of each PGD column against the
baseline column (Bonferroni over every test of the table), the masking diagnostics
(`gradreg.probes.masking` on the cell's means, and how many runs were flagged on their own), and
the cost of a training step against the baseline's, from the runs' own step rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import stats
from ..probes import masking

ALPHA = 0.05


@dataclass
class RobustCell:
    """One cell's probes, over its seeds.

    Attributes:
        row: The cell's row label.
        col: The cell's column label.
        lam: Its regularization weight, if any.
        clean: Per-seed clean accuracies.
        pgd: (norm, eps) -> per-seed PGD accuracies.
        fgsm: (norm, eps) -> per-seed FGSM accuracies.
        transfer: (norm, eps) -> per-seed transfer accuracies.
        large: Per-seed PGD accuracies at the large L-infinity budget.
        flagged_runs: How many runs were flagged for masking on their own.
        steps_per_s: Per-seed training step rates.
        flags: Masking signs in the cell's means.
        p_adj: (norm, eps) -> adjusted p against the baseline.
    """

    row: str
    col: str
    lam: float | None
    clean: list
    pgd: dict
    fgsm: dict
    transfer: dict
    large: list
    flagged_runs: int
    steps_per_s: list
    flags: list = field(default_factory=list)  # masking signs in the cell's means
    p_adj: dict = field(default_factory=dict)  # (norm, eps) -> adjusted p against the baseline


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: list) -> float:
    return stats.mean_std(values)[1] if len(values) > 1 else math.nan


def points_of(cells: list[RobustCell]) -> list[tuple[str, float]]:
    """Every (norm, eps) probed in any cell: L-infinity first, each by eps.

    Args:
        cells: The cells.

    Returns:
        The sorted `(norm, eps)` pairs.
    """
    seen = {p for c in cells for p in c.pgd}
    return sorted(seen, key=lambda p: (p[0] != "linf", p[1]))


def robust_cell(summary) -> RobustCell | None:
    """The probes of a report cell; None without any.

    Args:
        summary: A report cell (`gradreg.sweep.report.CellSummary`).

    Returns:
        The cell's probes, with its masking flags, or None where no run carries probes.
    """
    runs = [r for r in summary.runs if r["metrics"].get("robust")]
    if not runs:
        return None
    cell = RobustCell(summary.row, summary.col, summary.lam, [], {}, {}, {}, [], 0, [])
    for r in runs:
        probe = r["metrics"]["robust"]
        cell.clean.append(probe["clean"])
        cell.large.append(probe["large_linf"]["pgd"])
        cell.flagged_runs += bool(probe["flags"])
        cell.steps_per_s.append(r["steps_per_s"])
        for row in probe["points"]:
            key = (row["norm"], row["eps"])
            for name, into in (("pgd", cell.pgd), ("fgsm", cell.fgsm), ("transfer", cell.transfer)):
                into.setdefault(key, []).append(row[name])
    kinds = (("pgd", cell.pgd), ("fgsm", cell.fgsm), ("transfer", cell.transfer))
    rows = [{"norm": n, "eps": e, **{k: _mean(d[(n, e)]) for k, d in kinds}} for n, e in points_of([cell])]
    cell.flags = masking(rows, _mean(cell.large), runs[0]["metrics"]["robust"]["examples"])
    return cell


def compare(cells: list[RobustCell], baseline_col: str | None) -> None:
    """Welch's t-test of each cell's PGD accuracy against its row's baseline cell, per (norm, eps).

    Bonferroni over all of them; sets each cell's `p_adj` (nothing without a baseline column).
    A test needs at least two seeds on each side.

    Args:
        cells: The cells, changed in place.
        baseline_col: The baseline column's label, or None.
    """
    if not baseline_col:
        return
    base = {c.row: c for c in cells if c.col == baseline_col}
    tests = []
    for c in cells:
        b = base.get(c.row)
        if b is None or c is b:
            continue
        for key in c.pgd:
            if len(c.pgd[key]) > 1 and len(b.pgd.get(key, [])) > 1:
                tests.append((c, key, stats.welch_t_test(c.pgd[key], b.pgd[key])[2]))
    for c, key, p in tests:
        c.p_adj[key] = stats.adjusted(p, len(tests)) if not math.isnan(p) else math.nan


def _pct(values: list) -> str:
    m, s = _mean(values), _std(values)
    if math.isnan(m):
        return "–"
    return f"{100 * m:.1f}" + ("" if math.isnan(s) else f" ({100 * s:.1f})")


def _label(norm: str, eps: float) -> str:
    return f"{'L∞' if norm == 'linf' else 'L2'} {eps:g}"


def section(summaries: list, baseline_col: str | None) -> list[str]:
    """The report's robustness section (empty when no run carries probes).

    A table of PGD accuracy per cell and budget, with significance marks and the step cost, then
    the gradient-masking diagnostics.

    Args:
        summaries: The report's cells.
        baseline_col: The baseline column's label, or None.

    Returns:
        The section's Markdown lines.
    """
    cells = [c for c in (robust_cell(s) for s in summaries) if c is not None]
    if not cells:
        return []
    compare(cells, baseline_col)
    pts = points_of(cells)
    base_rate = {c.row: _mean(c.steps_per_s) for c in cells if c.col == baseline_col}
    lines = [
        "## Robustness: PGD accuracy (%) on the first test images, budgets in pixel units",
        "",
        "Mean (std) over seeds. PGD: 20 steps of 2.5 eps / 20, random start, margin loss. `*`: differs from the "
        f"{baseline_col or 'baseline'} column after Bonferroni over every PGD comparison (Welch, alpha {ALPHA}). "
        "Cost: seconds per training step against the baseline's, from the runs' own step rates, which move with "
        "the machine's load while they ran; `gradreg bench` measures the ratios side by side.",
        "",
        "| cell | n | clean | " + " | ".join(_label(*p) for p in pts) + " | cost |",
        "|---" * (len(pts) + 4) + "|",
    ]
    for c in cells:
        vals = []
        for p in pts:
            star = " *" if c.p_adj.get(p, math.nan) < ALPHA else ""
            vals.append(_pct(c.pgd.get(p, [])) + star)
        rate = base_rate.get(c.row, math.nan)
        cost = rate / _mean(c.steps_per_s) if c.steps_per_s else math.nan
        lines.append(
            f"| {c.row} / {c.col} | {len(c.clean)} | {_pct(c.clean)} | "
            + " | ".join(vals)
            + (" | – |" if math.isnan(cost) else f" | {cost:.2f}× |")  # –: no baseline column probed
        )
    lines += ["", *_masking_lines(cells, pts)]
    return lines


def _masking_lines(cells: list[RobustCell], pts: list) -> list[str]:
    lines = [
        "## Gradient-masking diagnostics",
        "",
        "Per cell, mean accuracy (%) under FGSM and under a transfer attack (PGD on an unregularized model of the "
        "same seed) beside PGD's, and PGD at L∞ 0.5, where any digit can be drawn over. Masking shows as PGD above "
        "FGSM, transfer below PGD, accuracy rising with eps, or a large budget not reaching about 0.",
        "",
        "| cell | " + " | ".join(f"{_label(*p)} PGD / FGSM / transfer" for p in pts) + " | L∞ 0.5 | flags |",
        "|---" * (len(pts) + 3) + "|",
    ]
    for c in cells:
        vals = [
            f"{100 * _mean(c.pgd.get(p, [])):.1f} / {100 * _mean(c.fgsm.get(p, [])):.1f} / "
            f"{100 * _mean(c.transfer.get(p, [])):.1f}"
            for p in pts
        ]
        flags = "; ".join(c.flags) if c.flags else "none"
        if c.flagged_runs:
            flags += f" ({c.flagged_runs} of {len(c.clean)} runs flagged on their own)"
        lines.append(f"| {c.row} / {c.col} | " + " | ".join(vals) + f" | {100 * _mean(c.large):.1f} | {flags} |")
    lines.append("")
    flagged = [c for c in cells if c.flags]
    lines.append(
        "Possible gradient masking in: " + ", ".join(f"{c.row} / {c.col}" for c in flagged) + "."
        if flagged
        else "No cell shows a sign of gradient masking in its means."
    )
    lines.append("")
    return lines
