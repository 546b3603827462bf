"""Options of `gradreg train` derived from the fields of `gradreg.config.TrainConfig`.

One `--option` per field, its help text from `HELP` and its default from the paper's
presets (`config.PAPER`); `config_from_args` turns the options given back into a
config. A new field needs only a line in `HELP`.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from ..config import DATASETS, PAPER, TrainConfig, paper_config, parse_regularizer
from ..models import MODEL_OPTIONS, is_import_path
from .errors import UsageError

# Fields the CLI sets through dedicated options (or not at all).
SPECIAL = {"dataset", "regularizers"}

METAVAR = {
    "model": "MODEL",
    "adversarial": "{fgsm,pgd}",
    "robust_linf": "EPS",
    "robust_l2": "EPS",
    "optimizer": "{adam,sgd_nesterov}",
    "loss": "{cross_entropy,half_sse}",
    "device": "DEVICE",
}

# What each TrainConfig field means, with its unit. The default is appended from the paper's
# presets (config.PAPER), per dataset where they differ.
HELP = {
    "adversarial": "adversarial training: fgsm (FGSM from a random start, step 1.25 eps; Wong et al. 2020) or pgd "
    "(--adversarial-steps steps of 2.5 eps / steps); the model trains on the adversarial batch",
    "adversarial_eps": "adversarial training's L-infinity budget, in pixel units (pixels in [0, 1])",
    "adversarial_steps": "PGD steps of --adversarial pgd",
    "robust_linf": "robustness probes at the end of the run: PGD/FGSM/transfer accuracy at these L-infinity budgets "
    "(pixel units), e.g. 0.05 0.1 0.2 0.3",
    "robust_l2": "robustness probes at these L2 budgets (pixel units), e.g. 1 2",
    "robust_steps": "PGD steps of the robustness probes",
    "robust_examples": "the probes attack the first N test images",
    "model": "network architecture; each dataset has its own, the default",
    "train_size": "training examples, a seeded subset of the training pool; 'none': the whole pool "
    "(sin and sin2 have a fixed set: leave it out)",
    "seed": "seed of the training subset, initialization, batch order, dropout masks and random projections",
    "dropout": "LeNet dropout probability on the hidden layer, in [0, 1); 'none' removes the layer",
    "batchnorm": "LeNet: BatchNorm on the 84 hidden units (the paper pairs it with --dropout none)",
    "bn_batch_stats_at_eval": "BatchNorm uses batch statistics also when evaluating, as the original code did",
    "optimizer": "adam (betas 0.9, 0.999) or sgd_nesterov (momentum 0.9)",
    "lr": "base learning rate, before the decays at --lr-milestones",
    "steps": "training steps, one mini-batch each",
    "batch_size": "training examples per mini-batch",
    "lr_milestones": "fractions of --steps at which the learning rate is multiplied by --lr-gamma (space-separated)",
    "lr_gamma": "factor the learning rate is multiplied by at each milestone",
    "weight_decay": "L2 coefficient wd of the loss term wd * 1/2 * sum ||w||^2 over conv and dense weights "
    "(biases and BatchNorm excluded)",
    "loss": "data loss: cross_entropy (mean over the batch) or half_sse (1/2 sum of squared errors over the batch)",
    "augment": "random translation by up to 4 pixels and horizontal flip of each training batch (CIFAR-10)",
    "per_set_standardization": "standardize dev and test with their own pixel mean and std instead of the "
    "training subset's, as the original code did (a bug, kept for reproduction)",
    "dev_is_test": "CIFAR-10: use the test set as the dev set, as the original code did (leaks test data into tuning)",
    "device": "cpu, cuda or cuda:N",
    "eval_every": "evaluate dev and test every this many steps, for the learning curve (0: only at the end)",
    "eval_batch_size": "examples per forward pass when evaluating (memory only: results do not change)",
    "eval_limit": "evaluate on the first N dev and test examples only; 'none': all of them",
    "penalty_window": "the reported training loss and penalties are means over the last this many steps",
    "checkpoint_every": "write a checkpoint every this many steps (0: never); see --checkpoint and --resume",
    "wrt": "differentiate the penalties by this submodule's output instead of the input, e.g. pool1 (LeNet's first "
    "conv block); none: the input",
}


def _optional(parse):
    """`parse`, except that `none` (any case) is None."""

    def conv(text: str):
        return None if text.lower() == "none" else parse(text)

    conv.__name__ = parse.__name__
    return conv


def _show(value) -> str:
    """A default as the help text shows it: `none`, `on`/`off`, `0.5 0.75`, `0.001`."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return " ".join(_show(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _paper_default(name: str) -> str:
    """`default: X`, or `default: X (mnist), Y (cifar10, sin, sin2)` where the presets differ."""
    base = next(f for f in dataclasses.fields(TrainConfig) if f.name == name).default
    values: dict[str, list[str]] = {}
    for dataset in DATASETS:
        values.setdefault(_show(PAPER[dataset].get(name, base)), []).append(dataset)
    if len(values) == 1:
        return f"default: {next(iter(values))}"
    return "default: " + ", ".join(f"{v} ({', '.join(ds)})" for v, ds in values.items())


