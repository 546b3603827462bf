"""The paper's sentences about Figures 2 and 4, checked against cells whose means were chosen
so that each verdict and each number can be worked out by hand (and Welch's p by scipy)."""

from __future__ import annotations

import dataclasses

import pytest
from scipy import stats as sps

from gradreg.paper.claims import (
    accuracy_rises_then_collapses,
    checks,
    datagrad_best_at_every_size,
    effect_shrinks_but_stays,
    jacreg_below_its_peers,
    no_wd_datagrad_shrinks_weights,
    render,
    spectreg_lead_over_cp_evaporates,
    tally,
    with_wd_counteracts_then_reinforces,
)
from gradreg.paper.numbers import CLAIMS
from gradreg.sweep.report import CellSummary, render_markdown


def cell(row, x, mean, weight_norm_sq=1.0, spread=0.001, n=2, w_spread=1.0):
    """A cell of two seeds at mean ± spread, Σ‖w‖² at weight_norm_sq ± w_spread (n=0: not run yet)."""
    test = [mean - spread, mean + spread][:n]
    weights = [weight_norm_sq - w_spread, weight_norm_sq + w_spread][:n]
    return CellSummary(
        row=row,
        col=f"{x:g}",
        x=x,
        lam=None,
        n=len(test),
        test=test,
        dev_mean=mean,
        candidates=[],
        grad_norms={"train": 1.0, "test": 1.0, "off_manifold": 1.0},
        weight_norm_sq=weight_norm_sq,
        train_loss=0.1,
        curve=[],
        fit=None,
        runs=[{"metrics": {"test": t, "weight_norm_sq": w}} for t, w in zip(test, weights)],
    )


# --------------------------------------------------------------------------- Figure 2

FIG2 = {  # method: (mean at N=500, mean at N=10000)
    "Baseline": (0.900, 0.980),
    "DataGrad": (0.930, 0.985),
    "SpectReg": (0.925, 0.982),
    "CP": (0.915, 0.983),
}


def fig2_cells(means=FIG2):
    return [cell(row, n, m) for row, (small, large) in means.items() for n, m in ((500, small), (10000, large))]


def test_fig2_claims_hold_where_the_means_do_what_the_paper_says():
    cells = fig2_cells()
    best = datagrad_best_at_every_size(cells, 100)
    welch = {
        n: sps.ttest_ind(a, b, equal_var=False).pvalue
        for n, a, b in (
            (500, [0.929, 0.931], [0.924, 0.926]),  # DataGrad against SpectReg, the best other at 500
            (10000, [0.984, 0.986], [0.982, 0.984]),  # against CP at 10000
        )
    }
    assert best.verdict == "holds"
    assert best.evidence == (
        "DataGrad's mean against the best other curve: "
        f"N=500: +0.50 over SpectReg (Welch p {welch[500]:.2g}); N=10000: +0.20 over CP (Welch p {welch[10000]:.2g})."
    )
    lead = spectreg_lead_over_cp_evaporates(cells, 100)
    assert lead.verdict == "holds"
    assert "N=500 +1.00, N=10000 -0.10" in lead.evidence
    effect = effect_shrinks_but_stays(cells, 100)
    assert effect.verdict == "holds"
    assert "DataGrad +3.00 at N=500, +0.50 at N=10000; SpectReg +2.50 at N=500, +0.20 at N=10000" in effect.evidence
    assert "The paper's largest size, 20000, is not in this profile (largest here: 10000)." in effect.evidence
    jac = jacreg_below_its_peers(cells, 100)
    assert jac.verdict == "not checked" and "Table 6" in jac.evidence


