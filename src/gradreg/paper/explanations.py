"""What a report says about its cells beyond the numbers: short templates filled from them.

Each function gets the report's cell summaries (and, for a table, the cells that differ from the
paper: ``gradreg.sweep.agreement.Agreement`` rows, read here by ``row``, ``col``, ``ours`` and
``paper``) and returns Markdown whose every number is computed from those cells, the paper's
tables or ``gradreg.paper.sin_theory``. Findings that rest on anything else (checks run apart
from the experiment's records, and the reasoning that reads the numbers) live in
docs/evidence.md, and the words here point there. An experiment without an explanation says so
plainly rather than guessing.

``EXPLANATIONS`` holds the words under "Where we differ"; ``FINDINGS`` the words under "What the
comparisons show": for experiments beyond the paper, each column against the baseline; for the
paper's figures, which print no numbers, the paper's sentences about them, checked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

EVIDENCE = "docs/evidence.md"  # where the findings in words live, as a report names the page
# Fewer seeds than this give no reading of a difference, as they give no verdict against the paper
# (gradreg.sweep.agreement.MIN_SEEDS; this layer cannot import that one).
MIN_SEEDS = 3


class Differing(Protocol):
    """A cell that differs from the paper, as the words here read it (display units)."""

    @property
    def row(self) -> str: ...

    @property
    def col(self) -> str: ...

    @property
    def ours(self) -> float: ...

    @property
    def paper(self) -> float: ...


def _cells(differs: Sequence[Differing]) -> str:
    return ", ".join(f"{r.row} / {r.col}" for r in differs)


def _table7(summaries: list, differs: Sequence[Differing], scale: float) -> str:
    """How far each λ is from the paper, then the reference points of ``sin_theory``."""
    from .numbers import TABLES
    from .sin_theory import table7_explanation

    ours = {s.lam if s.lam is not None else 0.0: s.mean for s in summaries if s.row == "SpectReg" and s.n}
    printed = len(TABLES["table7"].cells)
    how = "Every λ differs" if len(differs) == printed else f"{len(differs)} of {printed} λ differ"
    ratios = [r.ours / r.paper for r in differs if r.paper > 0]
    span = f": ours is {min(ratios):.0f}–{max(ratios):.0f}× the paper's number" if ratios else ""
    return (
        f"{how}{span}. The reference points below bound what a model trained with the published code's data and "
        "objective can reach.\n\n" + table7_explanation(ours)
    )


def _table1(summaries: list, differs: Sequence[Differing], scale: float) -> str:
    """Table 1's BatchNorm row: the candidate causes checked, and what the runs establish."""
    bn = [r for r in differs if r.row == "LeNet Batchnorm"]
    rest = [r for r in differs if r.row != "LeNet Batchnorm"]
    parts = []
    if bn:
        cells = ", ".join(f"{r.row} / {r.col} ({r.ours:.2f} against {r.paper:.2f})" for r in bn)
        parts.append(
            f"{cells}: not established. Three candidate causes, settings where this BatchNorm LeNet may differ "
            "from the original's, were checked apart from these runs and do not explain the gap: evaluation with "
            "the running statistics (`bn_batch_stats_at_eval=False`, `scripts/bn_eval_check.py`), evaluation on "
            "batch statistics in batches of 50 as the authors' code does (the `table1_bn` experiment, report "
            "table1_bn.PROFILE.md) and moving averages that are never updated (`scripts/bn_stale_stats_check.py`); "
            f'what each check measured: {EVIDENCE}, "Table 1\'s BatchNorm row".'
            + _batchnorm_against_unregularized(summaries, scale)
        )
        row = _batchnorm_row_offset(summaries, scale)
        if row:
            parts.append(row)
    if rest:
        parts.append(_not_explained(summaries, rest, scale))
    return "\n\n".join(parts)


def _batchnorm_against_unregularized(summaries: list, scale: float) -> str:
    """Whether BatchNorm raised NoGR here and in the paper: one sentence, or "" without both cells."""
    from .numbers import TABLES

    ours = {s.row: s for s in summaries if s.col == "NoGR" and s.n}
    bn, plain = ours.get("LeNet Batchnorm"), ours.get("LeNet unregularized")
    paper = TABLES["table1"].cells
    p_bn, p_plain = paper[("LeNet Batchnorm", "NoGR")].mean, paper[("LeNet unregularized", "NoGR")].mean
    if bn is None or plain is None:
        return ""
    o_bn, o_plain = bn.mean * scale, plain.mean * scale
    if (o_bn > o_plain) == (p_bn > p_plain):
        return ""
    word = {True: "above", False: "below"}
    return (
        f" BatchNorm moved NoGR the other way here: the paper's BatchNorm NoGR ({p_bn:.2f}) sits "
        f"{word[p_bn > p_plain]} its unregularized NoGR ({p_plain:.2f}); ours sits {word[o_bn > o_plain]} "
        f"({o_bn:.2f} against {o_plain:.2f})."
    )


