"""The transcription of the paper's numbers, checked against the paper's own text: every cell,
every row line and every stated weight is re-rendered in the paper's format and must occur in
shared/paper/paper.txt. Plus hand-checked spot values and shapes."""

import dataclasses
import re
from pathlib import Path

import pytest

import gradreg
from gradreg.paper.numbers import FACTS, LAMBDA_GRIDS, TABLES, TUNED_WEIGHTS, Cell

PAPER_DIR = Path(__file__).resolve().parents[2] / "shared" / "paper"
SETTINGS = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


@pytest.fixture(scope="module")
def paper_text() -> str:
    path = PAPER_DIR / "paper.txt"
    if not path.is_file():
        pytest.skip(f"paper text not found at {path}")
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def paper_lines(paper_text) -> set:
    return {line.strip() for line in paper_text.splitlines()}


@pytest.fixture(scope="module")
def paper_flat(paper_text) -> str:
    """The text with every run of whitespace (line breaks included) collapsed to one space."""
    return " ".join(paper_text.split())


# --------------------------------------------------------------------------- the printed formats


def pct_std(c: Cell) -> str:  # Tables 1, 2, 3, 6: "97.98% (0.12)"
    return f"{c.mean:.2f}% ({c.std:.2f})"


def plain_std(c: Cell) -> str:  # Table 4: "97.95 (0.15)", no percent sign
    return f"{c.mean:.2f} ({c.std:.2f})"


def pct(c: Cell) -> str:  # Table 5: "93.71%", one run, no std
    return f"{c.mean:.2f}%"


def decimal_comma(c: Cell) -> str:  # Table 7: "16,6" for 16.6 (x 1e-5)
    return f"{c.mean:.1f}".replace(".", ",")


CELL_FORMAT = {
    "table1": pct_std,
    "table2": pct_std,
    "table3": pct_std,
    "table4": plain_std,
    "table5": pct,
    "table6": pct_std,
    "table7": decimal_comma,
}

# The header line each table prints above its rows.
HEADER = {
    "table1": "NoGR SpectReg DataGrad",
    "table2": "No GR SpectReg DataGrad",
    "table3": "Baseline SpectReg DataGrad CP",
    "table4": "Weight decay NoGR SpectReg DataGrad",
    "table5": "λ 0 0.0001 0.0003 0.001 0.003 0.01 0.03 0.1",
    "table6": "SpectReg JacReg FrobReg",
    "table7": "SpectReg λ 0 0.001 0.003 0.01 0.03 0.1 0.3 1 3 10",
}

SHAPES = {
    "table1": (3, 3),
    "table2": (2, 3),
    "table3": (1, 4),
    "table4": (2, 3),
    "table5": (2, 8),
    "table6": (1, 3),
    "table7": (1, 10),
}


def row_line(table, row) -> str:
    """One row as the paper prints it."""
    fmt = CELL_FORMAT[table.name]
    parts = []
    for col in table.col_labels:
        text = fmt(table.cell(row, col))
        if table.name == "table4" and col != "NoGR":  # the λ follows the cell
            text += f" λ = {table.weights[(row, col)][col]:g}"
        parts.append(text)
    prefix = {"table3": "", "table6": "", "table7": "MSE (1e-5) "}.get(table.name, f"{row} ")
    return prefix + " ".join(parts)


# --------------------------------------------------------------------------- transcription


def test_all_seven_tables_with_the_expected_shapes():
    assert sorted(TABLES) == [f"table{i}" for i in range(1, 8)]
    for name, table in TABLES.items():
        assert table.name == name
        assert table.shape == SHAPES[name], name
        assert set(table.cells) == {(r, c) for r in table.row_labels for c in table.col_labels}, name
        assert len(set(table.row_labels)) == len(table.row_labels)
        assert len(set(table.col_labels)) == len(table.col_labels)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_cell_occurs_in_the_paper(name, paper_text):
    table = TABLES[name]
    for (row, col), cell in table.cells.items():
        text = CELL_FORMAT[name](cell)
        assert text in paper_text, f"{name} ({row}, {col}): {text!r} not in paper.txt"


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_row_and_header_is_a_line_of_the_paper(name, paper_lines):
    # Stronger than the per-cell check: the values sit in the right row, in the right order.
    table = TABLES[name]
    assert HEADER[name] in paper_lines
    header_labels = HEADER[name].removeprefix("Weight decay ").removeprefix("SpectReg λ ").removeprefix("λ ")
    assert header_labels == " ".join(table.col_labels)
    for row in table.row_labels:
        line = row_line(table, row)
        assert line in paper_lines, f"{name}: {line!r} is not a line of paper.txt"


def test_std_present_exactly_where_printed():
    for name, table in TABLES.items():
        has_std = {c.std is not None for c in table.cells.values()}
        assert has_std == ({False} if name in ("table5", "table7") else {True}), name


