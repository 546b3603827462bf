"""`gradreg train`: one model with the paper's settings for `--dataset`, its result as JSON."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from ..atomic import write_json_atomic
from ..config import DATASETS, MODELS_FOR, TrainConfig
from ..models import is_import_path
from .checks import check_data_dir, check_device, check_writable_output, prepare_data
from .config_options import add_config_options, config_from_args, name_the_option
from .errors import CLIError, UsageError
from .options import add_command_parser, add_data_options

DESCRIPTION = "Train one model with the paper's settings for --dataset and write its result as JSON."


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `gradreg train` to `subparsers`: every TrainConfig field is an option.

    Args:
        subparsers: What `ArgumentParser.add_subparsers` returned.

    Returns:
        The command's parser.
    """
    t = add_command_parser(
        subparsers, "train", summary="train one model with the paper's settings", description=DESCRIPTION
    )
    t.add_argument(
        "--dataset",
        required=True,
        choices=DATASETS,
        help="the task; it selects the paper's preset for every option below",
    )
    t.add_argument(
        "--reg",
        action="append",
        default=[],
        metavar="NAME=WEIGHT[,OPT=V...]",
        help="a regularizer, repeatable: datagrad=50, spectreg=0.03, frobreg=0.03, jacreg=1, onehot=0.3, "
        "randomonehot=0.3, cp=0.5; options after commas, e.g. spectreg=0.03,projection=example (default: none)",
    )
    add_config_options(t)
    add_data_options(t)
    t.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="result JSON file, checked writable before training (default: runs/<dataset>-<model>-seed<S>-<hash>.json)",
    )
    t.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="FILE",
        help="checkpoint file, written every --checkpoint-every steps (default: --out with suffix .ckpt)",
    )
    t.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint if it exists (default: start anew)"
    )
    t.add_argument(
        "--dry-run",
        action="store_true",
        help="at most 5 steps on at most 100 training and 200 evaluation examples, to check the set-up",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar (default: a bar when stderr is a terminal)")
    t.set_defaults(func=run, check_args=check_args)
    return t


def check_args(args: argparse.Namespace) -> str | None:
    """What argparse cannot check: that `--model` fits `--dataset`.

    Args:
        args: The parsed options of `gradreg train`.

    Returns:
        The problem, which `gradreg` reports as a usage error, or None.
    """
    model = getattr(args, "model", None)
    if model is not None and not is_import_path(model) and model not in MODELS_FOR[args.dataset]:
        return f"--model {model!r} does not fit --dataset {args.dataset}; valid: {', '.join(MODELS_FOR[args.dataset])}"
    return None


def run(args: argparse.Namespace) -> int:
    """Train, after checking the config, the outputs, the checkpoint and the data.

    Args:
        args: The parsed options of `gradreg train`.

    Returns:
        The exit status: 0, or 130 when interrupted by Ctrl-C.
    """
    cfg = _config(args)
    out = args.out if args.out is not None else _default_out(cfg)
    checkpoint = _checkpoint_path(args, cfg, out)
    check_writable_output(out, label="--out")
    if checkpoint is not None:
        check_writable_output(checkpoint, label="--checkpoint")
        if args.resume and Path(checkpoint).exists():
            _check_resumable(Path(checkpoint), cfg)
    check_data_dir(args.data_dir, args.download)
    prepare_data([cfg.dataset], args.data_dir, args.download)
    return _train(args, cfg, out, checkpoint)


def _config(args: argparse.Namespace) -> TrainConfig:
    """The run's config from the options, checked as far as it can be without training."""
    try:
        cfg = config_from_args(args)
    except (ValueError, TypeError) as e:  # the config's own checks: a value the user gave
        raise UsageError(name_the_option(str(e))) from e
    if args.dry_run:
        small = None if cfg.dataset in ("sin", "sin2") else min(cfg.train_size or 100, 100)
        cfg = cfg.replace(train_size=small, steps=min(cfg.steps, 5), eval_every=0, eval_batch_size=100, eval_limit=200)
    _check_fixed_train_size(cfg)
    check_device(cfg.device)
    if is_import_path(cfg.model):
        from ..models import resolve_factory

        try:
            resolve_factory(cfg.model)
        except (ValueError, TypeError) as e:  # the path names no module, attribute or callable
            raise UsageError(str(e)) from e
    return cfg


def _check_fixed_train_size(cfg: TrainConfig) -> None:
    """sin and sin2 have one training set: `--train-size` can only be its size."""
    if cfg.dataset not in ("sin", "sin2") or cfg.train_size is None:
        return
    from ..data import make_sin, make_sin2

    n = len((make_sin if cfg.dataset == "sin" else make_sin2)().x_train)
    if cfg.train_size != n:
        raise UsageError(
            f"--train-size {cfg.train_size}: {cfg.dataset} has a fixed training set of {n} points; "
            "leave --train-size out (or pass --train-size none)"
        )


def _default_out(cfg: TrainConfig) -> Path:
    """`runs/<dataset>-<model>-seed<S>-<hash of the config>.json`."""
    tag = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    return Path("runs") / f"{cfg.dataset}-{cfg.model}-seed{cfg.seed}-{tag}.json"


def _checkpoint_path(args: argparse.Namespace, cfg: TrainConfig, out: Path) -> Path | None:
    """`--checkpoint`, else `out` with suffix `.ckpt` when checkpoints are written or read."""
    checkpoint = args.checkpoint
    if checkpoint is not None and not cfg.checkpoint_every and not args.resume:
        raise UsageError("--checkpoint needs --checkpoint-every N (the steps between checkpoints)")
    if checkpoint is None and (cfg.checkpoint_every or args.resume):
        checkpoint = Path(out).with_suffix(".ckpt")
    if checkpoint is not None and Path(checkpoint).resolve() == Path(out).resolve():
        raise UsageError(f"--checkpoint and --out are the same file ({out}); the result would overwrite it")
    return checkpoint


def _check_resumable(checkpoint: Path, cfg: TrainConfig) -> None:
    """The checkpoint `--resume` reads must be one, of this config: read it before training."""
    from ..train import _load_checkpoint

    try:
        state = _load_checkpoint(checkpoint)
    except ValueError as e:  # not a checkpoint: the file, not gradreg, is at fault
        raise CLIError(str(e)) from e
    if state["config"] != cfg.to_dict():
        raise CLIError(f"checkpoint {checkpoint} was written by a different config; refusing to resume from it")


def _train(args: argparse.Namespace, cfg: TrainConfig, out: Path, checkpoint: Path | None) -> int:
    """Train `cfg` and write the result to `out`; a Ctrl-C writes nothing and says what is kept."""
    from ..data.splits import TrainSizeError
    from ..hooks import UnknownSubmodule
    from ..penalties import NoInputGradient
    from ..train import TrainingDiverged, train

    try:
        result = train(
            cfg,
            data_dir=args.data_dir,
            checkpoint=checkpoint,
            resume=args.resume,
            progress=False if args.quiet else None,
        )
    except TrainingDiverged as e:
        raise CLIError(
            f"training diverged at {e}; nothing was written to {out}. A smaller --lr or regularizer weight may help"
        ) from e
    except (TrainSizeError, UnknownSubmodule, NoInputGradient) as e:  # --train-size, --wrt, --model
        raise CLIError(str(e)) from e
    except KeyboardInterrupt:
        kept = (
            f"the last checkpoint, {checkpoint}, is kept: add --resume to the same command to continue"
            if checkpoint is not None and Path(checkpoint).exists()
            else "no checkpoint was written (--checkpoint-every N keeps one)"
        )
        sys.stderr.write(f"gradreg train: interrupted; nothing was written to {out}; {kept}\n")
        return 130
    write_json_atomic(Path(out), result.to_dict())
    print(result.summary() + f"  -> {out}")
    return 0
