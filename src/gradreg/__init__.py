"""gradreg: input-gradient (Jacobian) regularization for PyTorch.

The drop-in API:

```python
import gradreg as gr
loss, terms = gr.regularized_loss(model, x, y, [gr.DataGrad(50.0), gr.ConfidencePenalty(0.5)])
loss.backward()
```

or, for a forward pass you already ran (several inputs, embeddings, autocast, DDP, compile):

```python
x.requires_grad_()
logits = model(x)
loss, terms = gr.regularize(logits, y, x, [gr.SpectReg(0.03)])
```

Importing this package has no side effects: no data loading, no printing.
"""

from . import attacks, penalties
from .core import penalty, per_example_loss, regularize, regularized_loss
from .hooks import Capture, capture
from .penalties import NoInputGradient
from .regularizers import (
    REGISTRY,
    REGULARIZERS,
    ConfidencePenalty,
    DataGrad,
    Forward,
    FrobReg,
    JacReg,
    OneHot,
    RandomOneHot,
    Regularizer,
    SpectReg,
    register,
)

__version__ = "0.2.0"

__all__ = [
    "capture",
    "Capture",
    "penalties",
    "attacks",
    "regularize",
    "regularized_loss",
    "penalty",
    "per_example_loss",
    "Regularizer",
    "Forward",
    "register",
    "NoInputGradient",
    "DataGrad",
    "SpectReg",
    "FrobReg",
    "JacReg",
    "OneHot",
    "RandomOneHot",
    "ConfidencePenalty",
    "REGISTRY",
    "REGULARIZERS",
]
