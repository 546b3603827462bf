"""Experiment specs, the sweep runner and reports rebuilt from the store."""

import dataclasses
import math

import pytest

import gradreg as gr
from gradreg import stats
from gradreg.cli import main
from gradreg.paper.experiments import EXPERIMENTS, PROFILES, Experiment, build, grid_for
from gradreg.paper.numbers import LAMBDA_GRIDS, TABLES
from gradreg.sweep.report import build_report, significance, summarize_cell, write_report
from gradreg.sweep.runner import STORE_NAME, InProcessExecutor, run_experiment
from gradreg.sweep.store import Store, run_key


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_experiment_builds_for_every_profile(name):
    for profile in PROFILES:
        exp = build(name, profile)
        runs = exp.runs()
        assert runs and len(runs) == len(set(runs))
        plan = exp.plan()
        assert plan["name"] == name and len(plan["cells"]) == len(exp.cells)
        if exp.paper_table:
            table = TABLES[exp.paper_table]
            labels = {(c.row, c.col) for c in exp.cells}
            if exp.name == exp.paper_table:
                assert set(table.cells) <= labels, set(table.cells) - labels  # every paper cell is reproduced
            else:  # a check of some of a table's cells (table1_bn): each of them is a paper cell
                assert labels <= set(table.cells), labels - set(table.cells)


def test_paper_profile_uses_the_papers_grids_seeds_and_steps():
    exp = build("table1", "paper")
    assert exp.seeds == tuple(range(1, 11))
    dg = next(c for c in exp.cells if (c.row, c.col) == ("LeNet Dropout", "DataGrad"))
    assert tuple(lam for lam, _ in dg.candidates) == LAMBDA_GRIDS["DataGrad"]
    assert all(cfg.steps == 10_000 and cfg.batch_size == 50 for _, cfg in dg.candidates)
    # 3 rows x (1 + 14 + 9 lambdas) x 10 seeds
    assert len(exp.runs()) == 3 * (1 + 14 + 9) * 10


def test_cp_weights_are_converted_to_per_example_means():
    exp = build("table2", "paper")
    cp = next(c for c in exp.cells if (c.row, c.col) == ("CP", "No GR"))
    lams = [lam for lam, _ in cp.candidates]
    assert lams == pytest.approx([g * 50 for g in LAMBDA_GRIDS["CP"]])
    combo = next(c for c in exp.cells if (c.row, c.col) == ("CP", "DataGrad"))
    assert all(gr.ConfidencePenalty(0.5) in cfg.regularizers for _, cfg in combo.candidates)


def test_coarse_grid_brackets_the_tuned_weight():
    assert grid_for("DataGrad", 50, PROFILES["quick"]) == (10, 50, 100)
    assert grid_for("SpectReg", 0.03, PROFILES["quick"]) == (0.003, 0.03, 0.3)


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="valid: table1"):
        build("table9")
    with pytest.raises(ValueError, match="valid: paper, published, quick"):
        build("table1", "huge")


# --------------------------------------------------------------------------- report logic


def _row(key, dev, test, error=None):
    return {
        "run_key": key,
        "error": error,
        "curve": [{"step": 1, "dev": dev, "test": test, "train_loss": 0.1}],
        "metrics": {
            "dev": dev,
            "test": test,
            "train_loss": 0.1,
            "weight_norm_sq": 2.0,
            "grad_norms": {"train": 1.0, "test": 2.0, "off_manifold": 3.0},
            "fit": None,
        },
    }


def test_tuning_picks_best_mean_dev_and_reports_its_test_scores():
    cell = {
        "row": "r",
        "col": "c",
        "x": None,
        "candidates": [{"lambda": 1.0, "runs": ["a1", "a2"]}, {"lambda": 10.0, "runs": ["b1", "b2"]}],
    }
    rows = {
        "a1": _row("a1", 0.90, 0.80),
        "a2": _row("a2", 0.92, 0.82),
        "b1": _row("b1", 0.95, 0.70),
        "b2": _row("b2", 0.93, 0.72),
    }
    s = summarize_cell(cell, rows, "accuracy")
    assert s.lam == 10.0 and s.test == [0.70, 0.72]  # chosen on dev, not on test
    assert s.mean == pytest.approx(0.71) and s.std == pytest.approx(math.sqrt(2e-4))  # ddof=1
    mse = summarize_cell(cell, rows, "mse")  # lower is better
    assert mse.lam == 1.0


