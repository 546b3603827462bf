"""Verdicts against the paper, on hand-made cells: the exact verdict strings, the p-values and the
confidence interval checked against scipy, the tally the README prints, and a quick-profile
report that states the rule instead of calling a two-seed cell consistent."""

import json
import math
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
from scipy import stats as sps

from gradreg.paper.plan import ReportPlan
from gradreg.sweep.agreement import MIN_SEEDS, TOO_FEW, count, paper_agreement, tally, verdict
from gradreg.sweep.index import status
from gradreg.sweep.report import render_markdown, significance, summarize_cell

ROOT = Path(__file__).resolve().parents[1]

# the paper's side: "acc" prints a std over 10 runs (Table 1's kind), "mse" one number (Table 7's)
TABLE = SimpleNamespace(
    n_runs=10,
    cells={
        ("r", "acc"): SimpleNamespace(mean=97.0, std=0.2),
        ("r", "mse"): SimpleNamespace(mean=16.6, std=None),
        ("r", "one"): SimpleNamespace(mean=97.0, std=0.2),
        ("r", "wide"): SimpleNamespace(mean=16.6, std=None),
    },
)
M = len(TABLE.cells)  # Bonferroni over every cell the paper prints


def _agree(col: str, test: list, scale: float):
    """Cell ``col`` with seeds ``test`` (natural units), judged in a table where every cell the
    paper prints has those seeds: Bonferroni over M."""
    summaries = [SimpleNamespace(row=r, col=c, test=test) for r, c in TABLE.cells]
    (row,) = [r for r in paper_agreement(summaries, TABLE, scale) if r.col == col]
    assert row.m == M
    return row


def test_one_seed_gets_no_test_and_no_verdict():
    r = _agree("one", [0.99], 100.0)
    assert (r.verdict, r.test, r.n) == ("too few seeds to judge", "none", 1)
    assert math.isnan(r.p) and math.isnan(r.p_adj) and math.isnan(r.ours_std) and r.ours == pytest.approx(99.0)


def test_two_seeds_far_from_the_paper_are_too_few_not_consistent():
    """Table 7's quick profile: two seeds 24-36x the paper's number used to read "consistent"."""
    seeds = [400e-5, 600e-5]  # 400 and 600 in the paper's 1e-5 units, against 16.6
    r = _agree("mse", seeds, 1e5)
    p = sps.ttest_1samp([400.0, 600.0], 16.6).pvalue
    assert r.p == pytest.approx(p, rel=1e-9) and r.p_adj == pytest.approx(min(1.0, M * p), rel=1e-9)
    assert r.p_adj >= 0.05  # the test alone would have said "consistent"
    assert r.verdict == "too few seeds to judge" and r.test == "one-sample"


def test_three_seeds_with_a_tiny_spread_that_differ():
    seeds = [0.9900, 0.9901, 0.9899]
    r = _agree("acc", seeds, 100.0)
    ours = [100 * v for v in seeds]
    p = sps.ttest_ind_from_stats(
        statistics.mean(ours), statistics.stdev(ours), 3, 97.0, 0.2, 10, equal_var=False
    ).pvalue
    assert r.p == pytest.approx(p, rel=1e-9) and r.p_adj < 0.05
    assert (r.verdict, r.test, r.n) == ("differs", "Welch", MIN_SEEDS)


def test_ten_seeds_near_the_paper_are_consistent():
    seeds = [0.970, 0.972, 0.968, 0.971, 0.969, 0.973, 0.967, 0.970, 0.971, 0.969]
    r = _agree("acc", seeds, 100.0)
    ours = [100 * v for v in seeds]
    p = sps.ttest_ind_from_stats(
        statistics.mean(ours), statistics.stdev(ours), 10, 97.0, 0.2, 10, equal_var=False
    ).pvalue
    assert r.p == pytest.approx(p, rel=1e-9) and r.p_adj == pytest.approx(min(1.0, M * p), rel=1e-9)
    assert r.verdict == "consistent"
    assert r.detectable < 1.0  # a tenth-of-a-point test: far below the paper's 97