def _batchnorm_row_offset(summaries: list, scale: float) -> str:
    """What the numbers establish about Table 1's BatchNorm row: whether at the published λ the
    DataGrad cell is distinguishable from our own NoGR, each cell's offset from the paper, and
    the spreads that decide which cell the test flags. "" without both cells."""
    from .. import stats
    from .numbers import TABLES

    cells = {s.col: s for s in summaries if s.row == "LeNet Batchnorm" and len(s.test) > 1}
    dg, nogr = cells.get("DataGrad"), cells.get("NoGR")
    if dg is None or nogr is None:
        return ""
    _, _, p = stats.welch_t_test([v * scale for v in dg.test], [v * scale for v in nogr.test])
    paper = TABLES["table1"].cells
    offsets = {col: s.mean * scale - paper[(s.row, col)].mean for col, s in cells.items() if (s.row, col) in paper}
    deltas = ", ".join(f"{col} {d:+.2f}" for col, d in offsets.items())
    spreads = ", ".join(f"{col} {s.std * scale:.2f}" for col, s in cells.items())
    lam = f"{dg.lam:g}" if dg.lam is not None else "?"
    words = (
        f"What the runs do establish: at the published λ = {lam}, DataGrad against our own BatchNorm NoGR has Welch "
        f"p = {p:.2g} (unadjusted), and the mean ||J_g(x)||_F at test points is "
        f"{dg.grad_norms.get('test', float('nan')):.2f} against {nogr.grad_norms.get('test', float('nan')):.2f}. "
        f"Each cell of the row against the paper's: {deltas}; the spread of its seeds: {spreads}."
    )
    if offsets and all(d > 0 for d in offsets.values()):
        words += " Every cell of the row sits above the paper's"
        if min(cells.values(), key=lambda s: s.std) is dg:
            words += ", and the test flags the DataGrad cell, whose seeds spread least"
        words += "."
    return words


def _not_explained(summaries: list, differs: Sequence[Differing], scale: float) -> str:
    return (
        f"Not yet explained: {_cells(differs)}. These cells differ from the paper by more than both spreads explain; "
        "no cause has been established yet, so none is claimed here."
    )


EXPLANATIONS: dict[str, Callable[[list, Sequence[Differing], float], str]] = {
    "table7": _table7,
    "table1": _table1,
}


def explain(name: str, summaries: list, differs: Sequence[Differing], scale: float) -> str:
    """The words under a report's "Where we differ, and why".

    Args:
        name: The experiment.
        summaries: Its cell summaries.
        differs: Its cells that differ from the paper.
        scale: Natural units to the report's display units.

    Returns:
        Markdown; for an experiment without an explanation, a plain "Not yet explained".
    """
    return EXPLANATIONS.get(name, _not_explained)(summaries, differs, scale)


def _fastgr(summaries: list, scale: float, baseline_col: str | None) -> str:
    """Each lazy cell against exact; the cells (of at least ``MIN_SEEDS`` seeds) that score lower
    with a flatter model and a higher training loss; and where such a shortfall was traced."""
    exact = {s.row: s for s in summaries if s.col == baseline_col and s.n >= 2}
    said, short = [], []
    for s in summaries:
        base = exact.get(s.row)
        if "lazy" not in s.col or base is None or s.n < 2:
            continue
        said.append(
            f"{s.row} / {s.col}: {(s.mean - base.mean) * scale:+.2f} points against exact; mean ||J||_F at test "
            f"points {s.grad_norms['test']:.2f} (exact {base.grad_norms['test']:.2f}); training loss "
            f"{s.train_loss:.4f} (exact {base.train_loss:.4f})."
        )
        lower = s.mean < base.mean and s.grad_norms["test"] < base.grad_norms["test"]
        if lower and s.train_loss > base.train_loss and min(s.n, base.n) >= MIN_SEEDS:
            short.append(f"{s.row} / {s.col}" + ("" if s.p_adj is None else f" (p adjusted {s.p_adj:.3g})"))
    if not said:
        return ""
    words = (
        "\n".join(f"- {x}" for x in said)
        + "\n\nLazy applies k·λ on one step in k: a first-order match for λ every step."
    )
    if short:
        verb = "scores" if len(short) == 1 else "score"
        words += f" {' and '.join(short)} {verb} below exact with a flatter model and a higher training loss."
    return words + (
        " Where lazy falls short, the cause was traced apart from these runs (`scripts/lazy_adam.py`, outputs in "
        f'`results/lazy/`): docs/fast.md ("When lazy falls short") and {EVIDENCE} ("Lazy steps against exact").'
    )


