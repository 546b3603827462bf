"""The evidence index and the README's headline table, rebuilt from the committed run records.

The index's cells are checked against an independent computation: each cell's mean and std
straight from the JSON lines, and the verdict from scipy's t-tests with Bonferroni over the
table. The README's headline, one row per experiment, is checked against those cells."""

import json
import math
import re
import statistics
from pathlib import Path

import pytest
from scipy import stats as sps

from gradreg.cli import main
from gradreg.paper.numbers import TABLES
from gradreg.sweep.index import HEADLINE_BEGIN, HEADLINE_END, write_index
from gradreg.sweep.records import import_records
from gradreg.sweep.store import Store

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "results" / "records"


def _block(text: str) -> str:
    return text.split(HEADLINE_BEGIN, 1)[1].split(HEADLINE_END, 1)[0]


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """``ROOT``'s layout in a temporary directory: ``results/`` (the store, rebuilt from the
    committed records, and its index) beside a README with a headline block to fill."""
    root = tmp_path_factory.mktemp("checkout")
    out = root / "results"
    out.mkdir()
    with Store(out / "gradreg.sqlite") as store:
        assert import_records(store, RECORDS) > 0
    readme = root / "README.copy.md"
    readme.write_text(f"intro\n{HEADLINE_BEGIN}\nold\n{HEADLINE_END}\nrest\n")
    write_index(out, "published", readme)
    return out, readme.read_text()


def test_the_readme_headline_is_what_the_committed_records_give(rebuilt):
    _, text = rebuilt
    assert text.startswith("intro\n") and text.endswith("rest\n") and "\nold\n" not in text
    assert _block((ROOT / "README.md").read_text()) == _block(text), (
        "README.md's headline table is stale: run `gradreg index --out results --readme README.md`"
    )


def _table(lines, width: int) -> list[list[str]]:
    """The body rows of the Markdown tables in ``lines`` that have ``width`` columns."""
    rows = []
    for line in lines:
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(parts) == width and parts[0] not in ("experiment", "---"):
            rows.append(parts)
    return rows


def _cells(out: Path) -> dict:
    """The index's cell-by-cell table: (experiment, "row / col") -> its six columns."""
    section = (out / "README.md").read_text().split("## Ours against the paper, cell by cell", 1)[1]
    return {(r[0], r[1]): r for r in _table(section.splitlines(), 6)}


def _headline(text: str) -> dict:
    """The README headline: experiment -> (experiment, what it checks, verdict, n, report link)."""
    return {r[0]: r for r in _table(_block(text).splitlines(), 5)}


def test_each_index_cell_matches_an_independent_computation(rebuilt):
    """Table 1's unregularized NoGR cell (Welch against the paper's mean, std, n=10) and Table
    7's lambda=0.01 cell (one-sample t-test: the paper prints no std), from the raw records."""
    out, _ = rebuilt
    rows = _cells(out)
    records = [json.loads(line) for line in (RECORDS / "runs.jsonl").read_text().splitlines()]

    def scores(pred, scale):
        return [r["metrics"]["test"] * scale for r in records if pred(r["config"])]

    nogr = scores(
        lambda c: (
            c["dataset"] == "mnist"
            and not c["regularizers"]
            and c["dropout"] is None
            and not c["batchnorm"]
            and c["steps"] == 10_000
            and c["train_size"] == 2000
            and c["weight_decay"] == 0.0005
        ),
        100.0,
    )
    assert len(nogr) == 10
    paper = TABLES["table1"].cells[("LeNet unregularized", "NoGR")]
    got = rows[("table1", "LeNet unregularized / NoGR")]
    assert got[2] == f"{statistics.mean(nogr):.2f} ({statistics.stdev(nogr):.2f})" and got[4] == "10"
    m1 = sum(1 for k in rows if k[0] == "table1")
    p = sps.ttest_ind_from_stats(
        statistics.mean(nogr), statistics.stdev(nogr), 10, paper.mean, paper.std, 10, equal_var=False
    ).pvalue
    se = math.sqrt(statistics.variance(nogr) / 10 + paper.std**2 / 10)
    df = se**4 / ((statistics.variance(nogr) / 10) ** 2 / 9 + (paper.std**2 / 10) ** 2 / 9)
    assert got[5] == _verdict(10, p * m1, sps.t.ppf(1 - 0.05 / (2 * m1), df) * se, paper.mean)

    sin = scores(
        lambda c: (
            c["dataset"] == "sin"
            and c["steps"] == 10_000
            and c["regularizers"]
            == [
                {
                    "n_proj": 1,
                    "name": "SpectReg",
                    "norm": "l2",
                    "normalize": False,
                    "projection": "batch",
                    "weight": 0.01,
                }
            ]
        ),
        1e5,
    )
    assert len(sin) == 10
    got = rows[("table7", "SpectReg / 0.01")]
    assert got[2] == f"{statistics.mean(sin):.2f} ({statistics.stdev(sin):.2f})"
    m7 = sum(1 for k in rows if k[0] == "table7")
    res = sps.ttest_1samp(sin, TABLES["table7"].cells[("SpectReg", "0.01")].mean)
    ci = res.confidence_interval(confidence_level=1 - 0.05 / m7)
    paper7 = TABLES["table7"].cells[("SpectReg", "0.01")].mean
    assert not math.isnan(res.pvalue)
    assert got[5] == _verdict(10, res.pvalue * m7, (ci.high - ci.low) / 2, paper7)