def test_ten_seeds_spread_wider_than_the_paper_number_are_too_few():
    """Not significant, but the Bonferroni 95% interval of ours minus the paper's is wider than
    the paper's number on either side: ours at 0 or twice the paper's would test the same."""
    ours = [30.0, -20.0, 80.0, 5.0, 60.0, -10.0, 45.0, 25.0, 70.0, -35.0]  # in 1e-5; mean 25
    r = _agree("wide", [v * 1e-5 for v in ours], 1e5)
    res = sps.ttest_1samp(ours, 16.6)
    assert r.p == pytest.approx(res.pvalue, rel=1e-9) and r.p_adj >= 0.05
    ci = res.confidence_interval(confidence_level=1 - 0.05 / M)
    assert r.detectable == pytest.approx((ci.high - ci.low) / 2, rel=1e-9)
    assert r.detectable >= 16.6 and r.verdict == "too few seeds to judge"
    # the same spread around a paper number larger than the interval: judged
    assert verdict(10, r.p_adj, r.detectable, 10 * r.detectable) == "consistent"


def test_the_explanations_read_differences_by_the_same_seed_rule():
    from gradreg.paper import explanations

    assert explanations.MIN_SEEDS == MIN_SEEDS


def test_verdict_rule_edges():
    assert verdict(2, 1e-9, 0.1, 97.0) == TOO_FEW  # even a tiny p: two seeds give no verdict
    assert verdict(3, 0.049, 1e9, 1.0) == "differs"  # a significant difference needs no power
    assert verdict(3, 0.05, 0.5, 1.0) == "consistent"  # p_adj < alpha is strict
    assert verdict(3, math.nan, 0.0, 1.0) == "consistent"  # identical seeds equal to the paper's number


@pytest.mark.parametrize(
    "verdicts, words",
    [
        (["consistent"] * 6, "all 6 cells consistent with the paper"),
        (["differs"] * 10, "all 10 cells differ from the paper"),
        ([TOO_FEW] * 10, "all 10 cells: too few seeds to judge"),
        (["consistent"] * 8 + ["differs"], "8 of 9 cells consistent, 1 differs"),
        (["consistent", "differs", "differs", TOO_FEW], "1 of 4 cells consistent, 2 differ, 1 too few seeds to judge"),
        (["differs", TOO_FEW, TOO_FEW], "1 of 3 cells differs, 2 too few seeds to judge"),
    ],
)
def test_tally_counts_every_verdict(verdicts, words):
    rows = [SimpleNamespace(verdict=v) for v in verdicts]
    assert tally(rows) == words
    assert sum(count(rows).values()) == len(verdicts)


def test_index_status_never_calls_unjudged_cells_reproduced():
    def rows(*verdicts):
        return tuple(SimpleNamespace(verdict=v, cell=f"r / {i}") for i, v in enumerate(verdicts))

    assert status(20, 20, rows(TOO_FEW, TOO_FEW), (), True) == "not judged: 2 of 2 cells have too few seeds to judge"
    assert status(20, 20, rows("differs", TOO_FEW), (), True) == (
        "differs in 1 of 2 cells: r / 0; 1 with too few seeds to judge"
    )
    assert status(20, 20, rows("consistent"), (), True) == "reproduced: all 1 cells consistent with the paper"


def _row(key, test):
    return {
        "run_key": key,
        "error": None,
        "device": "cpu",
        "torch_version": "t",
        "code_version": "v",
        "wall_time_s": 1.0,
        "curve": [{"step": 1, "dev": test, "test": test, "train_loss": 0.1}],
        "metrics": {
            "dev": test,
            "test": test,
            "train_loss": 0.1,
            "weight_norm_sq": 2.0,
            "grad_norms": {"train": 1.0, "test": 2.0, "off_manifold": 3.0},
            "fit": None,
        },
    }


