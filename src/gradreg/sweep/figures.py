"""PNG figures drawn headless (matplotlib's Agg backend) from report summaries.

The paper's published numbers are reference points wherever the paper gives them. Every
figure is written to `out_dir / f"{stem}.png"`, where the report chooses `stem`
(`fig5.quick`: see `gradreg.sweep.report.report_stem`). MSE is shown in the unit of the
paper's Table 7, 1e-5, as in the reports.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..atomic import write_atomic
from ..paper.numbers import FACTS, TABLES
from .units import metric_scale


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _write_png(plt, fig, out_dir: Path, stem: str) -> Path:
    """Write `fig` atomically to `out_dir / f"{stem}.png"` and close it; the path written."""
    path = write_atomic(out_dir / f"{stem}.png", lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def _scaled_means_and_errors(summaries, scale: float) -> tuple[list[float], list[float]]:
    """Each summary's mean and std in display units (`scale` per natural unit); error bar 0
    where the std is undefined (NaN: a single seed)."""
    return (
        [s.mean * scale for s in summaries],
        [0 if math.isnan(s.std) else s.std * scale for s in summaries],
    )


def _lam_x(lams: list) -> tuple[np.ndarray, float]:
    """Log-scale x positions; lambda 0 is drawn one decade left of the smallest positive."""
    pos = [v for v in lams if v and v > 0]
    zero_at = (min(pos) / 10) if pos else 1e-4
    return np.array([v if v and v > 0 else zero_at for v in lams], dtype=float), zero_at


def sweep_plot(plan, summaries, out_dir: Path, stem: str) -> Path:
    """A lambda sweep (Tables 5 and 7): ours with std bars, the paper's numbers as crosses.

    Args:
        plan: The experiment's plan (its title, metric and paper table).
        summaries: The report's cell summaries.
        out_dir: The directory to write into.
        stem: The file name without `.png`.

    Returns:
        The path written.
    """
    plt = _plt()
    table = TABLES.get(plan.get("paper_table") or "")
    scale, unit = metric_scale(plan)
    ylabel = f"test accuracy ({unit})" if plan["metric"] == "accuracy" else f"test MSE ({unit})"
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row in dict.fromkeys(s.row for s in summaries):
        ss = [s for s in summaries if s.row == row]
        xs, _ = _lam_x([s.x for s in ss])
        means, errors = _scaled_means_and_errors(ss, scale)
        ax.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=f"{row} (ours)")
        if table is not None:
            px = [x for x, s in zip(xs, ss) if (s.row, s.col) in table.cells]
            py = [table.cells[(s.row, s.col)].mean for s in ss if (s.row, s.col) in table.cells]
            ax.plot(px, py, "x", markersize=9, label=f"{row} (paper)")
    ax.set_xscale("log")
    if plan["metric"] == "mse":
        ax.set_yscale("log")
    ax.set_xlabel("λ (leftmost point: λ = 0)")
    ax.set_ylabel(ylabel)
    ax.set_title(plan["title"], fontsize=10)
    ax.legend(fontsize=8)
    return _write_png(plt, fig, out_dir, stem)


def fig2_plot(plan, summaries, out_dir: Path, stem: str) -> Path:
    """Figure 2: test accuracy against the training-set size, one line per regularizer.

    The paper prints numbers for N = 2000 only (Tables 1, 2, 6): they are reference points there.

    Args:
        plan: The experiment's plan (its title, metric and paper table).
        summaries: The report's cell summaries.
        out_dir: The directory to write into.
        stem: The file name without `.png`.

    Returns:
        The path written.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row in dict.fromkeys(s.row for s in summaries):
        ss = sorted((s for s in summaries if s.row == row), key=lambda s: s.x)
        means, errors = _scaled_means_and_errors(ss, 100)
        ax.errorbar([s.x for s in ss], means, yerr=errors, marker="o", capsize=3, label=row)
    # The paper prints numbers for N = 2000 only (Tables 1, 2, 6): reference points there.
    refs = {
        "Baseline": TABLES["table1"].cells[("LeNet Dropout", "NoGR")],
        "DataGrad": TABLES["table1"].cells[("LeNet Dropout", "DataGrad")],
        "SpectReg": TABLES["table1"].cells[("LeNet Dropout", "SpectReg")],
        "CP": TABLES["table2"].cells[("CP", "No GR")],
        "JacReg": TABLES["table6"].cells[("LeNet", "JacReg")],
    }
    for i, cell in enumerate(refs.values()):
        ax.plot([2000], [cell.mean], "x", color=f"C{i}", markersize=9)
    ax.plot([], [], "kx", label="paper, N=2000 (Tables 1, 2, 6)")
    ax.set_xscale("log")
    ax.set_xlabel("training-set size")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(plan["title"], fontsize=10)
    ax.legend(fontsize=8)
    return _write_png(plt, fig, out_dir, stem)


