"""gradreg: input-gradient (Jacobian) regularization for PyTorch.

The drop-in API::

    import gradreg as gr
    loss, terms = gr.regularized_loss(model, x, y, [gr.DataGrad(50.0), gr.ConfidencePenalty(0.5)])
    loss.backward()

Importing this package has no side effects: no data loading, no printing.
"""

from .core import penalty, per_example_loss, regularized_loss
from .regularizers import (
    REGULARIZERS,
    ConfidencePenalty,
    DataGrad,
    FrobReg,
    JacReg,
    OneHot,
    RandomOneHot,
    Regularizer,
    SpectReg,
)

__version__ = "0.1.0"

__all__ = [
    "regularized_loss",
    "penalty",
    "per_example_loss",
    "Regularizer",
    "DataGrad",
    "SpectReg",
    "FrobReg",
    "JacReg",
    "OneHot",
    "RandomOneHot",
    "ConfidencePenalty",
    "REGULARIZERS",
]
