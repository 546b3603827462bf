"""The evidence index and the README's headline table, rebuilt from the committed run records.

The numbers are checked against an independent computation: each cell's mean and std straight
from the JSON lines, and the verdict from scipy's t-tests with Bonferroni over the table."""

import json
import math
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
    out = tmp_path_factory.mktemp("evidence")
    with Store(out / "gradreg.sqlite") as store:
        assert import_records(store, RECORDS) > 0
    readme = out / "README.copy.md"
    readme.write_text(f"intro\n{HEADLINE_BEGIN}\nold\n{HEADLINE_END}\nrest\n")
    write_index(out, "published", readme)
    return out, readme.read_text()


def test_the_readme_headline_is_what_the_committed_records_give(rebuilt):
    _, text = rebuilt
    assert text.startswith("intro\n") and text.endswith("rest\n") and "\nold\n" not in text
    assert _block((ROOT / "README.md").read_text()) == _block(text), (
        "README.md's headline table is stale: run `gradreg index --out results --readme README.md`"
    )


def _rows(text: str) -> dict:
    rows = {}
    for line in _block(text).splitlines():
        parts = [p.strip() for p in line.strip("|").split("|")]
        if len(parts) == 6 and parts[0] not in ("experiment", "---"):
            rows[(parts[0], parts[1])] = parts
    return rows


def test_each_headline_cell_matches_an_independent_computation(rebuilt):
    """Table 1's unregularized NoGR cell (Welch against the paper's mean, std, n=10) and Table
    7's lambda=0.01 cell (one-sample t-test: the paper prints no std), from the raw records."""
    _, text = rebuilt
    rows = _rows(text)
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
    assert got[5] == ("differs" if p * m1 < 0.05 else "consistent")

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
    p = sps.ttest_1samp(sin, TABLES["table7"].cells[("SpectReg", "0.01")].mean).pvalue
    assert not math.isnan(p) and got[5] == ("differs" if p * m7 < 0.05 else "consistent")


def test_index_readme_without_markers_is_a_one_line_error(rebuilt, tmp_path, capsys):
    out, _ = rebuilt
    bare = tmp_path / "R.md"
    bare.write_text("no markers here\n")
    with pytest.raises(SystemExit) as e:
        main(["index", "--out", str(out), "--readme", str(bare)])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "headline" in err and bare.read_text() == "no markers here\n"
