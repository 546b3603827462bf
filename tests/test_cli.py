"""The command line and the reports it writes: options documented, reports named by
profile, and reports that say exactly what they measured."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import gradreg
import gradreg.paper.experiments as E
from conftest import DATA
from gradreg.cli import build_parser, check_writable_output, main
from gradreg.commands.config_options import HELP, SPECIAL
from gradreg.config import TrainConfig
from gradreg.paper.experiments import PROFILES
from gradreg.sweep.report import render_csv, render_markdown, report_paths, significance, summarize_cell
from gradreg.sweep.runner import STORE_NAME
from gradreg.sweep.store import Store


def run_cli(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tiny_profiles(monkeypatch):
    """Both profiles at a few SIN steps and one seed, with the steps telling them apart."""
    monkeypatch.setitem(E.PROFILES, "quick", dataclasses.replace(PROFILES["quick"], steps={"sin": 20}, seeds=(1,)))
    monkeypatch.setitem(E.PROFILES, "paper", dataclasses.replace(PROFILES["paper"], steps={"sin": 30}, seeds=(1,)))


# --------------------------------------------------------------------------- options


def _actions(parser: argparse.ArgumentParser):
    """(command, action) for every option and positional of every command."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    yield "gradreg", [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]
    for name, p in sub.choices.items():
        yield name, p._actions


def test_version_is_the_package_version_and_the_commit(capsys):
    """``gradreg <gradreg.__version__>``, with ``+g<commit>`` exactly when the source is a git checkout."""
    code, out, _ = run_cli(["--version"], capsys)
    m = re.fullmatch(rf"gradreg {re.escape(gradreg.__version__)}(?:\+g([0-9a-f]+))?\n", out)
    assert code == 0 and m, out
    try:
        git = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(gradreg.__file__).parent, capture_output=True, text=True
        )
        commit = git.stdout.strip() if git.returncode == 0 else None
    except OSError:  # no git here
        commit = None
    assert m.group(1) == commit, (out, commit)


@pytest.mark.parametrize(
    "argv, unknown",
    [
        (["run", "fig5", "--ray", "auto"], "--ray auto"),  # was taken as --ray-address auto
        (["train", "--dataset", "sin", "--step", "5"], "--step 5"),
        (["report", "fig5", "--prof", "paper"], "--prof paper"),
        (["--deb", "list"], "--deb"),
    ],
)
def test_an_abbreviated_option_is_refused(argv, unknown, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)  # parsing only: nothing runs even if it were accepted
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"gradreg: error: unrecognized arguments: {unknown}"


def test_no_parser_accepts_abbreviations():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert parser.allow_abbrev is False
    assert {name: p.allow_abbrev for name, p in sub.choices.items()} == dict.fromkeys(sub.choices, False)


def test_every_option_says_what_it_means():
    for command, actions in _actions(build_parser()):
        for a in actions:
            name = (a.option_strings or [a.dest])[-1]
            assert a.help and a.help != argparse.SUPPRESS, f"{command} {name} has no help"
            words = a.help.replace("%%", "%").lower()
            bare = name.lstrip("-").replace("-", " ").replace("_", " ")
            assert words.strip() != bare and len(words.split()) >= 4, (
                f"{command} {name}: {a.help!r} only repeats the name"
            )


def test_every_train_config_field_has_a_help_text_and_its_paper_default():
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - SPECIAL
    assert set(HELP) == fields  # a new field needs a help text
    train = dict(_actions(build_parser()))["train"]
    helps = {a.option_strings[0]: a.help for a in train if a.option_strings}
    assert "default: 0.001 (mnist), 0.01 (cifar10, sin, sin2)" in helps["--lr"]
    assert "default: 2000 (mnist, cifar10), none (sin, sin2)" in helps["--train-size"]
    assert helps["--lr-milestones"].endswith("default: 0.5 0.75")
    assert helps["--augment"].endswith("default: off")


def test_max_members_help_says_what_omitting_it_means():
    run = dict(_actions(build_parser()))["run"]
    (mm,) = [a for a in run if "--max-members" in a.option_strings]
    assert "positive integer" in mm.help and "default: the device's default" in mm.help


def test_check_writable_output_leaves_no_trace(tmp_path):
    target = tmp_path / "a" / "b" / "r.json"
    assert check_writable_output(target) == target
    assert list(tmp_path.iterdir()) == []  # the probe's directories are removed again
    (tmp_path / "d").mkdir()
    check_writable_output(tmp_path / "d", directory=True)
    assert list((tmp_path / "d").iterdir()) == []


