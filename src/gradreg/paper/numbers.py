"""The paper's published numbers, as data.

Varga, Csiszárik & Zombori, *Gradient Regularization Improves Accuracy of Discriminative
Models*: Tables 1–7, the numbers the text states for its figures, the λ grids of Section 6.1,
and the tuned weights of ``docs/settings.md``. Transcribed from
``shared/paper/paper.txt``; ``tests/test_paper_data.py`` re-renders every cell and row in the
paper's own format and finds it in that text.

Conventions:

- Cells are in the printed units: ``unit == "%"`` is test accuracy in percent, ``unit ==
  "1e-5"`` (Table 7) is test MSE in units of 1e-5. ``table.scale`` converts to natural units
  (a fraction in [0, 1], or the MSE itself), the units of ``gradreg.train.RunResult.test``.
- ``Cell.std`` is the printed std over ``n_runs`` runs, or ``None`` where the table prints
  none (Tables 5 and 7). The paper does not say whether it is ddof=0 or 1 (see
  :mod:`gradreg.stats`).
- ``weights[(row, col)]`` maps regularizer name to the λ the paper states for that cell
  (``{}`` for an unregularized cell). Cells missing from ``weights`` have no stated λ.
  Regularizer names are the library's (``DataGrad``, ``SpectReg``, ``JacReg``,
  ``FrobReg``, ``CP``); a CP weight is in the original code's batch-sum convention
  (``gradreg.ConfidencePenalty`` weight = CP weight × batch size).
- Row and column labels are the printed ones (Table 2 prints ``No GR``, Tables 1 and 4
  ``NoGR``). Tables 3 and 6 print no row label; theirs is the model, ``ResNet`` / ``LeNet``.
  Table 7's only row is printed ``MSE (1e-5)``; it is labelled ``SpectReg`` here, like
  Table 5's rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "Cell",
    "PaperTable",
    "Fact",
    "Claim",
    "TABLES",
    "FACTS",
    "CLAIMS",
    "LAMBDA_GRIDS",
    "TUNED_WEIGHTS",
]


@dataclass(frozen=True)
class Cell:
    """One printed number: ``mean (std)``; ``std`` is ``None`` where none is printed."""

    mean: float
    std: float | None = None


@dataclass(frozen=True)
class PaperTable:
    """One table of the paper. ``cells[(row, col)]`` for every row × col."""

    name: str  # "table1" ... "table7"
    caption: str  # short, ours
    dataset: str  # "mnist", "cifar10" or "sin"
    train_size: int | None  # None: the full training set
    metric: str  # "accuracy" or "mse" (on the test set)
    unit: str  # "%" or "1e-5": the units of the printed cells
    n_runs: int | None  # runs per cell; None where the paper does not say
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]
    cells: Mapping[tuple[str, str], Cell]
    weights: Mapping[tuple[str, str], Mapping[str, float]]

    @property
    def scale(self) -> float:
        """Printed units → natural units: 0.01 for percent, 1e-5 for Table 7's MSE."""
        return {"%": 0.01, "1e-5": 1e-5}[self.unit]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.row_labels), len(self.col_labels)

    def cell(self, row: str, col: str) -> Cell:
        """The cell at ``(row, col)``; a ``KeyError`` names the valid labels."""
        try:
            return self.cells[(row, col)]
        except KeyError:
            raise KeyError(
                f"{self.name} has no cell ({row!r}, {col!r}); rows: {self.row_labels}, cols: {self.col_labels}"
            ) from None


@dataclass(frozen=True)
class Fact:
    """A number the paper's text states outright, with the sentence it comes from."""

    value: float | tuple[float, ...]
    unit: str  # "%", "params", "lambda", "steps", "factor", ...
    source: str  # where in the paper: "6.1.1", "Figure 4", ...
    quote: str  # verbatim from paper.txt (whitespace normalized)