def test_fig2_claims_fail_where_the_means_do_not():
    means = dict(FIG2) | {"SpectReg": (0.935, 0.984), "CP": (0.915, 0.979)}  # SpectReg best at 500, CP < baseline
    cells = fig2_cells(means)
    best = datagrad_best_at_every_size(cells, 100)
    assert best.verdict == "partly" and "N=500: -0.50 over SpectReg" in best.evidence
    lead = spectreg_lead_over_cp_evaporates(cells, 100)
    assert lead.verdict == "partly" and "N=10000 +0.50" in lead.evidence and "still there" in lead.evidence
    effect = effect_shrinks_but_stays(cells, 100)
    assert effect.verdict == "partly" and "CP +1.50 at N=500, -0.10 at N=10000" in effect.evidence
    with_jacreg = cells + [cell("JacReg", 500, 0.91), cell("JacReg", 10000, 0.990)]
    jac = jacreg_below_its_peers(with_jacreg, 100)  # below CP at 500 (-0.50), above every peer at 10000
    assert jac.verdict == "partly" and "N=500: -0.50 against CP" in jac.evidence


def test_fig2_report_says_when_its_lambdas_were_not_tuned_per_size():
    plan = {"name": "fig2", "title": "t", "metric": "accuracy", "kind": "figure", "cells": [], "seeds": [1, 2]}
    losses = {("DataGrad", 500): 0.0022, ("DataGrad", 10000): 0.22, ("Baseline", 500): 0.0007}
    cells = [dataclasses.replace(c, train_loss=losses.get((c.row, c.x), c.train_loss)) for c in fig2_cells()]
    md = render_markdown(plan, cells, [], [])
    assert "## The paper's claims about this figure, checked" in md
    assert "the paper tuned each point of its Figure 2 on the dev set" in md
    assert (  # each row's cells, smallest size first, to two significant digits
        "DataGrad's training loss (the data term over the last training steps) is 0.0022 at N=500, 0.22 at "
        "N=10000; the Baseline's is 0.0007 at N=500, 0.1 at N=10000." in md
    )
    tuned = fig2_cells()
    tuned[2] = dataclasses.replace(
        tuned[2], candidates=[{"lambda": lam, "n": 2, "dev_mean": 0.9, "test_mean": 0.9} for lam in (1.0, 10.0)]
    )
    assert "the paper tuned each point" not in render_markdown(plan, tuned, [], [])


def test_a_claim_waits_for_cells_not_run_and_names_them():
    cells = fig2_cells()
    cells[0] = cell("Baseline", 500, 0.9, n=0)
    found = checks("fig2", cells, 100)
    assert [c.verdict for c in found] == ["not checked"] * 4
    assert found[0].evidence == "waits for 1 cell(s) not run yet: Baseline / 500."


# --------------------------------------------------------------------------- Figure 4

LAMS = (0, 0.01, 1, 10, 50, 100)


def panel(row, accs, weights, w_spread=1.0):
    return [cell(row, lam, a, w, w_spread=w_spread) for lam, a, w in zip(LAMS, accs, weights)]


def test_fig4_without_a_collapse_the_rise_holds_and_the_collapse_is_said_not_to():
    cells = panel("wd=0", [0.9725, 0.9727, 0.974, 0.976, 0.978, 0.977], [200, 190, 150, 100, 60, 40]) + panel(
        "wd=0.0005", [0.9736, 0.974, 0.975, 0.977, 0.9784, 0.976], [50, 55, 60, 70, 65, 50]
    )
    acc = accuracy_rises_then_collapses(cells, 100)
    assert acc.verdict == "partly"  # both panels rise to λ=10; neither falls below λ=0 at 50 or 100
    assert (
        "wd=0: λ=0 97.25, λ=0.01 97.27, λ=1 97.40, λ=10 97.60, λ=50 97.80, λ=100 97.70 "
        "(best at λ = 50, then not below λ = 0's up to λ = 100)" in acc.evidence
    )
    assert "is: wd=0 beyond the grid, wd=0.0005 beyond the grid." in acc.evidence
    # the paper's own Table 4 (both rows at λ = 50), as printed
    assert "no WD: 97.95 against NoGR 97.25; WD=0.0005: 97.92 against NoGR 97.40" in acc.evidence
    shrink = no_wd_datagrad_shrinks_weights(cells, 100)
    assert shrink.verdict == "holds"
    assert shrink.evidence == (
        "Mean Σ‖w‖² without weight decay: λ=0 200.0, λ=0.01 190.0, λ=1 150.0, λ=10 100.0, λ=50 60.0, λ=100 40.0."
    )
    wd = with_wd_counteracts_then_reinforces(cells, 100)
    assert wd.verdict == "holds"
    assert "Taking the transition the paper's λ ≈ 20: below it Σ‖w‖² rises, from it on it falls." in wd.evidence