# --------------------------------------------------------------------------- reports named by profile


def test_reports_of_two_profiles_never_overwrite_each_other(tiny_profiles, tmp_path, capsys):
    code, out, _ = run_cli(["run", "fig5", "--out", tmp_path, "--quiet", "--profile", "paper"], capsys)
    assert code == 0
    paper = {p.name: p.read_bytes() for p in tmp_path.glob("fig5.paper.*")}
    assert sorted(paper) == ["fig5.paper.csv", "fig5.paper.md", "fig5.paper.png"]
    code, out, _ = run_cli(["run", "fig5", "--out", tmp_path, "--quiet", "--profile", "quick"], capsys)
    assert code == 0
    assert re.search(
        r"fig5 \(quick profile\): trained 5 runs in [0-9.]+ s of wall time \(this command: data loading, "
        r"training and evaluation; 0 runs were stored already\)",
        out,
    ), out
    assert {p.name: p.read_bytes() for p in tmp_path.glob("fig5.paper.*")} == paper  # untouched
    assert sorted(p.name for p in tmp_path.glob("fig5.quick.*")) == [
        "fig5.quick.csv",
        "fig5.quick.md",
        "fig5.quick.png",
    ]
    quick_md = (tmp_path / "fig5.quick.md").read_text()
    paper_md = (tmp_path / "fig5.paper.md").read_text()
    for md, prof in ((quick_md, "quick"), (paper_md, "paper")):
        note = getattr(PROFILES[prof], "note", "")  # what the profile shortened, where it says
        assert f"\nprofile: {prof}" + (f" ({note})" if note else "") + "\n" in md
    # The store holds both profiles' runs; each header counts only the 5 its table used.
    with Store(tmp_path / STORE_NAME) as store:
        assert store.count("fig5") == 10 and store.profiles("fig5") == ["paper", "quick"]
    for md in (quick_md, paper_md):
        assert "; 5 runs behind this table (0 diverged); training time " in md
    # `report` rebuilds both, each into its own files, from the store alone.
    code, out, _ = run_cli(["report", "fig5", "--out", tmp_path], capsys)
    assert code == 0
    assert out.split() == [str(p) for prof in ("paper", "quick") for p in report_paths("fig5", prof, tmp_path)]
    assert (tmp_path / "fig5.quick.md").read_text() == quick_md and (tmp_path / "fig5.paper.md").read_text() == paper_md


