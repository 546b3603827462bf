"""One data location for every test: the directory the README names.

``$GRADREG_DATA_DIR`` (what the library and the README use), else ``../shared/data`` beside
the repository. Tests that need a dataset are skipped, with the reason, when it is absent.
"""

import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("GRADREG_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
HAVE_MNIST = (DATA / "mnist").is_dir()
HAVE_CIFAR = (DATA / "cifar10").is_dir()
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST not found under {DATA} (set GRADREG_DATA_DIR)")
needs_cifar = pytest.mark.skipif(not HAVE_CIFAR, reason=f"CIFAR-10 not found under {DATA} (set GRADREG_DATA_DIR)")


@pytest.fixture
def data_dir() -> Path:
    """The data directory; skips the test when MNIST is not there."""
    if not HAVE_MNIST:
        pytest.skip(f"MNIST not found under {DATA} (set GRADREG_DATA_DIR)")
    return DATA


@pytest.fixture
def fresh_compile():
    """A clean torch.compile cache. Every ``nn.Sequential`` shares one ``forward`` code object,
    so compile tests that run after others could meet dynamo's recompile limit, where it falls
    back to eager without a word, and test eager instead of the compiled graph."""
    import torch._dynamo

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