def _verdict(n: int, p_adj: float, half_width: float, paper: float) -> str:
    """The verdict rule, written out again: no verdict below 3 seeds; *differs* where the
    Bonferroni-adjusted p is below 0.05; no verdict where the Bonferroni 95% interval is at least
    as wide as the paper's number on either side; else *consistent*."""
    if n < 3:
        return "too few seeds to judge"
    if p_adj < 0.05:
        return "differs"
    return "too few seeds to judge" if half_width >= abs(paper) else "consistent"


def test_the_table7_report_sets_the_records_means_beside_the_reference_points(rebuilt):
    """The "ours" column of the Table 7 derivation is computed from the records, not written in
    the code: each λ's mean straight from the JSON lines, in the paper's 1e-5 units."""
    from gradreg.sweep.report import build_report

    out, _ = rebuilt
    md = build_report(out / "gradreg.sqlite", "table7", "published")["markdown"]
    records = [json.loads(line) for line in (RECORDS / "runs.jsonl").read_text().splitlines()]
    by_lam: dict = {}
    for r in records:
        c = r["config"]
        if "table7" in r["experiments"]:
            by_lam.setdefault(c["regularizers"][0]["weight"] if c["regularizers"] else 0.0, []).append(
                r["metrics"]["test"]
            )
    assert len(by_lam) == 10
    for lam, tests in by_lam.items():
        assert f"| {lam:g} | {statistics.mean(tests) / 1e-5:.1f} | " in md, lam


def test_the_headline_has_one_row_per_experiment_with_the_verdicts_of_its_cells(rebuilt):
    """One row per indexed experiment; a table's verdict counts its cells' verdicts in the
    index (checked against scipy above), n is the seeds per cell in the records (10 for Table
    1, 3 for Figure 2), and every report link opens a committed report."""
    out, text = rebuilt
    head, cells = _headline(text), _cells(out)
    indexed = [r[0].split(":", 1)[0] for r in _table((out / "README.md").read_text().splitlines(), 5) if r[1] != "0"]
    assert list(head) == indexed and {"table1", "table7", "fig2"} <= set(head)
    too_few = "too few seeds to judge"
    for name in {k[0] for k in cells}:
        verdicts = [r[5] for k, r in cells.items() if k[0] == name]
        n, differ, thin = len(verdicts), verdicts.count("differs"), verdicts.count(too_few)
        agree = n - differ - thin
        assert n and set(verdicts) <= {"consistent", "differs", too_few}
        said = [
            f"{k} {w}"
            for k, w in ((agree, "consistent"), (differ, "differs" if differ == 1 else "differ"), (thin, too_few))
            if k
        ]
        want = (
            f"all {n} cells consistent with the paper"
            if agree == n
            else f"all {n} cells differ from the paper"
            if differ == n
            else f"all {n} cells: {too_few}"
            if thin == n
            else said[0].replace(" ", f" of {n} cells ", 1) + "".join(f", {x}" for x in said[1:])
        )
        if re.fullmatch(r"running: \d+ of \d+ runs", head[name][2]):
            continue  # an experiment still training reports its progress, not yet its cells
        assert head[name][2].split("; the paper's")[0] == want, name  # Table 6 adds its claims after
    assert head["table1"][2] == "8 of 9 cells consistent, 1 differs"  # the BatchNorm DataGrad cell
    # Figure 2 is judged by its 4 claims once its runs are in, and says how far it got before
    assert re.fullmatch(r"the paper's 4 claims: .*|running: \d+ of 75 runs", head["fig2"][2]), head["fig2"][2]
    records = [json.loads(line) for line in (RECORDS / "runs.jsonl").read_text().splitlines()]
    fig2_seeds = {r["config"]["seed"] for r in records if "fig2" in r["experiments"]}
    assert head["table1"][3] == "10" and head["fig2"][3] == str(len(fig2_seeds)) == "3"
    for name, row in head.items():
        link = row[4]
        assert link == f"[{name}.published.md](results/{name}.published.md)", link
        assert (ROOT / "results" / f"{name}.published.md").is_file(), link


def test_index_readme_without_markers_is_a_one_line_error(rebuilt, tmp_path, capsys):
    out, _ = rebuilt
    bare = tmp_path / "R.md"
    bare.write_text("no markers here\n")
    with pytest.raises(SystemExit) as e:
        main(["index", "--out", str(out), "--readme", str(bare)])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "headline" in err and bare.read_text() == "no markers here\n"