def add_config_options(p: argparse.ArgumentParser) -> None:
    """Add one `--option` per TrainConfig field (but `SPECIAL`) to `p`.

    Options not given are absent from the namespace (`SUPPRESS`), so the preset's value
    applies and `none` can mean None.

    Args:
        p: The parser of `gradreg train`.
    """
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in SPECIAL:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint)
        help_ = f"{HELP[f.name]}; {_paper_default(f.name)}".replace("%", "%%")
        if hint is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        elif typing.get_origin(hint) is tuple:
            metavar = METAVAR.get(f.name, "FRACTION")
            p.add_argument(flag, type=float, nargs="+", default=argparse.SUPPRESS, metavar=metavar, help=help_)
        else:
            parse = _optional(base) if type(None) in args else base
            metavar = METAVAR.get(f.name, base.__name__.upper())
            p.add_argument(flag, type=parse, default=argparse.SUPPRESS, metavar=metavar, help=help_)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The paper's preset for `args.dataset` with every option given applied.

    Args:
        args: The parsed options of `gradreg train`.

    Returns:
        The config of the run.

    Raises:
        UsageError: A model option (`--dropout`, ...) given with an import-path `--model`,
            whose factory builds the model.
        ValueError: The config's own checks, as `gradreg.config.paper_config` raises them
            (also a `--reg` spec that does not parse).
        TypeError: The config's own checks, as `gradreg.config.paper_config` raises them.
    """
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name not in SPECIAL and hasattr(args, f.name)
    }
    overrides["regularizers"] = tuple(parse_regularizer(s) for s in args.reg)
    model = overrides.get("model", PAPER[args.dataset]["model"])
    given = [name for name in MODEL_OPTIONS if name in overrides]
    if is_import_path(model) and given:
        flag = "--" + given[0].replace("_", "-")
        raise UsageError(f"{flag} does nothing for an import-path model: its factory ({model}) builds the model")
    for name in ("lr_milestones", "robust_linf", "robust_l2"):
        if name in overrides:
            overrides[name] = tuple(overrides[name])
    return paper_config(args.dataset, **overrides)


def name_the_option(message: str) -> str:
    """TrainConfig's `steps must be >= 1` as `--steps must be >= 1`: the user typed the option.

    Args:
        message: An error message of the config's checks.

    Returns:
        `message` with a leading field name (`steps`, `lr_gamma=`) as its option.
    """
    for f in sorted(dataclasses.fields(TrainConfig), key=lambda f: -len(f.name)):
        for sep in (" ", "="):
            if message.startswith(f.name + sep):
                return f"--{f.name.replace('_', '-')} {message[len(f.name) + len(sep) :]}"
    return message
