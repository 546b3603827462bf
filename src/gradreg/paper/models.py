"""The paper's three networks, re-exported from :mod:`gradreg.networks`, where they live.

They are general models, so they sit in the library, below :mod:`gradreg.paper`; this name is
kept for ``from gradreg.paper.models import lenet5`` in user code and the docs. New code imports
:mod:`gradreg.networks`.
"""

from ..networks import (
    MODELS,
    BasicBlock,
    Conv2dTFSame,
    ResNetCifar,
    build_model,
    decayed_parameters,
    lenet5,
    mlp_sin,
    resnet_cifar,
    tf_same_padding,
)

__all__ = [
    "BasicBlock",
    "Conv2dTFSame",
    "MODELS",
    "ResNetCifar",
    "build_model",
    "decayed_parameters",
    "lenet5",
    "mlp_sin",
    "resnet_cifar",
    "tf_same_padding",
]
