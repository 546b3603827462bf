"""The ``gradreg`` command line. Options of ``gradreg train`` are derived from the fields of
:class:`gradreg.config.TrainConfig`; any option left out takes the paper's value for the
chosen dataset."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import typing
from pathlib import Path
from typing import Optional

from .config import DATASETS, MODELS_FOR, TrainConfig, paper_config, parse_regularizer

# Fields the CLI sets through dedicated options (or not at all).
_SPECIAL = {"dataset", "regularizers"}
_HELP = {
    "model": "model (default: the dataset's paper model)",
    "train_size": "training-set size; 'none' for the whole pool",
    "seed": "seed of the data subset, init, batch order and random draws",
    "dropout": "LeNet dropout rate; 'none' removes it",
    "steps": "training steps",
    "lr_milestones": "lr decay points as fractions of the steps",
    "weight_decay": "wd in wd * 1/2 ||w||^2 (conv/dense weights)",
    "loss": "data loss: cross_entropy or half_sse",
    "device": "cpu or cuda",
    "eval_every": "learning-curve sampling period in steps (0: final only)",
    "checkpoint_every": "checkpoint period in steps (0: never)",
}


def _optional(parse):
    def conv(text: str):
        return None if text.lower() == "none" else parse(text)

    conv.__name__ = parse.__name__
    return conv


def add_config_options(p: argparse.ArgumentParser) -> None:
    """One ``--option`` per TrainConfig field. Options not given are absent from the
    namespace (``SUPPRESS``), so the preset's value applies and ``none`` can mean None."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SPECIAL:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint)
        help_ = _HELP.get(f.name, f.name.replace("_", " "))
        if hint is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        elif typing.get_origin(hint) is tuple:
            p.add_argument(flag, type=float, nargs="+", default=argparse.SUPPRESS, help=help_)
        elif type(None) in args:
            p.add_argument(flag, type=_optional(base), default=argparse.SUPPRESS, metavar=base.__name__.upper(), help=help_)
        else:
            p.add_argument(flag, type=base, default=argparse.SUPPRESS, help=help_)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The paper's preset for ``args.dataset`` with every given option applied."""
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in _SPECIAL and hasattr(args, f.name)
    }
    overrides["regularizers"] = tuple(parse_regularizer(s) for s in args.reg)
    if "lr_milestones" in overrides:
        overrides["lr_milestones"] = tuple(overrides["lr_milestones"])
    return paper_config(args.dataset, **overrides)


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg = config_from_args(args)
    if args.dry_run:
        small = None if cfg.dataset in ("sin", "sin2") else min(cfg.train_size or 100, 100)
        cfg = cfg.replace(train_size=small, steps=min(cfg.steps, 5), eval_every=0, eval_batch_size=100, eval_limit=200)
    out = args.out
    if out is None:
        tag = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
        out = Path("runs") / f"{cfg.dataset}-{cfg.model}-seed{cfg.seed}-{tag}.json"
    checkpoint = args.checkpoint
    if checkpoint is None and (cfg.checkpoint_every or args.resume):
        checkpoint = Path(out).with_suffix(".ckpt")
    result = train(
        cfg,
        data_dir=args.data_dir,
        checkpoint=checkpoint,
        resume=args.resume,
        progress=False if args.quiet else None,
    )
    write_json_atomic(Path(out), result.to_dict())
    print(result.summary() + f"  -> {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    command = "gradreg " + " ".join(args.argv)
    result = run_bench(args.device, args.quick, command)
    if args.json is not None:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _executor(args: argparse.Namespace):
    if args.executor == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(address=args.ray_address, data_dir=args.data_dir, max_members=args.max_members)
    from .sweep import InProcessExecutor

    return InProcessExecutor(data_dir=args.data_dir, max_members=args.max_members, progress=False if args.quiet else None)


def cmd_run(args: argparse.Namespace) -> int:
    from .experiments import build
    from .report import write_report
    from .sweep import STORE_NAME, run_experiment

    exp = build(args.name, args.profile, args.device)
    out = Path(args.out)
    command = "gradreg " + " ".join(args.argv)
    summary = run_experiment(exp, out, _executor(args), log=print, meta={"command": command, "profile": args.profile})
    paths = write_report(out / STORE_NAME, exp.name, out)
    print(f"{exp.name}: trained {summary.trained} runs in {summary.wall_time_s:.1f} s "
          f"({summary.already_stored} were stored already); report: {', '.join(str(p) for p in paths)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report
    from .sweep import STORE_NAME

    store = Path(args.out) / STORE_NAME
    if not store.exists():
        raise FileNotFoundError(f"no result store at {store}; run `gradreg run {args.name} --out {args.out}` first")
    for p in write_report(store, args.name, args.out):
        print(p)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .experiments import EXPERIMENTS, PROFILES, build

    for name in EXPERIMENTS:
        counts = ", ".join(f"{p}: {len(build(name, p).runs())} runs" for p in PROFILES)
        print(f"{name:7s} {build(name, 'quick').title}  ({counts})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradreg", description="Input-gradient regularization: train, sweep, report.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train one model with the paper's settings", description=cmd_train.__doc__)
    t.add_argument("--dataset", required=True, choices=DATASETS)
    t.add_argument(
        "--reg", action="append", default=[], metavar="NAME=WEIGHT[,OPT=V...]",
        help="a regularizer, repeatable: datagrad=50, spectreg=0.03, frobreg=0.03, jacreg=1, onehot=0.3, "
        "randomonehot=0.3, cp=0.5; options after commas, e.g. spectreg=0.03,projection=example",
    )
    add_config_options(t)
    t.add_argument("--data-dir", default=None, help="dataset directory (else $GRADREG_DATA_DIR, else the user cache)")
    t.add_argument("--out", type=Path, default=None, help="result JSON (default: runs/<dataset>-<model>-seed<S>-<hash>.json)")
    t.add_argument("--checkpoint", type=Path, default=None, help="checkpoint file (default: beside --out)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint if it exists")
    t.add_argument("--dry-run", action="store_true", help="a few steps on a tiny slice, to check the set-up")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    b = sub.add_parser("bench", help="measure regularizer cost and ensemble speed, side by side")
    b.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    b.add_argument("--quick", action="store_true", help="fewer repetitions (under two minutes on 2 CPU cores)")
    b.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    b.set_defaults(func=cmd_bench)

    from .experiments import EXPERIMENTS, PROFILES

    r = sub.add_parser("run", help="run one of the paper's experiments: sweep, store, report")
    r.add_argument("name", choices=list(EXPERIMENTS))
    r.add_argument("--profile", default="quick", choices=list(PROFILES), help="paper: 10 seeds, full steps and grids; quick: minutes on a CPU")
    r.add_argument("--out", default="results", help="directory of the result store and the reports")
    r.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    r.add_argument("--data-dir", default=None)
    r.add_argument("--executor", default="inprocess", choices=("inprocess", "ray"))
    r.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: a local one)")
    r.add_argument("--max-members", type=int, default=None, help="cap on the runs trained together in one ensemble")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser("report", help="rebuild an experiment's report from the store")
    rp.add_argument("name", choices=list(EXPERIMENTS))
    rp.add_argument("--out", default="results")
    rp.set_defaults(func=cmd_report)

    ls = sub.add_parser("list", help="the experiments and their sizes")
    ls.set_defaults(func=cmd_list)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command == "train":
        if getattr(args, "model", None) is not None and args.model not in MODELS_FOR[args.dataset]:
            parser.error(f"--model {args.model!r} does not fit --dataset {args.dataset}; valid: {', '.join(MODELS_FOR[args.dataset])}")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        parser.exit(2, f"gradreg {args.command}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