def test_hand_checked_spot_values():
    t1 = TABLES["table1"]
    assert t1.cell("LeNet Dropout", "DataGrad") == Cell(97.98, 0.12)
    assert t1.cell("LeNet Dropout", "NoGR") == Cell(97.29, 0.19)
    assert t1.cell("LeNet Dropout", "SpectReg") == Cell(97.65, 0.14)
    assert t1.cell("LeNet Batchnorm", "SpectReg") == Cell(96.94, 0.27)
    assert TABLES["table2"].cell("CP", "DataGrad") == Cell(98.07, 0.09)
    assert TABLES["table3"].cell("ResNet", "SpectReg") == Cell(59.24, 1.48)
    assert TABLES["table4"].cell("WD=0.0005", "NoGR") == Cell(97.40, 0.15)
    assert TABLES["table5"].cell("DataGrad", "0.01") == Cell(94.14)
    assert TABLES["table6"].cell("LeNet", "JacReg") == Cell(97.63, 0.15)
    assert TABLES["table7"].cell("SpectReg", "0.03") == Cell(1.6)  # x 1e-5
    assert TABLES["table7"].cell("SpectReg", "10") == Cell(2002.2)


def test_reference_calibration_table_agrees():
    # docs/settings.md quotes the paper's Table 1 Dropout row: "| NoGR | 97.29 (0.19) |" etc.
    path = SETTINGS  # the settings behind the published numbers, kept in the repository
    if not path.is_file():
        pytest.skip(f"{path} not found")
    quoted = dict(re.findall(r"^\| (NoGR|SpectReg|DataGrad) \| ([\d.]+ \([\d.]+\)) \|$", path.read_text(), re.M))
    assert set(quoted) == {"NoGR", "SpectReg", "DataGrad"}
    for col, text in quoted.items():
        assert plain_std(TABLES["table1"].cell("LeNet Dropout", col)) == text


def test_units_and_scale():
    assert TABLES["table1"].metric == "accuracy" and TABLES["table1"].scale == 0.01
    assert TABLES["table7"].metric == "mse" and TABLES["table7"].unit == "1e-5"
    assert TABLES["table7"].cell("SpectReg", "0").mean * TABLES["table7"].scale == pytest.approx(1.66e-4)
    assert {t.dataset for t in TABLES.values()} == {"mnist", "cifar10", "sin"}
    assert TABLES["table5"].n_runs == 1 and TABLES["table5"].train_size is None
    assert all(TABLES[n].n_runs == 10 for n in ("table1", "table2", "table3", "table4", "table6"))


def test_tables_are_read_only():
    t = TABLES["table1"]
    with pytest.raises(TypeError):
        t.cells[("LeNet Dropout", "NoGR")] = Cell(0.0, 0.0)
    with pytest.raises(TypeError):
        t.weights[("LeNet Dropout", "DataGrad")]["DataGrad"] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.name = "x"
    with pytest.raises(TypeError):
        TABLES["table8"] = t
    with pytest.raises(KeyError, match="rows"):
        t.cell("LeNet", "NoGR")


# --------------------------------------------------------------------------- weights


def test_table1_weights_render_the_caption(paper_flat):
    w = TABLES["table1"].weights

    def pair(row):
        return f"({w[(row, 'DataGrad')]['DataGrad']:g}, {w[(row, 'SpectReg')]['SpectReg']:g})"

    caption = (
        f"Batchnorm {pair('LeNet Batchnorm')}, Dropout {pair('LeNet Dropout')}, "
        f"unregular- ized {pair('LeNet unregularized')}"  # hyphenated across a line break in the PDF
    )
    assert caption in paper_flat
    assert all(w[(row, "NoGR")] == {} for row in TABLES["table1"].row_labels)


def test_table2_and_table3_weights_render_their_captions(paper_flat):
    w2 = TABLES["table2"].weights
    dg, sr, cp = w2[("No CP", "DataGrad")]["DataGrad"], w2[("No CP", "SpectReg")]["SpectReg"], w2[("CP", "No GR")]["CP"]
    assert f"Optimal weights for DataGrad, SpectReg and CP are {dg:g}, {sr:g} and {cp:g}, respectively" in paper_flat
    assert f"the optimal DataGrad weight is {w2[('CP', 'DataGrad')]['DataGrad']:g}." in paper_flat
    assert w2[("CP", "DataGrad")]["CP"] == w2[("CP", "SpectReg")]["CP"] == cp
    w3 = TABLES["table3"].weights
    cp3, sr3, dg3 = (w3[("ResNet", k)][k] for k in ("CP", "SpectReg", "DataGrad"))
    assert (
        f"Optimal weights for CP, SpectReg and DataGrad are {cp3:g}, {sr3:g} and {dg3:g}, respectively." in paper_flat
    )