def test_a_quick_table7_report_states_the_rule_and_calls_no_two_seed_cell_consistent():
    """The demo's case: Table 7 at two seeds, every cell 10-100x above the paper."""
    cols = ["0", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3", "1", "3", "10"]
    rows, cells = {}, []
    for j, col in enumerate(cols):
        keys = [f"{col}-{i}" for i in range(2)]
        rows |= {k: _row(k, (300 + 100 * i + j) * 1e-5) for i, k in enumerate(keys)}
        cells.append(
            {"row": "SpectReg", "col": col, "x": float(col), "candidates": [{"lambda": float(col), "runs": keys}]}
        )
    plan = {"name": "table7", "title": "SIN", "metric": "mse", "kind": "table", "paper_table": "table7"}
    plan |= {"cells": cells, "seeds": [1, 2], "profile": "quick", "profile_note": "2 seeds"}
    summaries = [summarize_cell(c, rows, "mse") for c in cells]
    md = render_markdown(plan, summaries, significance(summaries, plan), list(rows.values()))
    head = md.split("\nhardware:")[0]
    assert "\nverdicts: 10 of 10 cells compared with the paper read *too few seeds to judge*. " in head
    assert "A verdict needs at least 3 seeds" in head
    verdicts = [line.rsplit("|", 2)[1].strip() for line in md.splitlines() if line.startswith("| SpectReg / ")]
    assert verdicts[:10] == ["too few seeds to judge"] * 10
    assert "| consistent |" not in md and "## Where we differ" not in md


def test_a_published_report_without_thin_cells_has_no_verdict_note():
    seeds = [0.970, 0.972, 0.968]
    rows = {f"k{i}": _row(f"k{i}", v) for i, v in enumerate(seeds)}
    cell = {
        "row": "LeNet unregularized",
        "col": "NoGR",
        "x": None,
        "candidates": [{"lambda": None, "runs": list(rows)}],
    }
    plan = {"name": "table1", "title": "t", "metric": "accuracy", "paper_table": "table1", "cells": [cell]}
    summaries = [summarize_cell(cell, rows, "accuracy")]
    md = render_markdown(plan, summaries, [], list(rows.values()))
    assert "\nverdicts:" not in md and "| consistent |" in md and "A verdict needs at least 3 seeds" in md


def test_every_committed_plan_round_trips_through_report_plan():
    plans = json.loads((ROOT / "results" / "records" / "plans.json").read_text())
    for key, stored in plans.items():
        plan = ReportPlan.of(stored)
        assert plan.to_dict() == stored, key
        assert ReportPlan.of(plan) is plan
        assert len(plan.run_keys()) == len(
            {k for c in stored["cells"] for cand in c["candidates"] for k in cand["runs"]}
        ), key


@pytest.mark.parametrize("seeds", [2, 3])
def test_the_fastgr_words_name_a_lazy_shortfall_only_from_three_seeds(seeds):
    """Two seeds print the numbers and the pointer to where lazy's shortfall was traced, but name
    no cell as falling short; three seeds name it, with its adjusted p from the Welch test."""

    def runs(name, test, j, loss):
        out = {}
        for i in range(seeds):
            r = _row(f"{name}{i}", test + 0.001 * i)
            r["metrics"] |= {"train_loss": loss, "grad_norms": {"train": j, "test": j, "off_manifold": j}}
            out[r["run_key"]] = r
        return out

    rows = runs("e", 0.978, 2.5, 0.014) | runs("l", 0.970, 1.2, 0.12)
    cells = [
        {
            "row": "DataGrad",
            "col": c,
            "x": None,
            "candidates": [{"lambda": 50.0, "runs": [f"{k}{i}" for i in range(seeds)]}],
        }
        for c, k in {"exact": "e", "lazy k=4": "l"}.items()
    ]
    plan = {"name": "fastgr", "title": "t", "metric": "accuracy", "baseline_col": "exact", "cells": cells}
    summaries = [summarize_cell(c, rows, "accuracy") for c in cells]
    tests = significance(summaries, plan)
    md = render_markdown(plan, summaries, tests, list(rows.values()))
    assert "- DataGrad / lazy k=4: -0.80 points against exact" in md and "`results/lazy/`" in md
    named = f"DataGrad / lazy k=4 (p adjusted {tests[0].p_adj:.3g}) scores below exact"
    assert (named in md) == (seeds >= 3)
    p = sps.ttest_ind([0.970 + 0.001 * i for i in range(seeds)], [0.978 + 0.001 * i for i in range(seeds)]).pvalue
    assert tests[0].p_adj == pytest.approx(p, rel=1e-6)  # equal spreads: Welch is Student's t here