def test_diverged_runs_are_counted_not_averaged():
    cell = {"row": "r", "col": "c", "x": None, "candidates": [{"lambda": 1.0, "runs": ["a1", "a2"]}]}
    rows = {"a1": _row("a1", 0.9, 0.8), "a2": _row("a2", math.nan, math.nan, error="step 3: diverged")}
    s = summarize_cell(cell, rows, "accuracy")
    assert s.n == 1 and s.errors == 1 and s.mean == pytest.approx(0.8)


def test_significance_is_welch_with_bonferroni_over_the_table():
    def cell(row, col, keys):
        return {"row": row, "col": col, "x": None, "candidates": [{"lambda": None, "runs": keys}]}

    values = {
        "base": [0.970, 0.972, 0.968, 0.971],
        "big": [0.980, 0.982, 0.979, 0.981],
        "same": [0.971, 0.969, 0.970, 0.972],
    }
    rows, cells = {}, []
    for col, vals in values.items():
        keys = [f"{col}{i}" for i in range(len(vals))]
        rows |= {k: _row(k, v, v) for k, v in zip(keys, vals)}
        cells.append(cell("r", col, keys))
    summaries = [summarize_cell(c, rows, "accuracy") for c in cells]
    tests = significance(summaries, {"baseline_col": "base"})
    assert len(tests) == 2
    by = {t[0][1]: t for t in tests}
    t, df, p = stats.welch_t_test(values["big"], values["base"])
    assert by["big"][4] == pytest.approx(p) and by["big"][5] == pytest.approx(min(1.0, 2 * p))
    assert by["big"][6] and not by["same"][6]


def test_fastgr_report_says_what_each_lazy_cell_does_against_exact():
    """The lazy shortfall is said where a reader of the report looks: each lazy cell's gap to
    exact, its smoothness and its training loss, from the cells' own runs."""
    from gradreg.sweep.report import render_markdown

    def runs(name, tests, j, loss):
        out = {}
        for i, t in enumerate(tests):
            r = _row(f"{name}{i}", t, t)
            r["metrics"] |= {"train_loss": loss, "grad_norms": {"train": j, "test": j, "off_manifold": j}}
            out[r["run_key"]] = r
        return out

    rows = runs("e", [0.978, 0.980], 2.5, 0.014) | runs("l", [0.975, 0.977], 1.2, 0.12)
    rows |= runs("f", [0.979, 0.981], 2.4, 0.015)
    cols = {"exact": "e", "lazy k=4": "l", "finite difference": "f"}
    cells = [
        {"row": "DataGrad", "col": c, "x": None, "candidates": [{"lambda": 50.0, "runs": [f"{k}0", f"{k}1"]}]}
        for c, k in cols.items()
    ]
    plan = {"name": "fastgr", "title": "t", "metric": "accuracy", "kind": "table", "baseline_col": "exact"}
    plan |= {"cells": cells, "seeds": [1, 2]}
    summaries = [summarize_cell(c, rows, "accuracy") for c in cells]
    md = render_markdown(plan, summaries, significance(summaries, plan), list(rows.values()))
    section = md.split("## What the comparisons show\n\n")[1].split("\n\n")[0]
    # (97.6 - 97.9) points, and the lazy cell's own probes; the FD column is not lazy
    assert section == (
        "- DataGrad / lazy k=4: -0.30 points against exact; mean ||J||_F at test points 1.20 (exact 2.50); "
        "training loss 0.1200 (exact 0.0140)."
    )
    assert "results/lazy/" in md
    assert "What the comparisons show" not in render_markdown(
        plan | {"name": "fastgr_sin"}, summaries, significance(summaries, plan), list(rows.values())
    )