def test_fig4_claims_hold_on_a_collapse_and_fail_on_the_opposite_trends():
    cells = panel("wd=0", [0.9725, 0.973, 0.975, 0.976, 0.960, 0.950], [200, 210, 150, 160, 60, 40]) + panel(
        "wd=0.0005", [0.9736, 0.973, 0.974, 0.975, 0.970, 0.969], [50, 45, 40, 35, 30, 25]
    )
    acc = accuracy_rises_then_collapses(cells, 100)
    assert acc.verdict == "holds" and "is not around" not in acc.evidence
    assert "(best at λ = 10, then below λ = 0's at λ = 50)" in acc.evidence
    late = panel("wd=0", [0.9709, 0.9725, 0.9752, 0.9778, 0.9780, 0.9580], [1] * 6)  # our runs' shape
    acc = accuracy_rises_then_collapses(late, 100)
    assert acc.verdict == "partly" and "(best at λ = 50, then below λ = 0's at λ = 100)" in acc.evidence
    assert "The collapse is not around λ = 20 here" in acc.evidence and "is: wd=0 at λ = 100." in acc.evidence
    # 200 → 40, but up by 10 twice on the way, far beyond seeds at ± 1
    shrink = no_wd_datagrad_shrinks_weights(cells, 100)
    p = sps.ttest_ind([199, 201], [209, 211], equal_var=False).pvalue
    assert shrink.verdict == "partly"
    assert f"λ=0 → 0.01 goes the other way by 10.0, beyond the seeds' spread (Welch p {p:.2g})." in shrink.evidence
    wd = with_wd_counteracts_then_reinforces(cells, 100)  # falls throughout: no rise before the collapse at 50
    assert wd.verdict == "partly"
    assert "Taking the transition where accuracy collapses here, λ = 50: below it Σ‖w‖² does not rise" in wd.evidence
    # the same steps up inside seeds at ± 20: the trend holds, and the steps are named as within the spread
    noisy = panel("wd=0", [0.9725, 0.973, 0.975, 0.976, 0.960, 0.950], [200, 210, 150, 160, 60, 40], w_spread=20)
    shrink = no_wd_datagrad_shrinks_weights(noisy, 100)
    assert (
        shrink.verdict == "holds" and "λ=1 → 10 goes the other way by 10.0, within the seeds' spread" in shrink.evidence
    )
    rising = panel("wd=0", [0.97] * 6, [10, 20, 30, 40, 50, 60])
    assert no_wd_datagrad_shrinks_weights(rising, 100).verdict == "does not hold"


def test_fig4_weights_use_the_transition_where_these_runs_collapse():
    """Our runs' shape: accuracy collapses at λ = 100, and Σ‖w‖² rises up to 50 and falls at 100
    (with a dip at 0.01 inside the seeds' spread)."""
    cells = panel("wd=0", [0.9709, 0.9725, 0.9752, 0.9778, 0.9780, 0.9580], [392, 402, 358, 339, 316, 236], 15) + panel(
        "wd=0.0005", [0.9729, 0.9730, 0.9751, 0.9778, 0.9771, 0.9593], [112, 108, 169, 206, 220, 138], 15
    )
    wd = with_wd_counteracts_then_reinforces(cells, 100)
    assert wd.verdict == "holds"
    assert (
        "Taking the transition where accuracy collapses here, λ = 100: below it Σ‖w‖² rises, from it on it falls"
        in (wd.evidence)
    )
    assert "λ=0 → 0.01 goes the other way by 4.0, within the seeds' spread" in wd.evidence
    assert no_wd_datagrad_shrinks_weights(cells, 100).verdict == "holds"  # the step up at 0.01 is within ± 15