@dataclass(frozen=True)
class Claim:
    """A statement the paper makes about one of its figures, which runs can check; the
    figures print no numbers, so these sentences are what a figure's reproduction is held to."""

    figure: str  # "fig2", "fig4", "table6": the experiment whose runs check it
    source: str  # where in the paper: "6.2.4", ...
    quote: str  # verbatim from paper.txt (whitespace normalized)


# --------------------------------------------------------------------------- builders


def _table(  # noqa: PLR0913 (one argument per PaperTable field: the tables below are literal data)
    name: str,
    caption: str,
    dataset: str,
    train_size: int | None,
    metric: str,
    unit: str,
    n_runs: int | None,
    col_labels: tuple[str, ...],
    rows: dict[str, tuple],
    weights: dict[tuple[str, str], dict[str, float]] | None = None,
) -> PaperTable:
    # rows: label -> one entry per column, each (mean, std) or a bare mean.
    cells = {}
    for row, values in rows.items():
        if len(values) != len(col_labels):
            raise ValueError(f"{name}: row {row!r} has {len(values)} values for {len(col_labels)} columns")
        for col, v in zip(col_labels, values):
            cells[(row, col)] = Cell(*v) if isinstance(v, tuple) else Cell(v)
    frozen_weights = {k: MappingProxyType(dict(w)) for k, w in (weights or {}).items()}
    return PaperTable(
        name=name,
        caption=caption,
        dataset=dataset,
        train_size=train_size,
        metric=metric,
        unit=unit,
        n_runs=n_runs,
        row_labels=tuple(rows),
        col_labels=col_labels,
        cells=MappingProxyType(cells),
        weights=MappingProxyType(frozen_weights),
    )


def _sweep_weights(regs: tuple[str, ...], lambdas: tuple[str, ...]) -> dict[tuple[str, str], dict[str, float]]:
    """The weights of a λ-sweep table (Tables 5 and 7): row ``reg``, column the printed λ, ``{}``
    (unregularized) at λ = 0."""
    return {(reg, lam): ({reg: float(lam)} if float(lam) else {}) for reg in regs for lam in lambdas}


# --------------------------------------------------------------------------- the tables

# "All reported numbers are the mean of these 10 runs evaluated on the test set, accompanied
# with the standard deviation in parentheses" (6.2).
_N = 10

# Table 1 caption: "DataGrad and SpectReg weights for the different base normalizers are as
# follows: Batchnorm (0.001, 0.001), Dropout (50, 0.01), unregularized (50, 0.01)".
_T1_WEIGHTS = {"LeNet unregularized": (50, 0.01), "LeNet Batchnorm": (0.001, 0.001), "LeNet Dropout": (50, 0.01)}

TABLE1 = _table(
    "table1",
    "Dropout, Batchnorm and gradient regularization (DataGrad, SpectReg) on MNIST, 2000 training points",
    "mnist",
    2000,
    "accuracy",
    "%",
    _N,
    ("NoGR", "SpectReg", "DataGrad"),
    {
        "LeNet unregularized": ((96.99, 0.15), (97.59, 0.13), (97.56, 0.24)),
        "LeNet Batchnorm": ((96.89, 0.23), (96.94, 0.27), (96.89, 0.22)),
        "LeNet Dropout": ((97.29, 0.19), (97.65, 0.14), (97.98, 0.12)),
    },
    weights={
        **{(row, "NoGR"): {} for row in _T1_WEIGHTS},
        **{(row, "SpectReg"): {"SpectReg": sr} for row, (_, sr) in _T1_WEIGHTS.items()},
        **{(row, "DataGrad"): {"DataGrad": dg} for row, (dg, _) in _T1_WEIGHTS.items()},
    },
)