def test_fig2_lambda_report_says_which_weight_the_dev_set_picks_and_what_lambda_50_loses():
    from gradreg.sweep.report import render_markdown

    # dev picks 10 (0.990 > 0.985 > 0.980), test: Baseline 0.985, λ=10 0.987, λ=50 0.980
    values = {"b": (0.970, [0.984, 0.986]), "10": (0.990, [0.986, 0.988]), "50": (0.980, [0.979, 0.981])}
    values["20"] = (0.985, [0.988, 0.990])  # the best test mean, not picked: dev says 10
    rows, runs = {}, {}
    for k, (dev, tests) in values.items():
        runs[k] = [f"{k}-{i}" for i in range(2)]
        rows |= {key: _row(key, dev, t) for key, t in zip(runs[k], tests)}
    for key, row in rows.items():  # training loss: Baseline 0.001, rising with λ
        row["metrics"]["train_loss"] = {"b": 0.001, "10": 0.01, "20": 0.02, "50": 0.2}[key.split("-")[0]]
    cand = {lam: {"lambda": float(lam), "runs": runs[lam]} for lam in ("10", "20", "50")}
    cells = [{"row": "10000", "col": "Baseline", "x": None, "candidates": [{"lambda": None, "runs": runs["b"]}]}]
    cells += [{"row": "10000", "col": f"DataGrad λ={k}", "x": None, "candidates": [c]} for k, c in cand.items()]
    cells.append({"row": "10000", "col": "tuned", "x": None, "candidates": list(cand.values())})
    plan = {"name": "fig2_lambda", "title": "t", "metric": "accuracy", "kind": "table", "baseline_col": "Baseline"}
    plan |= {"cells": cells, "seeds": [1, 2]}
    summaries = [summarize_cell(c, rows, "accuracy") for c in cells]
    tests = significance(summaries, plan)
    md = render_markdown(plan, summaries, tests, list(rows.values()))
    section = md.split("## What the comparisons show\n\n")[1].split("\n\n")[0]
    p_tuned = next(t[5] for t in tests if t[0][1] == "tuned")
    assert section == (
        "- The dev set picks λ = 10, the smallest weight tried (smaller ones were not): test 98.70 (0.14), +0.20 "
        f"points against the Baseline's 98.50 (p adjusted {p_tuned:.3g}).\n"
        "- The best test mean among the fixed weights is λ = 20's, 98.90.\n"
        "- Training loss (the data term over the last training steps): Baseline 0.001, λ = 10 0.01, λ = 20 0.02, "
        "λ = 50 0.2. The stronger the weight, the higher the training loss after the run's steps.\n"
        "- Figure 2's point here, λ = 50 (the weight published for 2000 points), scores 98.00: -0.70 against the "
        "dev-tuned weight."
    )


# --------------------------------------------------------------------------- end to end


def tiny_sin_experiment() -> Experiment:
    exp = build("table7", "quick")
    cells = tuple(
        dataclasses.replace(
            c, candidates=tuple((lam, cfg.replace(steps=30, eval_every=10)) for lam, cfg in c.candidates)
        )
        for c in exp.cells[:3]
    )
    return dataclasses.replace(exp, cells=cells, seeds=(1, 2))


def test_sweep_stores_every_run_once_and_rerun_trains_nothing(tmp_path):
    exp = tiny_sin_experiment()
    first = run_experiment(exp, tmp_path, InProcessExecutor(), log=lambda *_: None)
    assert (first.planned, first.trained) == (6, 6)
    again = run_experiment(exp, tmp_path, InProcessExecutor(), log=lambda *_: None)
    assert (again.already_stored, again.trained) == (6, 0)
    with Store(tmp_path / STORE_NAME) as store:
        assert store.count("table7") == 6
        assert store.keys("table7") == {run_key(c.to_dict()) for c in exp.runs()}
        rows = store.rows("table7")
    assert all(r["metrics"]["fit"] and len(r["metrics"]["fit"]) == 900 for r in rows)