def test_fig4_report_prints_each_sentence_with_its_verdict_and_the_index_counts_them(tmp_path):
    cells = panel("wd=0", [0.9725, 0.9727, 0.974, 0.976, 0.978, 0.977], [200, 190, 150, 100, 60, 40]) + panel(
        "wd=0.0005", [0.9736, 0.974, 0.975, 0.977, 0.9784, 0.976], [50, 55, 60, 70, 65, 50]
    )
    plan = {"name": "fig4", "title": "t", "metric": "accuracy", "kind": "figure", "cells": [], "seeds": [1, 2]}
    md = render_markdown(plan, cells, [], [])
    section = md.split("## The paper's claims about this figure, checked\n\n")[1].split("\n\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| (")]
    assert len(rows) == 3
    for row, key in zip(
        rows,
        (
            "fig4_accuracy_rises_then_collapses",
            "fig4_no_wd_datagrad_shrinks_weights",
            "fig4_with_wd_counteracts_then_reinforces",
        ),
    ):
        assert CLAIMS[key].quote in row
    assert [r.rsplit("**", 2)[1] for r in rows] == ["partly", "holds", "holds"]
    assert tally(checks("fig4", cells, 100)) == "the paper's 3 claims about it: 2 holds, 1 partly"
    assert render([]) == ""
    from gradreg.sweep.figures import draw_figures

    (png,) = draw_figures(plan, cells, tmp_path, stem="fig4.published")  # two panels: one row of two
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("key", sorted(CLAIMS))
def test_every_claim_has_a_check_on_its_figure(key):
    from gradreg.paper.claims import CHECKS

    checked = {c(fig2_cells() if CLAIMS[key].figure == "fig2" else [], 100).claim for c in CHECKS[CLAIMS[key].figure]}
    assert key in checked


# --------------------------------------------------------------------------- Table 6


def table6_cells(spect, jac, frob, n=10, spread=0.001):
    """Table 6's three cells, n seeds each, evenly spread at mean ± spread."""
    out = []
    for col, mean in (("SpectReg", spect), ("JacReg", jac), ("FrobReg", frob)):
        test = [mean + spread * (2 * i / (n - 1) - 1) for i in range(n)]
        out.append(dataclasses.replace(cell("LeNet", 0, mean), col=col, x=None, n=n, test=test))
    return out


def _adjusted(a, b):
    return min(1.0, sps.ttest_ind(a.test, b.test, equal_var=False).pvalue * 3)


def test_table6_claims_hold_where_only_spectreg_beats_jacreg():
    cells = table6_cells(0.9780, 0.9760, 0.9770, spread=0.0015)
    spect, jac, frob = cells
    # scipy, independently: only SpectReg - JacReg survives Bonferroni over the three pairs
    assert _adjusted(spect, jac) < 0.05 <= min(_adjusted(spect, frob), _adjusted(frob, jac))
    found = checks("table6", cells, 100)
    assert [c.verdict for c in found] == ["holds", "holds", "holds"]
    assert f"SpectReg − JacReg +0.20 (Bonferroni-adjusted p {_adjusted(spect, jac):.2g})" in found[0].evidence
    assert "FrobReg − SpectReg -0.10" in found[1].evidence
    assert found[2].evidence == "SpectReg − JacReg +0.20; FrobReg − JacReg +0.10."


def test_table6_claims_fail_where_the_full_jacobian_wins_and_no_pair_differs():
    # FrobReg clearly above SpectReg (the projection loses), JacReg on top (probabilities win)
    cells = table6_cells(0.9700, 0.9800, 0.9760, spread=0.002)
    found = checks("table6", cells, 100)
    assert [c.verdict for c in found] == ["partly", "does not hold", "does not hold"]
    # no pair differs at all: the two quiet pairs agree with the caption, SpectReg - JacReg does not
    quiet = checks("table6", table6_cells(0.978, 0.978, 0.978, spread=0.01), 100)
    assert quiet[0].verdict == "partly" and quiet[1].verdict == "holds"


def test_table6_claims_wait_for_every_cell():
    spect, jac, frob = table6_cells(0.978, 0.976, 0.977)
    empty = dataclasses.replace(frob, n=0, test=[], runs=[])
    found = checks("table6", [spect, jac, empty], 100)
    assert {c.verdict for c in found} == {"not checked"}
    assert "LeNet / FrobReg" in found[0].evidence
