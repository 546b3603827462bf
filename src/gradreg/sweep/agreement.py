"""Each cell of a report against the paper's printed number: the test, the verdict and the tally.

The test: Welch's t-test from the paper's summary (its mean, std and runs) where the paper
prints a std, else a one-sample t-test of our seeds against its single number; Bonferroni over
the m cells of the plan that the paper prints, tested yet or not, so that a verdict does not
move as the other cells' runs arrive.

The verdict rule (``verdict``):

- ``"too few seeds to judge"`` where the cell has fewer than ``MIN_SEEDS`` (3) seeds.
  With two seeds the test has one degree of freedom: its std rests on a single difference, the
  two-sided 5% critical value of t is 12.7 (4.3 at three seeds, 2.3 at ten), and Bonferroni
  over a 10-cell table raises it to 127, so a cell 10-100x away from the paper tests as
  "consistent". A "differs" from two seeds is no better founded: two seeds that happen to agree
  give a std far too small. So below three seeds there is no verdict either way.
- ``"differs"`` where ``p · m < alpha`` (the Bonferroni-adjusted p is below 0.05).
- ``"too few seeds to judge"`` also where the test could not have flagged a difference as
  large as the paper's own number: where ``Agreement.detectable``, the half-width of the
  Bonferroni 95% confidence interval of ours minus the paper's (each interval at level
  ``1 - alpha/m``), is at least ``|paper|``. A difference is flagged exactly when it exceeds
  that half-width, so such a cell would read "consistent" even if ours were zero or twice the
  paper's number: the seeds spread too widely for the verdict to mean anything.
- ``"consistent"`` otherwise: the test had the power to see a difference of the paper's size
  and did not find one.

The accuracy tables never meet the second condition (a difference of ~97 points is always
detectable); it catches noisy MSE cells whose seeds spread more than the paper's number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .. import stats

ALPHA = 0.05  # the family-wise significance level of the Bonferroni-corrected tests
MIN_SEEDS = 3  # fewer seeds than this give no verdict (see the module docstring)

CONSISTENT = "consistent"
DIFFERS = "differs"
TOO_FEW = "too few seeds to judge"
VERDICTS = (CONSISTENT, DIFFERS, TOO_FEW)

PAPER_RUNS = 10  # the paper's runs per cell where its table does not say

#: The rule in words, as a report states it above its verdicts.
RULE = (
    f"A verdict needs at least {MIN_SEEDS} seeds, and seeds that spread little enough for the test to detect a "
    "difference as large as the paper's own number (the half-width of the Bonferroni 95% confidence interval of "
    f"ours minus the paper's is below the paper's number); a cell that misses either reads *{TOO_FEW}*, not "
    f"*{CONSISTENT}*."
)


@dataclass(frozen=True)
class Agreement:
    """One cell against the paper's number, in the paper's units (accuracy in %, MSE in 1e-5).

    Attributes:
        row: The cell's row label.
        col: The cell's column label.
        ours: Our mean over the seeds.
        ours_std: Our sample std (ddof=1); NaN with one seed.
        n: Our seeds (runs that finished).
        paper: The paper's printed mean.
        paper_std: The paper's printed std, or None where it prints none.
        test: ``"Welch"``, ``"one-sample"``, or ``"none"`` (one seed: nothing to test).
        t: The t statistic (NaN without a test).
        df: The Welch-Satterthwaite degrees of freedom (NaN without a test or spread).
        p: The two-sided p-value (NaN without a test).
        m: Bonferroni's number of comparisons: the plan's cells that the paper prints.
        p_adj: ``min(1, p · m)`` (NaN without a test).
        detectable: The smallest ``|ours - paper|`` that the test flags: the half-width of the
            Bonferroni 95% confidence interval of the difference (NaN without a test).
        verdict: One of ``VERDICTS``, by the rule of the module docstring.
    """

    row: str
    col: str
    ours: float
    ours_std: float
    n: int
    paper: float
    paper_std: float | None
    test: str
    t: float
    df: float
    p: float
    m: int
    p_adj: float
    detectable: float
    verdict: str

    @property
    def cell(self) -> str:
        """``"row / col"``, as the reports name a cell."""
        return f"{self.row} / {self.col}"


def detectable_difference(se: float, df: float, m: int, alpha: float = ALPHA) -> float:
    """Half-width of the Bonferroni confidence interval of a difference: ``t_{1 - alpha/(2m), df} · se``.

    A two-sided t-test at level ``alpha / m`` rejects exactly when the difference exceeds this.

    Args:
        se: The standard error of the difference.
        df: Its degrees of freedom (NaN where ``se`` is 0).
        m: Bonferroni's number of comparisons.
        alpha: The family-wise level.

    Returns:
        The half-width; 0 where ``se`` is 0 (any difference is flagged).
    """
    if se == 0.0:
        return 0.0
    from scipy.special import stdtrit  # the t quantile; SciPy is imported when first needed

    return float(stdtrit(df, 1.0 - alpha / (2 * m))) * se


def verdict(n: int, p_adj: float, detectable: float, paper: float, alpha: float = ALPHA) -> str:
    """The verdict of one cell by the rule of the module docstring.

    Args:
        n: Our seeds.
        p_adj: The Bonferroni-adjusted p-value (NaN: no test, or ours equal to the paper's
            number with no spread on either side).
        detectable: The smallest difference the test flags (see ``detectable_difference``).
        paper: The paper's number.
        alpha: The family-wise level.

    Returns:
        One of ``VERDICTS``.
    """
    if n < MIN_SEEDS:
        return TOO_FEW
    if not math.isnan(p_adj) and p_adj < alpha:
        return DIFFERS
    if detectable > 0 and detectable >= abs(paper):
        return TOO_FEW
    return CONSISTENT


def paper_agreement(summaries: Sequence, table, scale: float, alpha: float = ALPHA) -> list[Agreement]:
    """Every cell with runs that the paper prints, against the paper's number.

    Args:
        summaries: The report's cells (``row``, ``col`` and ``test``, the test scores of the
            chosen candidate per seed, in natural units).
        table: The paper's table (``cells[(row, col)]`` with ``mean`` and ``std`` in its printed
            units, and ``n_runs``), or None.
        scale: Natural units to the table's printed units (100 for accuracy in %, 1e5 for MSE).
        alpha: The family-wise level.

    Returns:
        One ``Agreement`` per cell with at least one seed, in the order of ``summaries``;
        ``[]`` without a table. Seeds that all agree against a number without a std test as
        exact: p = 0 where the means differ.
    """
    if table is None:
        return []
    m = sum(1 for s in summaries if (s.row, s.col) in table.cells)
    paper_runs = getattr(table, "n_runs", None) or PAPER_RUNS
    out = []
    for s in summaries:
        paper = table.cells.get((s.row, s.col))
        if paper is None or not s.test:
            continue
        ours = [v * scale for v in s.test]
        n = len(ours)
        if n < 2:
            mean, std = ours[0], math.nan
            test, t, df, p, detectable = "none", math.nan, math.nan, math.nan, math.nan
        else:
            mean, std = stats.mean_std(ours)
            if paper.std is not None and paper.std > 0:
                test, paper_std, paper_n = "Welch", paper.std, paper_runs
            else:  # no spread on the paper's side: a one-sample test against its number
                test, paper_std, paper_n = "one-sample", 0.0, 2
            t, df, p = stats.welch_from_summary(mean, std, n, paper.mean, paper_std, paper_n)
            se = math.sqrt(std**2 / n + paper_std**2 / paper_n)
            detectable = detectable_difference(se, df, m, alpha)
        p_adj = stats.adjusted(p, m)
        out.append(
            Agreement(
                row=s.row,
                col=s.col,
                ours=mean,
                ours_std=std,
                n=n,
                paper=paper.mean,
                paper_std=paper.std,
                test=test,
                t=t,
                df=df,
                p=p,
                m=m,
                p_adj=p_adj,
                detectable=detectable,
                verdict=verdict(n, p_adj, detectable, paper.mean, alpha),
            )
        )
    return out


def count(rows: Iterable[Agreement]) -> dict[str, int]:
    """How many cells got each verdict.

    Args:
        rows: The cells.

    Returns:
        ``{verdict: count}`` for every one of ``VERDICTS``, in that order.
    """
    verdicts = [r.verdict for r in rows]
    return {v: verdicts.count(v) for v in VERDICTS}


def tally(rows: Sequence[Agreement]) -> str:
    """The cells' verdicts in a few words, as the README's headline gives them.

    Args:
        rows: The cells of one table.

    Returns:
        ``"all 6 cells consistent with the paper"``, ``"all 10 cells differ from the paper"``,
        ``"all 10 cells: too few seeds to judge"``, or the counts, e.g. ``"8 of 9 cells
        consistent, 1 differs"`` or ``"5 of 10 cells differ, 5 too few seeds to judge"``;
        ``""`` for no cells.
    """
    n = len(rows)
    counts = count(rows)
    if not n:
        return ""
    if counts[CONSISTENT] == n:
        return f"all {n} cells consistent with the paper"
    if counts[DIFFERS] == n:
        return f"all {n} cells differ from the paper"
    if counts[TOO_FEW] == n:
        return f"all {n} cells: {TOO_FEW}"
    said = [(k, _verdict_word(v, k)) for v, k in counts.items() if k]
    (first, word), rest = said[0], said[1:]
    return f"{first} of {n} cells {word}" + "".join(f", {k} {w}" for k, w in rest)


def _verdict_word(verdict: str, k: int) -> str:
    """How a count of ``k`` cells with ``verdict`` reads: "1 differs", "2 differ"."""
    if verdict == DIFFERS:
        return "differs" if k == 1 else "differ"
    return verdict