def test_store_keeps_one_plan_per_profile(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        store.put_plan("t", {"profile": "paper", "n": 1})
        store.put_plan("t", {"profile": "quick", "n": 2})
        store.put_plan("u", {"n": 3})  # no profile: only "the plan stored last"
        assert store.plan("t") == {"profile": "quick", "n": 2}
        assert store.plan("t", "paper") == {"profile": "paper", "n": 1}
        assert store.plan("t", "huge") is None
        assert store.profiles("t") == ["paper", "quick"] and store.profiles("u") == []
        assert store.plan("u") == {"n": 3}


# --------------------------------------------------------------------------- what a report says


def _row(key, dev, test):
    return {
        "run_key": key,
        "error": None,
        "device": "cpu",
        "torch_version": "t",
        "code_version": "v",
        "wall_time_s": 1.5,
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


def _report(cells: dict, metric="accuracy", **plan):
    """Markdown and CSV of a plan whose cells are ``{col: {lambda: [(dev, test) per seed]}}``."""
    rows, plan_cells = {}, []
    for col, cands in cells.items():
        candidates = []
        for lam, scores in cands.items():
            keys = [f"{col}-{lam}-{i}" for i in range(len(scores))]
            rows |= {k: _row(k, d, t) for k, (d, t) in zip(keys, scores)}
            candidates.append({"lambda": lam, "runs": keys})
        plan_cells.append({"row": "r", "col": col, "x": None, "candidates": candidates})
    plan = {"name": "t", "title": "a test", "metric": metric, "cells": plan_cells, **plan}
    summaries = [summarize_cell(c, rows, metric) for c in plan_cells]
    tests = significance(summaries, plan)
    return render_markdown(plan, summaries, tests, list(rows.values())), render_csv(plan, summaries)


TUNED = "that λ was chosen on the dev set"
LEGEND = "`*`: significant vs. the compared cell after Bonferroni"
SEEDS = [(0.9, 0.8), (0.91, 0.82), (0.92, 0.81)]


def test_the_dev_set_phrase_appears_only_where_lambda_was_tuned():
    fixed, _ = _report({"0": {0: SEEDS}, "0.1": {0.1: SEEDS}})  # Table 7's kind: every column a fixed λ
    assert TUNED not in fixed and "chosen" not in fixed and "λ=" not in fixed
    tuned, _ = _report({"NoGR": {None: SEEDS}, "DataGrad": {10: SEEDS, 50: [(0.95, 0.85)] * 3}})
    assert TUNED in tuned and "DataGrad" in tuned and " λ=50" in tuned and "## Tuning" in tuned


def test_the_significance_legend_appears_only_with_comparisons():
    none, _ = _report({"NoGR": {None: SEEDS}, "DataGrad": {None: SEEDS}})
    assert LEGEND not in none and "## Significance" not in none and " *" not in none
    compared, _ = _report({"NoGR": {None: SEEDS}, "DataGrad": {None: SEEDS}}, baseline_col="NoGR")
    assert LEGEND in compared and "## Significance" in compared


def test_mse_is_shown_in_units_of_1e_5_everywhere():
    scores = [(4e-4, 3e-4), (6e-4, 5e-4)]  # test MSE 3e-4 and 5e-4: 30 and 50 x 1e-5
    md, csv = _report({"0": {0: scores}}, metric="mse")  # fig5's kind: no paper table
    assert "Metric: test MSE (×1e-5)." in md and "test MSE ()" not in md
    assert "| r | 40.00 (14.14) n=2 |" in md
    header, line = csv.splitlines()
    assert header.split(",")[-1] == "unit" and line.split(",")[-1] == "1e-5"
    assert float(line.split(",")[6]) == pytest.approx(40.0)


def test_the_header_says_what_the_profile_shortened_and_what_the_time_counts():
    md, _ = _report({"NoGR": {None: SEEDS}}, profile="quick", profile_note="250 MNIST steps instead of 10000; 2 seeds")
    assert "\nprofile: quick (250 MNIST steps instead of 10000; 2 seeds)\n" in md
    hardware = next(line for line in md.splitlines() if line.startswith("hardware:"))
    assert "3 runs behind this table (0 diverged); training time 4.5 s, summed over these runs" in hardware
    assert "not the wall time of a command" in hardware
    plain, _ = _report({"NoGR": {None: SEEDS}})
    assert "profile:" not in plain


def test_a_header_counts_missing_runs_as_missing():
    md, _ = _report({"NoGR": {None: SEEDS}})
    assert "3 runs behind" in md
    # Only two of the three planned runs are stored.
    rows = [_row(f"k{i}", 0.9, 0.8) for i in range(2)]
    plan = {
        "name": "t",
        "title": "a test",
        "metric": "accuracy",
        "cells": [{"row": "r", "col": "c", "x": None, "candidates": [{"lambda": None, "runs": ["k0", "k1", "k2"]}]}],
    }
    s = [summarize_cell(plan["cells"][0], {r["run_key"]: r for r in rows}, "accuracy")]
    assert "2 of 3 planned runs stored behind this table" in render_markdown(plan, s, [], rows)


def test_a_partial_report_says_not_run_yet_instead_of_nan():
    """A cell with no stored run reads "not run yet"; its comparison is counted as waiting, not
    printed as nan; the smoothness table lists only cells that ran."""
    rows = [_row(f"n{i}", 0.9, t) for i, t in enumerate((0.80, 0.82, 0.81))]
    plan = {
        "name": "t",
        "title": "a test",
        "metric": "accuracy",
        "baseline_col": "NoGR",
        "comparisons": [[["r", "DataGrad"], ["r", "NoGR"]]],
        "cells": [
            {"row": "r", "col": "NoGR", "x": None, "candidates": [{"lambda": None, "runs": ["n0", "n1", "n2"]}]},
            {"row": "r", "col": "DataGrad", "x": None, "candidates": [{"lambda": 50, "runs": ["d0", "d1"]}]},
        ],
    }
    by_key = {r["run_key"]: r for r in rows}
    summaries = [summarize_cell(c, by_key, "accuracy") for c in plan["cells"]]
    md = render_markdown(plan, summaries, significance(summaries, plan), rows)
    assert "nan" not in md
    assert "| r | 81.00 (1.00) n=3 | not run yet λ=50 |" in md
    assert "1 comparison(s) wait for runs not stored yet." in md
    assert "| r / NoGR | – | 1 | 2 | 3 | 3.00 |" in md and "r / DataGrad |" not in md.split("## Global")[1]


# --------------------------------------------------------------------------- --download


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="needs shared/data/mnist")
def test_download_fetches_into_the_data_dir(tmp_path, capsys, monkeypatch):
    """``--download`` with a named --data-dir fetches there (the library's download code, with
    its SHA-256 checks); the fetch here copies the official files from shared/data."""
    import gradreg.data.download as download

    fetched = []

    def fetch(url, dest, progress):
        fetched.append(url)
        shutil.copyfile(DATA / "mnist" / url.rsplit("/", 1)[-1], dest)

    monkeypatch.setattr(download, "urllib_fetch", fetch)
    monkeypatch.delenv("GRADREG_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = tmp_path / "data"
    out = tmp_path / "r.json"
    code, _, err = run_cli(
        ["train", "--dataset", "mnist", "--dry-run", "--quiet", "--download", "--data-dir", data, "--out", out], capsys
    )
    assert code == 0, err
    assert len(fetched) == 4 and out.exists()
    names = sorted(p.name for p in (data / "mnist").iterdir() if not p.name.startswith("."))
    assert names == sorted(f"{n}.gz" for n in download.MNIST_FILES)
    with gzip.open(data / "mnist" / "t10k-labels-idx1-ubyte.gz") as f:
        assert f.read(4) == b"\x00\x00\x08\x01"
    assert not (tmp_path / "xdg").exists()  # nothing went to the cache


def test_every_differing_cell_gets_words_and_unexplained_ones_say_so():
    """The report's "Where we differ" text: Table 1's BatchNorm cells name the setting that
    differs from the original (and say it is not established); any other cell says plainly
    that no cause is known."""
    from types import SimpleNamespace

    from gradreg.paper.explanations import explain

    bn = SimpleNamespace(row="LeNet Batchnorm", col="DataGrad", ours=97.25, paper=96.89)
    other = SimpleNamespace(row="LeNet Dropout", col="NoGR", ours=97.0, paper=97.29)
    text = explain("table1", [], [bn, other], 100.0)
    assert "LeNet Batchnorm / DataGrad (97.25 against 96.89): not established" in text
    assert "bn_batch_stats_at_eval" in text and "scripts/bn_eval_check.py" in text
    assert "scripts/bn_stale_stats_check.py" in text  # the second candidate, ruled out by a script that exists
    assert (Path(__file__).parents[1] / "scripts" / "bn_stale_stats_check.py").is_file()
    assert "Not yet explained: LeNet Dropout / NoGR." in text
    assert explain("table2", [], [other], 100.0).startswith("Not yet explained: LeNet Dropout / NoGR.")


def test_table1_batchnorm_words_quote_the_rows_offset_and_the_within_ours_welch_test():
    """The BatchNorm explanation's numbers: the Welch p of our DataGrad against our NoGR is
    scipy's, and each cell's offset from the paper is its mean minus the paper's number."""
    from types import SimpleNamespace

    from scipy import stats as sps

    from gradreg.paper.explanations import explain
    from gradreg.paper.numbers import TABLES

    def cell(col, test, lam, norm):
        mean = sum(test) / len(test)
        std = (sum((v - mean) ** 2 for v in test) / (len(test) - 1)) ** 0.5
        return SimpleNamespace(
            row="LeNet Batchnorm",
            col=col,
            test=test,
            n=len(test),
            lam=lam,
            grad_norms={"test": norm},
            mean=mean,
            std=std,
        )

    nogr = cell("NoGR", [0.970, 0.972, 0.975, 0.969], None, 7.65)
    dg = cell("DataGrad", [0.9725, 0.9724, 0.9726, 0.9722], 0.001, 7.44)
    bn = SimpleNamespace(row="LeNet Batchnorm", col="DataGrad", ours=97.24, paper=96.89)
    text = explain("table1", [nogr, dg], [bn], 100.0)
    p = sps.ttest_ind([v * 100 for v in dg.test], [v * 100 for v in nogr.test], equal_var=False).pvalue
    assert f"Welch p = {p:.2g} (unadjusted)" in text
    paper = TABLES["table1"].cells
    assert f"NoGR {97.15 - paper[('LeNet Batchnorm', 'NoGR')].mean:+.2f}" in text
    assert f"DataGrad {97.2425 - paper[('LeNet Batchnorm', 'DataGrad')].mean:+.2f}" in text
    assert "λ = 0.001" in text and "7.44 against 7.65" in text
    # without both cells the extra paragraph is left out rather than guessed
    assert "What the runs do establish" in text
    assert "What the runs do establish" not in explain("table1", [dg], [bn], 100.0)