def fig3_plot(plan, summaries, out_dir: Path, stem: str) -> Path:
    """Figure 3: test-accuracy learning curves, with the paper's final numbers (Table 5) as crosses.

    Args:
        plan: The experiment's plan (its title, metric and paper table).
        summaries: The report's cell summaries.
        out_dir: The directory to write into.
        stem: The file name without `.png`.

    Returns:
        The path written.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    t5 = TABLES["table5"].cells
    refs = {"Baseline": t5[("DataGrad", "0")], "DataGrad": t5[("DataGrad", "0.01")]}
    for i, s in enumerate(summaries):
        ax.plot(
            [p["step"] for p in s.curve], [100 * p["test"] for p in s.curve], color=f"C{i}", label=f"{s.row} (ours)"
        )
        if s.row in refs and s.curve:
            ax.plot(
                [s.curve[-1]["step"]],
                [refs[s.row].mean],
                "x",
                color=f"C{i}",
                markersize=9,
                label=f"{s.row}, paper final (Table 5)",
            )
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(plan["title"], fontsize=10)
    ax.legend(fontsize=8)
    return _write_png(plt, fig, out_dir, stem)


def fig4_plot(plan, summaries, out_dir: Path, stem: str) -> Path:
    """Figure 4: the squared weight norm and test accuracy against DataGrad's lambda, a panel per row.

    The dashed line is the paper's phase transition; lambda 0 is drawn at the left.

    Args:
        plan: The experiment's plan (its title, metric and paper table).
        summaries: The report's cell summaries.
        out_dir: The directory to write into.
        stem: The file name without `.png`.

    Returns:
        The path written.
    """
    plt = _plt()
    rows = list(dict.fromkeys(s.row for s in summaries))
    ncols = min(3, max(1, len(rows)))  # the paper's six panels as 2 x 3; fewer panels, fewer axes
    nrows = max(1, math.ceil(len(rows) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.25 * nrows + 0.5), squeeze=False)
    transition = FACTS["figure4_phase_transition_datagrad_lambda"].value
    for ax, row in zip(axes.flat, rows):
        ss = sorted((s for s in summaries if s.row == row), key=lambda s: s.x or 0)
        xs, _ = _lam_x([s.x for s in ss])
        ax.plot(xs, [s.weight_norm_sq for s in ss], "k-o", markersize=3)
        ax.set_xscale("log")
        ax.set_ylabel("Σ‖w‖² (black)", fontsize=8)
        ax2 = ax.twinx()
        ax2.plot(xs, [100 * s.mean for s in ss], "b-o", markersize=3)
        ax2.set_ylabel("test accuracy % (blue)", fontsize=8, color="b")
        ax.axvline(transition, color="gray", linestyle="--", linewidth=1)
        ax.set_title(f"{row}; dashed: paper's transition ≈ {transition:g}", fontsize=8)
        ax.set_xlabel("DataGrad λ (leftmost: 0)", fontsize=8)
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    fig.suptitle(plan["title"], fontsize=10)
    fig.tight_layout()
    return _write_png(plt, fig, out_dir, stem)


def sin_fits_plot(plan, summaries, out_dir: Path, stem: str, xlim=None) -> Path:
    """The SIN fits (Figures 5 and 6, SIN2): each cell's predictions over the training points and sin(5x).

    Args:
        plan: The experiment's plan (its title, metric and paper table).
        summaries: The report's cell summaries.
        out_dir: The directory to write into.
        stem: The file name without `.png`.
        xlim: The x range to zoom into (the y range follows), or None.

    Returns:
        The path written.
    """
    from ..data import make_sin

    plt = _plt()
    scale, unit = metric_scale(plan)
    sin = make_sin()
    grid = sin.x_test.flatten().numpy()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(sin.x_train.flatten().numpy(), sin.y_train.flatten().numpy(), "k.", label="SIN training points")
    ax.plot(grid, np.sin(5 * grid), "k--", linewidth=1, label="sin(5x)")
    for i, s in enumerate(summaries):
        if s.fit is None:
            continue
        label = f"{s.row} λ={s.col}"
        ax.plot(grid, s.fit, color=f"C{i}", linewidth=1.2, label=f"{label} (test MSE {s.mean * scale:.2f} {unit})")
    if xlim is not None:
        ax.set_xlim(*xlim)
        inside = (grid >= xlim[0]) & (grid <= xlim[1])
        lo, hi = np.sin(5 * grid[inside]).min(), np.sin(5 * grid[inside]).max()
        ax.set_ylim(lo - 0.3, hi + 0.3)
    ax.set_title(plan["title"], fontsize=10)
    ax.legend(fontsize=7)
    return _write_png(plt, fig, out_dir, stem)


def robust_plot(plan, summaries, out_dir: Path, stem: str) -> Path:
    """Robust accuracy against the budget, one line per cell and a panel per norm.

    Eps 0 is clean accuracy on the probed images; a third panel plots clean against robust
    accuracy at L-infinity 0.1.

    Args:
        plan: The experiment's plan (its title, metric and paper table).
        summaries: The report's cell summaries.
        out_dir: The directory to write into.
        stem: The file name without `.png`.

    Returns:
        The path written.
    """
    from .robust import robust_cell

    plt = _plt()
    cells = [c for c in (robust_cell(s) for s in summaries) if c is not None]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, norm, label in ((axes[0], "linf", "L∞"), (axes[1], "l2", "L2")):
        for c in cells:
            pts = sorted(k for k in c.pgd if k[0] == norm)
            xs = [0.0] + [e for _, e in pts]
            ys = [100 * np.mean(c.clean)] + [100 * np.mean(c.pgd[k]) for k in pts]
            ax.plot(xs, ys, marker="o", label=f"{c.row} / {c.col}" if norm == "linf" else None)
        ax.set_xlabel(f"{label} budget (pixel units)")
        ax.set_ylabel("PGD accuracy (%)")
        ax.set_ylim(0, 100)
    axes[0].legend(fontsize=7)
    ax = axes[2]
    for c in cells:
        key = ("linf", 0.1)
        if key in c.pgd:
            ax.scatter(100 * np.mean(c.clean), 100 * np.mean(c.pgd[key]))
            ax.annotate(
                f"{c.col}" if c.lam is None else f"{c.row} {c.lam:g}",
                (100 * np.mean(c.clean), 100 * np.mean(c.pgd[key])),
                fontsize=7,
            )
    ax.set_xlabel("clean accuracy on the probed images (%)")
    ax.set_ylabel("PGD accuracy at L∞ 0.1 (%)")
    fig.suptitle(plan["title"], fontsize=10)
    return _write_png(plt, fig, out_dir, stem)


_FIGURES: dict[str, Callable[[dict, list, Path, str], Path]] = {
    "robust": robust_plot,
    "robust_tradeoff": robust_plot,
    "table5": sweep_plot,
    "table7": sweep_plot,
    "fig2": fig2_plot,
    "fig3": fig3_plot,
    "fig4": fig4_plot,
    "fig5": sin_fits_plot,
    "fig6": functools.partial(sin_fits_plot, xlim=(0.2, 0.7)),
    "sin2": sin_fits_plot,
}


def has_figure(name: str) -> bool:
    """Whether experiment `name` has a PNG (the accuracy tables have none: their report is the table).

    Args:
        name: The experiment's name.

    Returns:
        Whether a figure is drawn for it.
    """
    return name in _FIGURES


def draw_figures(plan: dict, summaries: list, out_dir, stem: str | None = None) -> list[Path]:
    """The PNG of an experiment, `out_dir / f"{stem}.png"`.

    Args:
        plan: The experiment's plan.
        summaries: The report's cell summaries.
        out_dir: The directory to write into.
        stem: The file name without `.png` (default: the plan's name).

    Returns:
        The paths written, as a list: empty for the accuracy tables.
    """
    name = plan["name"]
    if name not in _FIGURES:
        return []
    return [_FIGURES[name](plan, summaries, Path(out_dir), stem or name)]