# Table 2 caption: "Optimal weights for DataGrad, SpectReg and CP are 50, 0.03 and 0.01,
# respectively, and when CP and DataGrad and used in conjunction, the optimal DataGrad weight
# is 10." The CP + SpectReg cell is not named; the caption re-tunes only DataGrad, so it is
# read as SpectReg 0.03 with CP 0.01.
TABLE2 = _table(
    "table2",
    "Confidence penalty versus SpectReg and DataGrad on MNIST, 2000 training points",
    "mnist",
    2000,
    "accuracy",
    "%",
    _N,
    ("No GR", "SpectReg", "DataGrad"),
    {
        "No CP": ((97.39, 0.11), (97.79, 0.12), (97.89, 0.12)),
        "CP": ((97.57, 0.15), (97.89, 0.12), (98.07, 0.09)),
    },
    weights={
        ("No CP", "No GR"): {},
        ("No CP", "SpectReg"): {"SpectReg": 0.03},
        ("No CP", "DataGrad"): {"DataGrad": 50},
        ("CP", "No GR"): {"CP": 0.01},
        ("CP", "SpectReg"): {"SpectReg": 0.03, "CP": 0.01},
        ("CP", "DataGrad"): {"DataGrad": 10, "CP": 0.01},
    },
)

# Table 3 caption: "Optimal weights for CP, SpectReg and DataGrad are 0.003, 0.003 and 1".
TABLE3 = _table(
    "table3",
    "SpectReg, DataGrad and confidence penalty on CIFAR-10, 2000 training points",
    "cifar10",
    2000,
    "accuracy",
    "%",
    _N,
    ("Baseline", "SpectReg", "DataGrad", "CP"),
    {"ResNet": ((55.63, 2.06), (59.24, 1.48), (57.45, 1.79), (58.30, 1.79))},
    weights={
        ("ResNet", "Baseline"): {},
        ("ResNet", "SpectReg"): {"SpectReg": 0.003},
        ("ResNet", "DataGrad"): {"DataGrad": 1},
        ("ResNet", "CP"): {"CP": 0.003},
    },
)

# Table 4 prints its cells without "%" and the λ inline: "97.69 (0.11) λ = 0.03". Note the
# SpectReg λ = 0.05 with weight decay is not on the SpectReg grid of 6.1; transcribed as printed.
TABLE4 = _table(
    "table4",
    "Weight decay versus SpectReg and DataGrad on MNIST, 2000 training points",
    "mnist",
    2000,
    "accuracy",
    "%",
    _N,
    ("NoGR", "SpectReg", "DataGrad"),
    {
        "no WD": ((97.25, 0.22), (97.69, 0.11), (97.95, 0.15)),
        "WD=0.0005": ((97.40, 0.15), (97.73, 0.13), (97.92, 0.16)),
    },
    weights={
        ("no WD", "NoGR"): {},
        ("no WD", "SpectReg"): {"SpectReg": 0.03},
        ("no WD", "DataGrad"): {"DataGrad": 50},
        ("WD=0.0005", "NoGR"): {},
        ("WD=0.0005", "SpectReg"): {"SpectReg": 0.05},
        ("WD=0.0005", "DataGrad"): {"DataGrad": 50},
    },
)

# Table 5: one run per cell, no std; "trained ... for 200000 iterations" (6.1.2 says 50000).
_T5_LAMBDAS = ("0", "0.0001", "0.0003", "0.001", "0.003", "0.01", "0.03", "0.1")
TABLE5 = _table(
    "table5",
    "SpectReg and DataGrad λ sweep on full CIFAR-10 with data augmentation, 1 run per cell",
    "cifar10",
    None,
    "accuracy",
    "%",
    1,
    _T5_LAMBDAS,
    {
        "SpectReg": (93.71, 93.74, 93.66, 93.55, 93.54, 93.01, 92.49, 93.14),
        "DataGrad": (93.71, 93.98, 94.08, 93.94, 94.04, 94.14, 93.80, 93.46),
    },
    weights=_sweep_weights(("SpectReg", "DataGrad"), _T5_LAMBDAS),
)

