"""Run configuration: one frozen dataclass, with the paper's settings as presets.

The presets are the settings behind the published numbers (`docs/settings.md`),
which differ from the paper's text in places: MNIST used Adam with lr 1e-3 (not 0.1), CIFAR
SGD with lr 0.01 (not 0.1).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch

from . import regularizers as R
from .models import check_model_name, check_model_options, models_for

DATASETS = ("mnist", "cifar10", "sin", "sin2")
IMAGE_DATASETS = ("mnist", "cifar10")  # what --augment can translate and flip
OPTIMIZERS = ("adam", "sgd_nesterov")
MODELS_FOR = {d: models_for(d) for d in DATASETS}  # registered names per dataset
# Fields added after the first release: omitted from to_dict() (and so from run keys) while
# they hold their default, so every run stored before they existed keeps its key.
_FLOAT_FIELDS = ("lr", "lr_gamma", "weight_decay", "dropout")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run.

    Defaults: the paper's MNIST LeNet run (use `paper_config` for the other datasets). The
    comment on each field gives its meaning and units.

    Identity: equal configs have equal `to_dict` and so equal run keys -- numbers are normalized
    (`weight_decay=0` is `0.0`), and fields added after the first release appear only when they
    differ from their defaults.

    Raises:
        TypeError: An integer field (`seed`, `steps`, `batch_size`, ...) is not an integer, a
            float field is not a number, a regularizer is not a gradreg regularizer, or a
            probe budget list is not a sequence; or as the model registry raises for `model`.
        ValueError: A choice (`dataset`, `optimizer`, `adversarial`, `device`) is not valid; a
            count or rate is out of range; an option does not apply to the dataset or model
            (`augment`, adversarial training or probes off images, a softmax penalty on SIN);
            `wrt` is empty or combined with finite differences or adversarial training;
            `lr_milestones` are not fractions in [0, 1].
    """

    # --- what is trained
    dataset: str = "mnist"
    model: str = "lenet5"  # a registered name (gradreg.models.MODELS) or an import path "package.module:factory"
    train_size: int | None = 2000  # None: the whole training pool
    seed: int = 1  # data subset, init, batch order, dropout and projection draws
    regularizers: tuple[R.Regularizer, ...] = ()
    # --- model options
    dropout: float | None = 0.5  # LeNet only; None removes it
    batchnorm: bool = False  # LeNet: BatchNorm on the 84 hidden units instead of dropout
    bn_batch_stats_at_eval: bool = False  # the original's BN always used batch statistics
    # --- optimization
    optimizer: str = "adam"  # "adam" (betas 0.9, 0.999) or "sgd_nesterov" (momentum 0.9)
    lr: float = 1e-3
    steps: int = 10_000
    batch_size: int = 50
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of `steps`
    lr_gamma: float = 0.1  # lr multiplied by this at each milestone
    weight_decay: float = 5e-4  # wd * 1/2 ||w||^2 in the loss, conv/dense weights only
    loss: str = "cross_entropy"  # "half_sse" for SIN: 1/2 sum over the batch
    augment: bool = False  # CIFAR: random 4-px translation + horizontal flip
    # --- data options (see gradreg.data)
    per_set_standardization: bool = False  # the original's per-set statistics (a bug)
    dev_is_test: bool = False  # CIFAR: the original's test-as-dev (leaks test data)
    # --- bookkeeping
    device: str = "cpu"
    eval_every: int = 500  # learning-curve sampling period, steps (0: only at the end)
    eval_batch_size: int = 1000
    eval_limit: int | None = None  # evaluate on the first N dev/test examples only (quick checks)
    penalty_window: int = 100  # penalties are averaged over the last this many steps
    checkpoint_every: int = 0  # steps between checkpoints (0: none)
    # --- added after the first release (omitted from to_dict() while at their defaults)
    # the penalties differentiate by this submodule's output (e.g. "pool1", LeNet's first conv
    # block) instead of the input; None: the input
    wrt: str | None = dataclasses.field(default=None, metadata={"added": True})
    # adversarial training, L-infinity, eps in pixel units (mapped through the standardization):
    # "fgsm" is FGSM from a uniform random start with step 1.25 eps (Wong, Rice & Kolter 2020),
    # "pgd" is PGD with `adversarial_steps` steps of 2.5 eps / steps from a random start (Madry
    # et al. 2018); the model trains on the adversarial batch instead of the clean one
    adversarial: str | None = dataclasses.field(default=None, metadata={"added": True})
    adversarial_eps: float = dataclasses.field(default=0.3, metadata={"added": True})
    adversarial_steps: int = dataclasses.field(default=7, metadata={"added": True})
    # robustness probes at the end of the run (gradreg.probes): PGD and FGSM accuracy on the
    # first `robust_examples` test images at each eps (pixel units), with masking diagnostics
    robust_linf: tuple[float, ...] = dataclasses.field(default=(), metadata={"added": True})
    robust_l2: tuple[float, ...] = dataclasses.field(default=(), metadata={"added": True})
    robust_steps: int = dataclasses.field(default=20, metadata={"added": True})
    robust_examples: int = dataclasses.field(default=1000, metadata={"added": True})

    def __post_init__(self) -> None:
        _choice("dataset", self.dataset, DATASETS)
        check_model_name(self.model, self.dataset)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_counts(self)
        _check_floats(self)
        check_model_options(self)
        _check_values(self)
        _check_adversarial(self)
        _check_regularizers(self)
        _check_milestones(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes` applied (validated again).

        Args:
            **changes: Fields and their new values.

        Returns:
            The new config.

        Raises:
            TypeError: As the constructor raises (also for an unknown field).
            ValueError: As the constructor raises.
        """
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The config as a JSON-ready dict: what its run key hashes.

        Fields added after the first release are left out while they hold their default; the
        regularizers become dicts (`regularizer_to_dict`) and tuples lists.

        Returns:
            The dict.
        """
        d = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.metadata.get("added") and v == f.default:
                continue
            d[f.name] = v
        d["regularizers"] = [regularizer_to_dict(r) for r in self.regularizers]
        d["lr_milestones"] = list(self.lr_milestones)
        for name in ("robust_linf", "robust_l2"):
            if name in d:
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config that `to_dict` wrote.

        Args:
            d: A config dict; missing fields take their defaults.

        Returns:
            The config, validated.

        Raises:
            ValueError: `d` has a field this version does not know (written by another gradreg
                version?), or as the constructor raises.
            TypeError: As the constructor raises.
        """
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config has unknown field(s) {', '.join(unknown)}: written by another gradreg version?")
        d["regularizers"] = tuple(regularizer_from_dict(r) for r in d.get("regularizers", ()))
        d["lr_milestones"] = tuple(d.get("lr_milestones", (0.5, 0.75)))
        for name in ("robust_linf", "robust_l2"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)


_COUNT_FIELDS = (
    "seed",
    "steps",
    "batch_size",
    "eval_batch_size",
    "penalty_window",
    "eval_every",
    "checkpoint_every",
    "adversarial_steps",
    "robust_steps",
    "robust_examples",
)


def _check_counts(cfg: TrainConfig) -> None:
    """The integer fields: integers, and at least 1 (or 0 where 0 means "never").

    Args:
        cfg: The config being validated.

    Raises:
        TypeError: A count is not an integer (a bool is not one).
        ValueError: A count, `eval_limit` or `train_size` is below its minimum.
    """
    for name in _COUNT_FIELDS:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an integer, got {v!r}")
    for name in ("steps", "batch_size", "eval_batch_size", "penalty_window", "adversarial_steps", "robust_steps"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("eval_every", "checkpoint_every"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.eval_limit is not None and cfg.eval_limit < 1:
        raise ValueError(f"eval_limit must be >= 1 or None, got {cfg.eval_limit}")
    if cfg.train_size is not None and cfg.train_size < 1:
        raise ValueError(f"train_size must be >= 1, got {cfg.train_size}")


def _check_floats(cfg: TrainConfig) -> None:
    """The float fields: numbers, stored as floats (so 0 and 0.0 are one config), and `dropout` in [0, 1).

    Args:
        cfg: The config being validated; its float fields are replaced by floats.

    Raises:
        TypeError: A float field is not a real number.
        ValueError: `dropout` is not in [0, 1) or None.
    """
    for name in _FLOAT_FIELDS:  # identity: 0 and 0.0 are one config
        v = getattr(cfg, name)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, Real):
                raise TypeError(f"{name} must be a number, got {v!r}")
            object.__setattr__(cfg, name, float(v))
    if cfg.dropout is not None and not 0 <= cfg.dropout < 1:
        raise ValueError(f"dropout must be in [0, 1) or None, got {cfg.dropout}")


def _check_values(cfg: TrainConfig) -> None:
    """The ranges of `augment`, `lr`, `lr_gamma`, `seed`, `device`, `weight_decay` and `wrt`.

    Args:
        cfg: The config being validated.

    Raises:
        ValueError: `augment` on a dataset without images; `lr` or `lr_gamma` not a finite
            number > 0; `seed` outside [0, 2**32); an unknown device; a negative
            `weight_decay`; `wrt` neither None nor a non-empty string.
    """
    if cfg.augment and cfg.dataset not in IMAGE_DATASETS:
        raise ValueError(
            f"augment translates and flips images, and dataset {cfg.dataset!r} has none; "
            f"it works on {', '.join(IMAGE_DATASETS)}"
        )
    if not 0 < cfg.lr < math.inf:
        raise ValueError(f"lr must be a finite number > 0, got {cfg.lr}")
    if not 0 < cfg.lr_gamma < math.inf:
        raise ValueError(f"lr_gamma must be a finite number > 0, got {cfg.lr_gamma}")
    if not 0 <= cfg.seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {cfg.seed}")
    _check_device(cfg.device)
    if not cfg.weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.wrt is not None and (not isinstance(cfg.wrt, str) or not cfg.wrt):
        raise ValueError(f"wrt must be a submodule name (e.g. 'pool1') or None, got {cfg.wrt!r}")


def _check_regularizers(cfg: TrainConfig) -> None:
    """The regularizers: gradreg regularizers that the dataset and `wrt` allow, stored as a tuple.

    Args:
        cfg: The config being validated; its `regularizers` are replaced by a tuple.

    Raises:
        TypeError: An element is not a `gradreg.Regularizer`.
        ValueError: A finite-difference penalty with `wrt`, or a function of the softmax on a
            SIN dataset (one output).
    """
    regs = tuple(cfg.regularizers)
    if cfg.wrt is not None and any(getattr(r, "finite_difference", False) for r in regs):
        raise ValueError(
            "finite-difference penalties perturb the input; with wrt (a hidden layer) use the exact method"
        )
    for r in regs:
        if not isinstance(r, R.Regularizer):
            raise TypeError(f"regularizers must be gradreg regularizers, got {type(r).__name__}")
        if r.on_softmax and cfg.dataset in ("sin", "sin2"):
            raise ValueError(
                f"{r.name} is a function of the softmax, which is constant for {cfg.dataset}'s one output "
                "(it would be 0); use it on mnist or cifar10"
            )
    object.__setattr__(cfg, "regularizers", regs)


def _check_milestones(cfg: TrainConfig) -> None:
    """`lr_milestones`: fractions of the steps in [0, 1], stored as a tuple of floats.

    Args:
        cfg: The config being validated; its `lr_milestones` are replaced.

    Raises:
        ValueError: A milestone is not a number in [0, 1].
    """
    milestones = tuple(cfg.lr_milestones)
    for m in milestones:
        if isinstance(m, bool) or not isinstance(m, Real) or not 0 <= m <= 1:
            raise ValueError(f"lr_milestones must be fractions of the steps in [0, 1], got {m!r}")
    object.__setattr__(cfg, "lr_milestones", tuple(float(m) for m in milestones))


ADVERSARIAL = ("fgsm", "pgd")


def _eps_tuple(name: str, values) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence of numbers (pixel units), got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, Real) or not 0 < float(v) < math.inf:
            raise ValueError(f"{name} must hold finite numbers > 0 (pixel units), got {v!r}")
        out.append(float(v))
    return tuple(out)


def _check_adversarial(cfg: TrainConfig) -> None:
    """Adversarial training and the robustness probes: classification on images only."""
    if cfg.adversarial is not None:
        _choice("adversarial", cfg.adversarial, ADVERSARIAL)
    eps = cfg.adversarial_eps
    if isinstance(eps, bool) or not isinstance(eps, Real) or not 0 < eps < math.inf:
        raise ValueError(f"adversarial_eps must be a finite number > 0 (pixel units), got {eps!r}")
    object.__setattr__(cfg, "adversarial_eps", float(eps))
    object.__setattr__(cfg, "robust_linf", _eps_tuple("robust_linf", cfg.robust_linf))
    object.__setattr__(cfg, "robust_l2", _eps_tuple("robust_l2", cfg.robust_l2))
    if cfg.robust_examples < 1:
        raise ValueError(f"robust_examples must be >= 1, got {cfg.robust_examples}")
    uses = cfg.adversarial is not None or cfg.robust_linf or cfg.robust_l2
    if uses and cfg.dataset not in IMAGE_DATASETS:
        raise ValueError(
            f"adversarial training and robustness probes attack images, and dataset {cfg.dataset!r} has none; "
            f"they work on {', '.join(IMAGE_DATASETS)}"
        )
    if cfg.adversarial is not None and cfg.wrt is not None:
        raise ValueError("adversarial training perturbs the input; it does not combine with wrt (a hidden layer)")


def canonical_config(d: dict) -> dict:
    """The normalized form of a config dict (what its run key hashes).

    Args:
        d: A config dict.

    Returns:
        `TrainConfig.from_dict(d).to_dict()`.

    Raises:
        ValueError: As `TrainConfig.from_dict` raises.
        TypeError: As `TrainConfig.from_dict` raises.
    """
    return TrainConfig.from_dict(d).to_dict()


def _choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; valid choices: {', '.join(valid)}")


# --------------------------------------------------------------------------- presets

PAPER: dict[str, dict[str, Any]] = {
    # docs/settings.md: Adam 1e-3, batch 50, 10k steps, x0.1 at 50%/75%, L2 5e-4 in the loss.
    "mnist": dict(
        dataset="mnist",
        model="lenet5",
        train_size=2000,
        optimizer="adam",
        lr=1e-3,
        steps=10_000,
        batch_size=50,
        weight_decay=5e-4,
        loss="cross_entropy",
        dropout=0.5,
        eval_every=500,
    ),
    # Nesterov SGD 0.9, batch 128, 50k steps, lr 0.01, x0.1 at 50%/75%, wd 0.003; BN always
    # on batch statistics in the original.
    "cifar10": dict(
        dataset="cifar10",
        model="resnet_cifar",
        train_size=2000,
        optimizer="sgd_nesterov",
        lr=0.01,
        steps=50_000,
        batch_size=128,
        weight_decay=0.003,
        loss="cross_entropy",
        dropout=None,
        bn_batch_stats_at_eval=True,
        eval_every=1000,
        eval_batch_size=500,
    ),
    # Adam 0.01, same piecewise decay, 10k steps, batch 50, 1/2 sum of squared errors.
    "sin": dict(
        dataset="sin",
        model="mlp_sin",
        train_size=None,
        optimizer="adam",
        lr=0.01,
        steps=10_000,
        batch_size=50,
        weight_decay=0.0,
        loss="half_sse",
        dropout=None,
        eval_every=500,
    ),
}
PAPER["sin2"] = dict(PAPER["sin"], dataset="sin2")


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def _check_device(device) -> None:
    """A device gradreg can train on: `cpu`, `cuda`, `cuda:1`, `mps`, `xpu`."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        kind = None
    if kind not in DEVICE_TYPES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_TYPES)} (or e.g. 'cuda:1'), got {device!r}")


def paper_config(dataset: str, **overrides: Any) -> TrainConfig:
    """The paper's settings for `dataset`, with `overrides` applied.

    Args:
        dataset: `"mnist"`, `"cifar10"`, `"sin"` or `"sin2"`.
        **overrides: Fields to change.

    Returns:
        The config.

    Raises:
        ValueError: An unknown dataset, or as `TrainConfig` raises.
        TypeError: As `TrainConfig` raises.
    """
    _choice("dataset", dataset, DATASETS)
    return TrainConfig(**{**PAPER[dataset], **overrides})


# --------------------------------------------------------------------------- regularizer specs

ALIASES = R.ALIASES  # command-line names, derived from the registry


def regularizer_to_dict(r: R.Regularizer) -> dict:
    """`{"name", "weight", options...}` of a regularizer.

    Options added after the first release (`every`) appear only when they differ from their
    defaults.

    Args:
        r: A regularizer.

    Returns:
        The dict.
    """
    d = R.to_dict(r)
    for f in dataclasses.fields(r):
        if f.metadata.get("added") and d[f.name] == f.default:
            del d[f.name]
    return d


def regularizer_from_dict(d: dict) -> R.Regularizer:
    """The regularizer that `regularizer_to_dict` wrote.

    Args:
        d: The dict.

    Returns:
        The regularizer.

    Raises:
        TypeError: The name is not a regularizer class, or an option is not valid for it.
        ValueError: The name is unknown, or a value is not valid.
    """
    return R.from_dict(d)


def _coerce(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_regularizer(spec: str) -> R.Regularizer:
    """A regularizer from its command-line spec.

    E.g. `"datagrad=50"`, `"cp=0.5"`, `"spectreg=0.03,projection=example,n_proj=4"`. The name
    is a registry alias (case-insensitive) or an import path `"module:Class"`; option values
    `true`/`false`, integers and floats are converted.

    Args:
        spec: `name=weight[,option=value,...]`.

    Returns:
        The regularizer.

    Raises:
        ValueError: An unknown name (with the closest match), a missing or non-numeric weight,
            an option that is not `key=value` or not an option of the class, a non-boolean
            value for a boolean option, or as the class raises.
        TypeError: An import path that is not a regularizer class, or as the class raises.
    """
    head, *opts = spec.split(",")
    name, sep, weight = head.partition("=")
    key = name.strip().lower()
    if ":" in name:
        cls = R.resolve(name.strip())
    elif key not in ALIASES:
        close = difflib.get_close_matches(key, ALIASES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown regularizer {name!r}{hint}; valid names: {', '.join(sorted(ALIASES))}")
    if not sep:
        raise ValueError(f"regularizer {spec!r} needs a weight, e.g. {key}=0.1")
    try:
        w = float(weight)
    except ValueError:
        raise ValueError(f"regularizer {spec!r}: weight {weight!r} is not a number") from None
    kwargs = {}
    for opt in opts:
        k, sep, v = opt.partition("=")
        if not sep:
            raise ValueError(f"regularizer option {opt!r} must be key=value")
        kwargs[k.strip()] = _coerce(v.strip())
    if ":" not in name:
        cls = R.REGISTRY[ALIASES[key]]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    valid = set(fields) - {"weight"}
    for k, v in kwargs.items():
        if k not in valid:
            raise ValueError(f"{cls.__name__} has no option {k!r}; valid options: {', '.join(sorted(valid)) or 'none'}")
        if isinstance(fields[k].default, bool) and not isinstance(v, bool):
            raise ValueError(f"{cls.__name__} option {k} must be true or false, got {v!r}")
    return cls(w, **kwargs)