def test_report_is_rebuilt_from_the_store_alone(tmp_path):
    exp = tiny_sin_experiment()
    run_experiment(exp, tmp_path, InProcessExecutor(), log=lambda *_: None)
    rep = build_report(tmp_path / STORE_NAME, "table7")
    md = rep["markdown"]
    assert "| SpectReg |" in md and "paper 16.60" in md and "n=2" in md and "Global smoothness" in md
    # the CSV's means are the stored test scores, rescaled to the paper's unit (1e-5)
    with Store(tmp_path / STORE_NAME) as store:
        rows = {r["run_key"]: r for r in store.rows("table7")}
    first = exp.cells[0]
    tests = [rows[run_key(first.candidates[0][1].replace(seed=s).to_dict())]["metrics"]["test"] for s in exp.seeds]
    line = rep["csv"].splitlines()[1].split(",")
    assert float(line[6]) == pytest.approx(sum(tests) / 2 * 1e5)
    paths = write_report(tmp_path / STORE_NAME, "table7", tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == ["table7.quick.csv", "table7.quick.md", "table7.quick.png"]  # named by the plan's profile
    assert (tmp_path / "out" / "table7.quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_a_plan_is_a_clear_error(tmp_path):
    with Store(tmp_path / STORE_NAME):
        pass
    with pytest.raises(ValueError, match="no plan for 'table1'"):
        build_report(tmp_path / STORE_NAME, "table1")


def test_cli_list_and_report_errors(tmp_path, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "table7" in out and "paper: 100 runs" in out
    with pytest.raises(SystemExit) as e:
        main(["report", "table1", "--out", str(tmp_path)])
    assert e.value.code == 1 and "no result store" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "table99"])


def test_cli_run_fig5_quick_end_to_end(tmp_path, capsys, monkeypatch):
    """The smallest real experiment, through the command line: five SIN runs (shortened
    to 40 steps here), a figure."""
    import gradreg.paper.experiments as E

    monkeypatch.setitem(E.PROFILES, "quick", dataclasses.replace(E.PROFILES["quick"], steps={"sin": 40}))
    assert main(["run", "fig5", "--profile", "quick", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "fig5 (quick profile): trained 5 runs" in out
    assert (tmp_path / "fig5.quick.png").exists() and (tmp_path / "fig5.quick.md").exists()
    assert "made by: `gradreg run fig5 --profile quick" in (tmp_path / "fig5.quick.md").read_text()


def test_fig2_lambda_shares_figure_2s_runs_and_tunes_over_its_own_fixed_columns():
    check, fig2 = build("fig2_lambda", "published"), build("fig2", "published")
    assert check.seeds == fig2.seeds == (1, 2, 3)

    def keys(cell):
        return {run_key(cfg.replace(seed=s).to_dict()) for _, cfg in cell.candidates for s in check.seeds}

    at_10k = {c.row: keys(c) for c in fig2.cells if c.col == "10000"}
    cells = {c.col: c for c in check.cells}
    assert keys(cells["Baseline"]) == at_10k["Baseline"]  # shared: trained once, by either experiment
    assert keys(cells["DataGrad λ=50"]) == at_10k["DataGrad"]
    fixed = [c for col, c in cells.items() if col.startswith("DataGrad λ=")]
    assert [c.candidates[0][0] for c in fixed] == [2, 5, 10, 20, 50]
    tuned = cells["DataGrad, λ tuned on dev"]
    assert tuned.candidates == tuple(c.candidates[0] for c in fixed)  # no run of its own
    assert all(cfg.train_size == 10_000 for c in check.cells for _, cfg in c.candidates)
    # 3 seeds x (Baseline + 5 lambdas); 6 of the 18 are Figure 2's
    own = {run_key(c.to_dict()) for c in check.runs()} - {run_key(c.to_dict()) for c in fig2.runs()}
    assert len(check.runs()) == 18 and len(own) == 12


def test_training_loss_rises_with_the_weight_only_when_every_step_rises():
    from gradreg.paper.explanations import train_loss_rises_with_lambda

    def cells(losses):  # (λ, training loss), given out of order
        return [dataclasses.replace(_summary(), lam=lam, train_loss=loss) for lam, loss in losses]

    assert train_loss_rises_with_lambda(cells([(50, 0.2), (5, 0.01), (20, 0.02)]))
    assert not train_loss_rises_with_lambda(cells([(50, 0.2), (5, 0.01), (20, 0.3)]))  # 20 above 50
    assert not train_loss_rises_with_lambda(cells([(5, 0.01)]))  # one weight shows no trend


def _summary():
    cell = {"row": "r", "col": "c", "x": None, "candidates": [{"lambda": 1.0, "runs": ["a"]}]}
    return summarize_cell(cell, {"a": _row("a", 0.9, 0.9)}, "accuracy")