# Table 6 states no weights (docs/settings.md's tuned MNIST weights are in TUNED_WEIGHTS).
TABLE6 = _table(
    "table6",
    "SpectReg, JacReg and FrobReg on MNIST, 2000 training points",
    "mnist",
    2000,
    "accuracy",
    "%",
    _N,
    ("SpectReg", "JacReg", "FrobReg"),
    {"LeNet": ((97.79, 0.12), (97.63, 0.15), (97.76, 0.13))},
)

# Table 7 prints "MSE (1e-5) 16,6 24,5 2,5 ...": a decimal comma, i.e. 16.6e-5. (Read as
# "mean,std" the optimum 1,6 would be a 16-fold reduction; the caption says "a factor of 10",
# which 16.6 / 1.6 is.) The paper gives no run count for SIN, and no std.
_T7_LAMBDAS = ("0", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3", "1", "3", "10")
TABLE7 = _table(
    "table7",
    "Test MSE on SIN for SpectReg weights",
    "sin",
    100,
    "mse",
    "1e-5",
    None,
    _T7_LAMBDAS,
    {"SpectReg": (16.6, 24.5, 2.5, 2.3, 1.6, 3.4, 74.9, 497.7, 1264.4, 2002.2)},
    weights=_sweep_weights(("SpectReg",), _T7_LAMBDAS),
)

TABLES: Mapping[str, PaperTable] = MappingProxyType(
    {t.name: t for t in (TABLE1, TABLE2, TABLE3, TABLE4, TABLE5, TABLE6, TABLE7)}
)


# --------------------------------------------------------------------------- numbers in the text

FACTS: Mapping[str, Fact] = MappingProxyType(
    {
        "mnist_full_lenet_test_accuracy": Fact(
            99.1,
            "%",
            "6.1.1",
            "On the full MNIST dataset, this model achieves 99.1% test accuracy without data augmentation.",
        ),
        "cifar10_full_resnet_test_accuracy": Fact(
            93.71, "%", "6.1.2", "On the full CIFAR-10 training set, this model achieves 93.71% test accuracy."
        ),
        "lenet_parameter_count": Fact(
            61706, "params", "6.1.1", "The total parameter count of the used baseline model is 61706."
        ),
        # docs/settings.md: the published ResNet has ~2.41M parameters.
        "resnet_parameter_count_approx": Fact(
            2.5e6, "params", "6.1.2", "The network has around 2.5 million parameters."
        ),
        "cifar10_steps": Fact(50000, "steps", "6.1.2", "The models are trained for 50000 iterations with SGD"),
        "table5_steps": Fact(
            200000,
            "steps",
            "Table 5",
            "trained on CIFAR-10 with full training set and data augmentation for 200000 iterations",
        ),
        "mnist_steps": Fact(
            10000,
            "steps",
            "6.1.1",
            "Our training runs are stopped after 10000 minibatches in all of our MNIST experiments.",
        ),
        "figure3_datagrad_lambda": Fact(
            0.01,
            "lambda",
            "Figure 3",
            "Figure 3 shows the learning curves of DataGrad (with the best performing λ = 0.01)",
        ),
        "figure4_phase_transition_datagrad_lambda": Fact(
            20, "lambda", "Figure 4", "this phase transition point was around DataGrad weight 20"
        ),
        # The values are the six panel titles of Figure 4: "wd = 0.0", ..., "wd = 0.01".
        "figure4_weight_decays": Fact(
            (0.0, 0.0001, 0.0005, 0.001, 0.005, 0.01),
            "weight decay",
            "Figure 4",
            "Each chart was created using a different L2 regularization weight.",
        ),
        "figure2_largest_train_size_with_benefit": Fact(
            20000, "examples", "Figure 2", "we can see their benefit even for as much as 20000 training points."
        ),
        "table7_best_spectreg_lambda": Fact(
            0.03, "lambda", "Table 7", "The optimal weight is 0.03 which yields a reduction in MSE by a factor of 10."
        ),
        "table7_mse_reduction_factor": Fact(
            10, "factor", "Table 7", "The optimal weight is 0.03 which yields a reduction in MSE by a factor of 10."
        ),
    }
)


# --------------------------------------------------------------------------- claims about the figures

# Checked against our cells by gradreg.paper.claims; a figure's report prints each with its verdict.
CLAIMS: Mapping[str, Claim] = MappingProxyType(
    {
        "fig2_datagrad_best": Claim(
            "fig2",
            "6.2.4",
            "We can see that DataGrad performs better than any of its peers for all training set sizes.",
        ),
        "fig2_spectreg_over_cp_evaporates": Claim(
            "fig2",
            "6.2.4",
            "SpectReg is better than CP for smaller train set sizes, but its advantage evaporates with more "
            "training data.",
        ),
        "fig2_jacreg_worst": Claim("fig2", "6.2.4", "JacReg is consistently worse than its peers."),
        "fig2_effect_shrinks_but_stays": Claim(
            "fig2",
            "6.2.4",
            "Even though the effect of the regularizers shrinks as we increase the training corpus, we can see "
            "their benefit even for as much as 20000 training points.",
        ),
        "table6_only_spectreg_vs_jacreg": Claim(
            "table6",
            "Table 6",
            "SpectReg performs best, but the differences are small: after Bonferroni correction, the only "
            "statistically significant difference is between SpectReg and JacReg.",
        ),
        "table6_projection_loses_nothing": Claim(
            "table6",
            "Table 6",
            "1) we do not lose accuracy by minimizing a random projection of the Jacobian of the logits",
        ),
        "table6_logits_over_probabilities": Claim(
            "table6",
            "Table 6",
            "2) it is better to minimize the Jacobian on the logits, rather than on the probabilities.",
        ),
        "fig4_accuracy_rises_then_collapses": Claim(
            "fig4",
            "6.2.7",
            "We can see that the correlation between DataGrad weight and model accuracy is positive until a phase "
            "transition point is reached where accuracy collapses. For the task at hand, this phase transition "
            "point was around DataGrad weight 20, unaffected by the amount of weight decay.",
        ),
        "fig4_no_wd_datagrad_shrinks_weights": Claim(
            "fig4",
            "6.2.7",
            "For the model with no weight decay, DataGrad acts as a kind of weight decay itself, inasmuch as "
            "increasing the DataGrad weight λ decreases the weight loss of the trained network.",
        ),
        "fig4_with_wd_counteracts_then_reinforces": Claim(
            "fig4",
            "6.2.7",
            "For models with weight decay, the relationship is more complex: below the phase transition DataGrad "
            "counteracts weight decay, above the phase transition it reinforces its effect.",
        ),
    }
)

# --------------------------------------------------------------------------- λ grids (6.1)

LAMBDA_GRIDS: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        "DataGrad": (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 2, 5, 10, 20, 50, 100),
        "SpectReg": (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1),
        "JacReg": (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1),
        # The text reads "CP: 0.0001, 0.003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1": 0.003 twice
        # and not increasing, a typo for 0.0003 (the SpectReg/JacReg grid). Corrected here.
        "CP": (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1),
    }
)


# --------------------------------------------------------------------------- tuned weights

# From docs/settings.md (the authors' code), per dataset at 2000 training points. CP is in the
# original's batch-sum convention: gradreg.ConfidencePenalty(weight=CP × batch size), i.e.
# 0.01 → 0.5 at B = 50 (MNIST), 0.003 → 0.384 at B = 128 (CIFAR-10).
TUNED_WEIGHTS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "mnist": MappingProxyType(
            {
                "DataGrad": 50,
                "SpectReg": 0.03,
                "JacReg": 1,
                "FrobReg": 0.03,
                "OneHot": 0.3,
                "RandomOneHot": 0.3,
                "CP": 0.01,
            }
        ),
        "cifar10": MappingProxyType({"DataGrad": 1, "SpectReg": 0.003, "CP": 0.003}),
    }
)