def _figure_claims(name: str, summaries: list, scale: float) -> str:
    """The paper's sentences about a figure, each with its verdict on our cells; for Figure 2
    with λ fixed across sizes, that fact and each row's training loss by size."""
    from .claims import checks, render

    words = render(checks(name, summaries, scale))
    if words and name == "fig2" and not any(len(s.candidates) > 1 for s in summaries):
        words += (
            "\n\nEvery point here uses the λ the paper published for 2000 training points; the paper tuned each "
            "point of its Figure 2 on the dev set (its caption). A size where that λ is far from its own best can "
            "put a curve lower than the paper's."
        )
        datagrad, baseline = training_loss_by_size(summaries, "DataGrad"), training_loss_by_size(summaries, "Baseline")
        if datagrad and baseline:
            words += (
                f" DataGrad's training loss (the data term over the last training steps) is {datagrad}; the "
                f"Baseline's is {baseline}. `gradreg run fig2_lambda` trains DataGrad at the largest size with "
                "smaller weights and tunes among them on the dev set (report: fig2_lambda.PROFILE.md); what it "
                f'found: {EVIDENCE} ("Figure 2 at its largest size").'
            )
    return words


def training_loss_by_size(summaries: list, row: str) -> str:
    """``row``'s training loss at each size it was run at, smallest size first.

    Args:
        summaries: The report's cells.
        row: The row.

    Returns:
        E.g. "0.0022 at N=500, 0.22 at N=10000"; "" where the row has no cell with runs.
    """
    cells = sorted((s for s in summaries if s.row == row and s.n and s.x is not None), key=lambda s: s.x)
    return ", ".join(f"{s.train_loss:.2g} at N={s.x:g}" for s in cells)


def _fig2_lambda(summaries: list, scale: float, baseline_col: str | None) -> str:
    """Which DataGrad weight the dev set picks at Figure 2's largest size, against the Baseline
    and against Figure 2's point there (the published lambda, 50)."""
    base = next((s for s in summaries if s.col == baseline_col and s.n), None)
    tuned = next((s for s in summaries if len(s.candidates) > 1 and s.n), None)
    fixed = [s for s in summaries if s is not base and s is not tuned and s.n]
    if base is None or tuned is None or not fixed:
        return ""
    best = max(fixed, key=lambda s: s.mean)
    at_50 = next((s for s in fixed if s.lam == 50), None)
    edge = min(c["lambda"] for c in tuned.candidates)
    said = [
        f"The dev set picks λ = {tuned.lam:g}"
        + (", the smallest weight tried (smaller ones were not)" if tuned.lam == edge else "")
        + f": test {tuned.mean * scale:.2f} ({tuned.std * scale:.2f}), {(tuned.mean - base.mean) * scale:+.2f} "
        f"points against the Baseline's {base.mean * scale:.2f}"
        + (f" (p adjusted {tuned.p_adj:.3g})." if tuned.p_adj is not None else "."),
        f"The best test mean among the fixed weights is λ = {best.lam:g}'s, {best.mean * scale:.2f}.",
        "Training loss (the data term over the last training steps): Baseline "
        + ", ".join([f"{base.train_loss:.2g}"] + [f"λ = {s.lam:g} {s.train_loss:.2g}" for s in fixed])
        + "."
        + (
            " The stronger the weight, the higher the training loss after the run's steps."
            if train_loss_rises_with_lambda(fixed)
            else ""
        ),
    ]
    if at_50 is not None:
        said.append(
            f"Figure 2's point here, λ = 50 (the weight published for 2000 points), scores {at_50.mean * scale:.2f}: "
            f"{(at_50.mean - tuned.mean) * scale:+.2f} against the dev-tuned weight."
        )
    return "\n".join(f"- {x}" for x in said)


def train_loss_rises_with_lambda(cells: list) -> bool:
    """Whether the training loss rises strictly with the weight across ``cells``.

    Args:
        cells: Cell summaries with a ``lam``.

    Returns:
        True where each stronger weight has the higher training loss; False for one cell.
    """
    losses = [s.train_loss for s in sorted(cells, key=lambda s: s.lam)]
    return len(losses) > 1 and all(a < b for a, b in zip(losses, losses[1:]))


# what an experiment's comparisons show: beyond the paper, against its baseline column; for the
# paper's figures, which print no numbers, the paper's sentences about them, checked
FINDINGS: dict[str, Callable[[list, float, str | None], str]] = {
    "fastgr": _fastgr,
    "fig2": lambda summaries, scale, baseline_col: _figure_claims("fig2", summaries, scale),
    "fig2_lambda": _fig2_lambda,
    "fig4": lambda summaries, scale, baseline_col: _figure_claims("fig4", summaries, scale),
    "table6": lambda summaries, scale, baseline_col: _figure_claims("table6", summaries, scale),
}


def finding(name: str, summaries: list, scale: float, baseline_col: str | None = None) -> str:
    """The words under a report's "What the comparisons show" (or, for a figure, "The paper's
    claims about this figure, checked").

    Args:
        name: The experiment.
        summaries: Its cell summaries.
        scale: Natural units to the report's display units.
        baseline_col: The column the others are compared with, or None.

    Returns:
        Markdown; "" for an experiment without such words.
    """
    fn = FINDINGS.get(name)
    return fn(summaries, scale, baseline_col) if fn is not None else ""