def test_sweep_weights_follow_the_column_labels():
    for name in ("table5", "table7"):
        t = TABLES[name]
        for (row, col), w in t.weights.items():
            assert w == ({row: float(col)} if float(col) else {}), (name, row, col)
        assert set(t.weights) == set(t.cells)
    assert TABLES["table6"].weights == {}


def test_weight_names_are_known_regularizers():
    known = set(gradreg.REGULARIZERS) | {"CP"}
    for t in TABLES.values():
        for w in t.weights.values():
            assert set(w) <= known, (t.name, w)
    for weights in TUNED_WEIGHTS.values():
        assert set(weights) <= known


# --------------------------------------------------------------------------- grids, tuned weights, facts


def test_lambda_grids_match_section_6_1(paper_lines):
    for reg in ("DataGrad", "SpectReg", "JacReg"):
        assert f"• {reg}: " + ", ".join(f"{v:g}" for v in LAMBDA_GRIDS[reg]) in paper_lines
    for grid in LAMBDA_GRIDS.values():
        assert list(grid) == sorted(set(grid)), grid  # strictly increasing
    # The CP line has a typo; the stored grid fixes exactly one entry.
    literal = (0.0001, 0.003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1)
    assert "• CP: " + ", ".join(f"{v:g}" for v in literal) in paper_lines
    cp = LAMBDA_GRIDS["CP"]
    assert [i for i, (a, b) in enumerate(zip(cp, literal)) if a != b] == [1] and cp[1] == 0.0003
    assert cp == LAMBDA_GRIDS["SpectReg"]


def test_tuned_weights_match_reference_and_tables():
    path = SETTINGS  # the settings behind the published numbers, kept in the repository
    if path.is_file():
        rows = dict(re.findall(r"^\s*\| ([A-Za-z /]+?) \| ([\d.]+) \|$", path.read_text(), re.M))
        assert len(rows) == 6, rows
        expected = {}
        for name, value in rows.items():
            for part in name.split(" / "):
                expected[part] = float(value)
        assert dict(TUNED_WEIGHTS["mnist"]) == expected
    # The same weights as the tables' captions state.
    t2 = TABLES["table2"].weights
    assert TUNED_WEIGHTS["mnist"]["DataGrad"] == t2[("No CP", "DataGrad")]["DataGrad"]
    assert TUNED_WEIGHTS["mnist"]["SpectReg"] == t2[("No CP", "SpectReg")]["SpectReg"]
    assert TUNED_WEIGHTS["mnist"]["CP"] == t2[("CP", "No GR")]["CP"]
    t3 = TABLES["table3"].weights
    assert dict(TUNED_WEIGHTS["cifar10"]) == {k: t3[("ResNet", k)][k] for k in ("DataGrad", "SpectReg", "CP")}


def test_facts_are_quoted_verbatim(paper_flat):
    for key, fact in FACTS.items():
        assert fact.quote in paper_flat, key
        if isinstance(fact.value, tuple):
            continue
        renderings = {f"{fact.value:g}", str(fact.value), f"{fact.value / 1e6:g} million"}
        assert any(r in fact.quote for r in renderings), (key, fact.value)
    for wd in FACTS["figure4_weight_decays"].value:  # Figure 4's panel titles
        assert f"wd = {wd}" in paper_flat


def test_claims_about_the_figures_are_quoted_verbatim(paper_text):
    from gradreg.paper.numbers import CLAIMS

    # a word hyphenated across a line break ("signif-\nicant") is quoted whole
    joined = " ".join(re.sub(r"(\w)-\n(\w)", r"\1\2", paper_text).split())
    assert {c.figure for c in CLAIMS.values()} == {"fig2", "fig4", "table6"}
    for key, claim in CLAIMS.items():
        assert claim.quote in joined, key


def test_facts_agree_with_the_tables():
    t5, t7 = TABLES["table5"], TABLES["table7"]
    acc = FACTS["cifar10_full_resnet_test_accuracy"].value
    assert t5.cell("SpectReg", "0").mean == t5.cell("DataGrad", "0").mean == acc
    assert max(t5.col_labels[1:], key=lambda c: t5.cell("DataGrad", c).mean) == "0.01"
    assert (
        float(max(t5.col_labels[1:], key=lambda c: t5.cell("DataGrad", c).mean))
        == FACTS["figure3_datagrad_lambda"].value
    )
    best = min(t7.col_labels, key=lambda c: t7.cell("SpectReg", c).mean)
    assert float(best) == FACTS["table7_best_spectreg_lambda"].value
    ratio = t7.cell("SpectReg", "0").mean / t7.cell("SpectReg", best).mean
    assert round(ratio) == FACTS["table7_mse_reduction_factor"].value
