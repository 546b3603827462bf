"""The ``gradreg`` command line. Options of ``gradreg train`` are derived from the fields of
:class:`gradreg.config.TrainConfig`; any option left out takes the paper's value for the
chosen dataset.

Every command checks what it will write (``--out``, ``--json``, the checkpoint, the result
store, the report files) and the data it will read before any work starts, so a bad path
never costs a finished run. An expected failure prints one line on stderr, ``gradreg
COMMAND: error: ...``, and exits with 2 (bad arguments) or 1 (anything else); ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import linecache
import os
import sys
import tempfile
import typing
from pathlib import Path

from .atomic import write_json_atomic
from .config import DATASETS, MODELS_FOR, PAPER, TrainConfig, paper_config, parse_regularizer
from .models import MODEL_OPTIONS, is_import_path

# Fields the CLI sets through dedicated options (or not at all).
_SPECIAL = {"dataset", "regularizers"}

_METAVAR = {
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
_HELP = {
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


class CLIError(Exception):
    """An expected failure of a command: ``str(e)`` is the one line shown. ``code``: the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- options


def _optional(parse):
    def conv(text: str):
        return None if text.lower() == "none" else parse(text)

    conv.__name__ = parse.__name__
    return conv


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return " ".join(_show(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _paper_default(name: str) -> str:
    """``default: X``, or ``default: X (mnist), Y (cifar10, sin, sin2)`` where the presets differ."""
    base = next(f for f in dataclasses.fields(TrainConfig) if f.name == name).default
    values: dict[str, list[str]] = {}
    for dataset in DATASETS:
        values.setdefault(_show(PAPER[dataset].get(name, base)), []).append(dataset)
    if len(values) == 1:
        return f"default: {next(iter(values))}"
    return "default: " + ", ".join(f"{v} ({', '.join(ds)})" for v, ds in values.items())


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
        help_ = f"{_HELP[f.name]}; {_paper_default(f.name)}".replace("%", "%%")
        if hint is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        elif typing.get_origin(hint) is tuple:
            metavar = _METAVAR.get(f.name, "FRACTION")
            p.add_argument(flag, type=float, nargs="+", default=argparse.SUPPRESS, metavar=metavar, help=help_)
        elif type(None) in args:
            p.add_argument(
                flag,
                type=_optional(base),
                default=argparse.SUPPRESS,
                metavar=_METAVAR.get(f.name, base.__name__.upper()),
                help=help_,
            )
        else:
            metavar = _METAVAR.get(f.name, base.__name__.upper())
            p.add_argument(flag, type=base, default=argparse.SUPPRESS, metavar=metavar, help=help_)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The paper's preset for ``args.dataset`` with every given option applied."""
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name not in _SPECIAL and hasattr(args, f.name)
    }
    overrides["regularizers"] = tuple(parse_regularizer(s) for s in args.reg)
    model = overrides.get("model", PAPER[args.dataset]["model"])
    given = [name for name in MODEL_OPTIONS if name in overrides]
    if is_import_path(model) and given:
        flag = "--" + given[0].replace("_", "-")
        raise ValueError(f"{flag} does nothing for an import-path model: its factory ({model}) builds the model")
    for name in ("lr_milestones", "robust_linf", "robust_l2"):
        if name in overrides:
            overrides[name] = tuple(overrides[name])
    return paper_config(args.dataset, **overrides)


def _name_the_option(message: str) -> str:
    """TrainConfig's ``steps must be >= 1`` as ``--steps must be >= 1``: the user typed the option."""
    for f in sorted(dataclasses.fields(TrainConfig), key=lambda f: -len(f.name)):
        for sep in (" ", "="):
            if message.startswith(f.name + sep):
                return f"--{f.name.replace('_', '-')} {message[len(f.name) + len(sep) :]}"
    return message


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


# --------------------------------------------------------------------------- checks before any work


def check_writable_output(path, *, directory: bool = False, label: str = "output", if_dir: str | None = None) -> Path:
    """Make sure ``path`` can be written, before any work: a real probe, not a permission guess.

    ``directory=False``: ``path`` is a file to be (re)placed; ``directory=True``: a directory
    to write into. Missing directories are created, a temporary file is created next to the
    target and removed, and the directories made for the probe are removed again (the write
    itself makes them). Returns ``path``; raises :class:`CLIError` with one line naming
    ``label``, the path and the reason. ``if_dir``: the advice when a file's path is a
    directory (default: give a file name).
    """
    path = Path(path)
    where = f"{label} {path}"
    if directory:
        if path.exists() and not path.is_dir():
            raise CLIError(f"{where}: is a file, not a directory")
        target = path
    else:
        if path.is_dir():
            raise CLIError(f"{where}: is a directory; " + (if_dir or f"give a file name, e.g. {path / 'result.json'}"))
        target = path.parent
    # The nearest existing ancestor must be a directory (a path under a file cannot be made).
    ancestor = target
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CLIError(f"{where}: {ancestor} is a file, not a directory")
    created = [d for d in [target, *target.parents] if not d.exists()]
    try:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CLIError(f"{where}: cannot create the directory {target} ({e.strerror or e})") from e
        try:
            fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=target)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise CLIError(f"{where}: cannot write into {target} ({e.strerror or e})") from e
    finally:
        # Leave no trace: the directories are made again when the output is written.
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
    return path


def _check_data_dir(data_dir: str | None, download: bool) -> None:
    if data_dir is None:
        return
    d = Path(data_dir).expanduser()
    if d.is_dir():
        return
    if d.exists():
        raise CLIError(f"--data-dir {data_dir}: is a file, not a directory")
    if not download:
        raise CLIError(
            f"--data-dir {data_dir}: no such directory; give the directory that holds mnist/ and cifar10/, "
            "or add --download to fetch the data into it"
        )


def _data_not_found(e, data_dir: str | None, download: bool) -> str:
    """A :class:`gradreg.data.DataNotFoundError` as one line, worded for the command line."""
    from .data.paths import data_dir_candidates

    roots = data_dir_candidates(data_dir)
    line = f"data file {e.name!r} not found in any of {', '.join(str(r) for r in roots)}"
    failures = [r for r in e.reasons if r.startswith("download into")]
    if failures:
        return line + f"; {'; '.join(failures)}"
    if download:
        return line
    return (
        line + f"; pass --download to fetch it into {roots[0]}, or --data-dir (or GRADREG_DATA_DIR) naming "
        "a directory that holds mnist/ and cifar10/"
    )


def _prepare_data(datasets, data_dir: str | None, download: bool) -> None:
    """Find every file of ``datasets`` (downloading with ``download``) before training starts,
    where the library's loaders will look for them (``gradreg.data.paths``)."""
    from .data.cifar import CIFAR10_BATCHES, cifar10_file
    from .data.download import MNIST_FILES
    from .data.errors import DataNotFoundError
    from .data.mnist import mnist_file

    flag = True if download else None  # None: the library's default (only into the user cache)
    try:
        for dataset in sorted(set(datasets)):
            if dataset == "mnist":
                for name in MNIST_FILES:
                    mnist_file(name, data_dir, download=flag)
            elif dataset == "cifar10":
                for batch in CIFAR10_BATCHES["train"] + CIFAR10_BATCHES["test"]:
                    cifar10_file(batch, data_dir, download=flag)
    except DataNotFoundError as e:
        raise CLIError(_data_not_found(e, data_dir, download)) from e


def _check_fixed_train_size(cfg: TrainConfig) -> None:
    if cfg.dataset not in ("sin", "sin2") or cfg.train_size is None:
        return
    from .data import make_sin, make_sin2

    n = len((make_sin if cfg.dataset == "sin" else make_sin2)().x_train)
    if cfg.train_size != n:
        raise CLIError(
            f"--train-size {cfg.train_size}: {cfg.dataset} has a fixed training set of {n} points; "
            "leave --train-size out (or pass --train-size none)",
            code=2,
        )


def _open_store_checked(path: Path) -> None:
    """An existing result store must be readable whole before a sweep adds to it."""
    from .sweep.store import Store

    if path.is_dir():
        raise CLIError(f"result store {path}: is a directory; move it away")
    if path.exists():
        with Store(path) as store:
            store.verify()


# --------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    """Train one model with the paper's settings for --dataset and write its result as JSON."""
    from .train import TrainingDiverged, train

    try:
        cfg = config_from_args(args)
    except ValueError as e:
        if not raised_on_purpose(e):
            raise
        raise CLIError(_name_the_option(str(e)), code=2) from e
    if args.dry_run:
        small = None if cfg.dataset in ("sin", "sin2") else min(cfg.train_size or 100, 100)
        cfg = cfg.replace(train_size=small, steps=min(cfg.steps, 5), eval_every=0, eval_batch_size=100, eval_limit=200)
    _check_fixed_train_size(cfg)
    out = args.out
    if out is None:
        tag = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
        out = Path("runs") / f"{cfg.dataset}-{cfg.model}-seed{cfg.seed}-{tag}.json"
    checkpoint = args.checkpoint
    if checkpoint is not None and not cfg.checkpoint_every and not args.resume:
        raise CLIError("--checkpoint needs --checkpoint-every N (the steps between checkpoints)", code=2)
    if checkpoint is None and (cfg.checkpoint_every or args.resume):
        checkpoint = Path(out).with_suffix(".ckpt")
    if checkpoint is not None and Path(checkpoint).resolve() == Path(out).resolve():
        raise CLIError(f"--checkpoint and --out are the same file ({out}); the result would overwrite it", code=2)
    check_writable_output(out, label="--out")
    if checkpoint is not None:
        check_writable_output(checkpoint, label="--checkpoint")
    _check_data_dir(args.data_dir, args.download)
    _prepare_data([cfg.dataset], args.data_dir, args.download)
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
    except KeyboardInterrupt:
        kept = (
            f"the last checkpoint, {checkpoint}, is kept: add --resume to the same command to continue"
            if checkpoint is not None and Path(checkpoint).exists()
            else "no checkpoint was written (--checkpoint-every N keeps one)"
        )
        sys.stderr.write(f"gradreg train: interrupted; nothing was written to {out}; {kept}\n")
        return 130
    except ValueError as e:  # a checkpoint that is not one, or of another config
        if not raised_on_purpose(e):
            raise
        raise CLIError(str(e)) from None
    write_json_atomic(Path(out), result.to_dict())
    print(result.summary() + f"  -> {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure what each regularizer costs and what the ensemble engine buys."""
    from .bench import run_bench

    if args.json is not None:
        check_writable_output(args.json, label="--json")
    command = "gradreg " + " ".join(args.argv)
    result = run_bench(args.device, args.quick, command)
    if args.json is not None:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0


def torch_device_type(device: str) -> str:
    return str(device).split(":", 1)[0]


def _executor(args: argparse.Namespace):
    if args.executor == "ray":
        from .sweep.ray import RayExecutor

        return RayExecutor(address=args.ray_address, data_dir=args.data_dir, max_members=args.max_members)
    from .sweep.runner import InProcessExecutor

    return InProcessExecutor(
        data_dir=args.data_dir,
        max_members=args.max_members,
        progress=False if args.quiet else None,
        checkpoint_dir=Path(args.out) / CHECKPOINT_DIR,
        checkpoint_seconds=60.0 * args.checkpoint_minutes,
        stop=args.stop,
        download=args.download or None,
    )


CHECKPOINT_DIR = "checkpoints"
RECORDS_DIR = "records"


class graceful_interrupt:
    """Ctrl-C (SIGINT) once: set ``stop`` -- every running part checkpoints and stops within
    one training step, finished runs are stored, the command exits with status 130. Twice:
    exit at once (status 130); every file is written atomically, so nothing is corrupted."""

    def __init__(self, stop):
        self.stop = stop

    def __enter__(self):
        import signal
        import threading

        self.old = None
        if threading.current_thread() is not threading.main_thread():
            return self

        def handler(signum, frame):
            if self.stop.is_set():
                sys.stderr.write("\ngradreg: second Ctrl-C, stopping now\n")
                sys.stderr.flush()
                os._exit(130)
            self.stop.set()
            sys.stderr.write(
                "\ngradreg: Ctrl-C: saving checkpoints and stopping after this step (Ctrl-C again to stop at once)\n"
            )
            sys.stderr.flush()

        self.old = signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def _check_report_outputs(name: str, profile: str | None, out: Path) -> None:
    from .sweep.report import report_paths

    for p in report_paths(name, profile, out):
        check_writable_output(p, label="report file", if_dir="move it away")


def cmd_run(args: argparse.Namespace) -> int:
    """Run one of the paper's experiments: sweep, store, report."""
    from .paper.experiments import build
    from .sweep.report import write_report
    from .sweep.runner import STORE_NAME, run_experiment

    exp = build(args.name, args.profile, args.device)
    if args.executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise CLIError("--executor ray needs Ray, which is not installed: pip install 'gradreg[ray]'", code=2)
    elif torch_device_type(args.device) == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CLIError("--device cuda was requested, but CUDA is not available here; use --device cpu", code=2)
    out = check_writable_output(args.out, directory=True, label="--out")
    _check_report_outputs(exp.name, args.profile, out)
    _open_store_checked(out / STORE_NAME)
    if args.executor == "inprocess":  # on Ray the workers read the data, wherever they run
        _check_data_dir(args.data_dir, args.download)
        _prepare_data({c.dataset for c in exp.runs()}, args.data_dir, args.download)
    command = "gradreg " + " ".join(args.argv)
    import threading

    args.stop = threading.Event()
    records = None if args.no_records else out / RECORDS_DIR
    with graceful_interrupt(args.stop):
        summary = run_experiment(
            exp,
            out,
            _executor(args),
            log=print,
            meta={"command": command, "profile": args.profile},
            records_dir=records,
        )
    if summary.interrupted:
        sys.stderr.write(
            f"gradreg run: interrupted; {summary.trained} finished runs were stored and running chunks were "
            f"checkpointed in {out / CHECKPOINT_DIR}. Resume with: {command}\n"
        )
        return 130
    paths = write_report(out / STORE_NAME, exp.name, out, profile=args.profile)
    print(
        f"{exp.name} ({args.profile} profile): trained {summary.trained} runs in {summary.wall_time_s:.1f} s of wall "
        f"time (this command: data loading, training and evaluation; {summary.already_stored} runs were stored "
        f"already); report: {', '.join(str(p) for p in paths)}"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild an experiment's report from the text run records in DIR/records and the result
    store: the records are imported first (into a new store where DIR has none, built aside
    and moved into place whole), so a store never hides runs that the records hold."""
    from .sweep.records import RUNS_FILE, RecordsError, import_records
    from .sweep.report import write_report
    from .sweep.runner import STORE_NAME
    from .sweep.store import Store

    out = Path(args.out)
    store_path = out / STORE_NAME
    records = out / RECORDS_DIR
    if not store_path.exists() and not (records / RUNS_FILE).is_file():
        raise CLIError(f"no result store at {store_path}; run `gradreg run {args.name} --out {args.out}` first")
    check_writable_output(out, directory=True, label="--out")
    if (records / RUNS_FILE).is_file():
        try:
            if not store_path.exists():
                fd, tmp = tempfile.mkstemp(prefix=f".{STORE_NAME}.", suffix=".tmp", dir=out)
                os.close(fd)
                os.unlink(tmp)  # Store creates the file
                try:
                    with Store(tmp) as store:
                        n = import_records(store, records)
                    os.replace(tmp, store_path)
                finally:
                    for leftover in (tmp, f"{tmp}-wal", f"{tmp}-shm"):
                        if os.path.exists(leftover):
                            os.unlink(leftover)
                print(f"built {store_path} from {n} run records in {records / RUNS_FILE}")
            else:
                _open_store_checked(store_path)
                with Store(store_path) as store:
                    n = import_records(store, records)
                if n:
                    print(f"imported {n} run records from {records / RUNS_FILE} that {store_path} lacked")
        except RecordsError as e:
            raise CLIError(str(e)) from None
    _open_store_checked(store_path)
    with Store(store_path) as store:
        stored = store.profiles(args.name)
        has_plan = store.plan(args.name) is not None
    if args.profile is not None:
        if args.profile not in stored:
            have = f"it has: {', '.join(stored)}" if stored else "it has none"
            raise CLIError(
                f"the store {store_path} has no plan for {args.name!r} with profile {args.profile!r} "
                f"({have}); run `gradreg run {args.name} --profile {args.profile} --out {args.out}` first"
            )
        profiles = [args.profile]
    elif stored:
        profiles = stored
    elif has_plan:
        profiles = [None]  # a plan stored without a profile
    else:
        raise CLIError(
            f"the store {store_path} has no plan for {args.name!r}; run `gradreg run {args.name} "
            f"--out {args.out}` first"
        )
    for profile in profiles:
        _check_report_outputs(args.name, profile, out)
    for profile in profiles:
        for p in write_report(store_path, args.name, out, profile=profile):
            print(p)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Rebuild OUT/README.md, the index of the evidence: every experiment's runs, CPU time and
    verdict against the paper, and the experiments left for a GPU with their projected cost."""
    from .sweep.index import write_index
    from .sweep.runner import STORE_NAME

    out = Path(args.out)
    if not (out / STORE_NAME).exists():
        raise CLIError(f"no result store at {out / STORE_NAME}; run `gradreg report NAME --out {args.out}` first")
    check_writable_output(out / "README.md", label="--out")
    readme = None
    if args.readme is not None:
        readme = Path(args.readme)
        if not readme.is_file():
            raise CLIError(f"--readme {args.readme}: no such file")
        text = readme.read_text()
        from .sweep.index import HEADLINE_BEGIN, HEADLINE_END

        if HEADLINE_BEGIN not in text or HEADLINE_END not in text:
            raise CLIError(f"--readme {args.readme}: it has no '{HEADLINE_BEGIN}' ... '{HEADLINE_END}' block to fill")
    print(write_index(out, args.profile, readme))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """The experiments and how many runs each profile trains."""
    from .paper.experiments import EXPERIMENTS, PROFILES, build

    for name in EXPERIMENTS:
        counts = ", ".join(f"{p}: {len(build(name, p).runs())} runs" for p in PROFILES)
        print(f"{name:7s} {build(name, 'quick').title}  ({counts})")
    return 0


# --------------------------------------------------------------------------- the parser


class _Version(argparse.Action):
    """``--version``: the package version and, in a git checkout, the commit (computed only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from .sweep.store import code_version

        print(f"gradreg {code_version()}")
        parser.exit()


_DATA_DIR_HELP = (
    "directory holding mnist/ and cifar10/, searched first; then $GRADREG_DATA_DIR and "
    "~/.cache/gradreg are searched (default: only those two)"
)
_DOWNLOAD_HELP = (
    "fetch missing MNIST / CIFAR-10 files from the official sources, verified by SHA-256, into "
    "--data-dir (else $GRADREG_DATA_DIR, else ~/.cache/gradreg); without it, files are fetched only "
    "into ~/.cache/gradreg and only when no data directory is named"
)
_DEVICE_HELP = "cpu or cuda (default: cpu)"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on an error, show the full traceback instead of one line",
    )
    parser = argparse.ArgumentParser(prog="gradreg", description="Input-gradient regularization: train, sweep, report.")
    parser.add_argument("--version", action=_Version, help="print the gradreg version (and git commit) and exit")
    parser.add_argument(
        "--debug", action="store_true", default=False, help="on an error, show the full traceback instead of one line"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train", parents=[common], help="train one model with the paper's settings", description=cmd_train.__doc__
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
    t.add_argument("--data-dir", default=None, metavar="DIR", help=_DATA_DIR_HELP)
    t.add_argument("--download", action="store_true", help=_DOWNLOAD_HELP)
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
    t.set_defaults(func=cmd_train)

    b = sub.add_parser(
        "bench",
        parents=[common],
        help="measure regularizer cost and ensemble speed, side by side",
        description=cmd_bench.__doc__,
    )
    b.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help=_DEVICE_HELP)
    b.add_argument("--quick", action="store_true", help="fewer repetitions (under two minutes on 2 CPU cores)")
    b.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the results to this JSON file (default: none)",
    )
    b.set_defaults(func=cmd_bench)

    from .paper.experiments import EXPERIMENTS, PROFILES

    r = sub.add_parser(
        "run",
        parents=[common],
        help="run one of the paper's experiments: sweep, store, report",
        description=cmd_run.__doc__,
    )
    r.add_argument("name", choices=list(EXPERIMENTS), help="the experiment (see `gradreg list`)")
    profiles = " ".join(
        f"{name}: {(getattr(p, 'note', '') or 'see gradreg.paper.experiments').rstrip('.')}."
        for name, p in PROFILES.items()
    )
    r.add_argument(
        "--profile",
        default="quick",
        choices=list(PROFILES),
        help=f"how much of the paper's protocol to run. {profiles} (default: quick)".replace("%", "%%"),
    )
    r.add_argument(
        "--out",
        default="results",
        metavar="DIR",
        help="directory of the result store (gradreg.sqlite) and the reports NAME.PROFILE.md/.csv/.png "
        "(default: results)",
    )
    r.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help=_DEVICE_HELP)
    r.add_argument("--data-dir", default=None, metavar="DIR", help=_DATA_DIR_HELP)
    r.add_argument("--download", action="store_true", help=_DOWNLOAD_HELP)
    r.add_argument(
        "--executor",
        default="inprocess",
        choices=("inprocess", "ray"),
        help="where runs train: inprocess (this process) or ray (a Ray cluster; needs the ray extra) "
        "(default: inprocess)",
    )
    r.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="address of an existing Ray cluster (default: start a local one)",
    )
    r.add_argument(
        "--max-members",
        type=positive_int,
        default=None,
        metavar="N",
        help="at most N runs trained together as one ensemble, a positive integer (default: the device's "
        "default, e.g. 16 LeNets or 128 SIN MLPs on a CPU)",
    )
    r.add_argument(
        "--checkpoint-minutes",
        type=positive_float,
        default=5.0,
        metavar="MIN",
        help="minutes of wall time between checkpoints of each running chunk, in DIR/checkpoints; a rerun "
        "resumes from them (default: 5)",
    )
    r.add_argument(
        "--no-records",
        action="store_true",
        help="do not import/export the text run records in DIR/records (runs.jsonl, plans.json); by "
        "default records found there are imported first and the store is exported there as runs finish",
    )
    r.add_argument(
        "--quiet", action="store_true", help="no progress line (default: one line when stderr is a terminal)"
    )
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser(
        "report", parents=[common], help="rebuild an experiment's report from the store", description=cmd_report.__doc__
    )
    rp.add_argument("name", choices=list(EXPERIMENTS), help="the experiment (see `gradreg list`)")
    rp.add_argument(
        "--out",
        default="results",
        metavar="DIR",
        help="directory holding gradreg.sqlite; the reports go there too (default: results)",
    )
    rp.add_argument(
        "--profile",
        default=None,
        choices=list(PROFILES),
        help="rebuild only this profile's report (default: every profile stored for the experiment)",
    )
    rp.set_defaults(func=cmd_report)

    ix = sub.add_parser(
        "index",
        parents=[common],
        help="rebuild OUT/README.md, the index of the evidence",
        description=cmd_index.__doc__,
    )
    ix.add_argument(
        "--out", default="results", metavar="DIR", help="directory holding gradreg.sqlite (default: results)"
    )
    ix.add_argument(
        "--profile",
        default="published",
        choices=list(PROFILES),
        help="the profile whose plans are indexed (default: published)",
    )
    ix.add_argument(
        "--readme",
        default=None,
        metavar="FILE",
        help="also write the cell-by-cell table (ours against the paper) into FILE, between its headline markers",
    )
    ix.set_defaults(func=cmd_index)

    ls = sub.add_parser("list", parents=[common], help="the experiments and their sizes", description=cmd_list.__doc__)
    ls.set_defaults(func=cmd_list)
    return parser


# --------------------------------------------------------------------------- errors


def _one_line(e: BaseException, args: argparse.Namespace) -> tuple[str, int] | None:
    """The message and exit status of an expected failure (see the module docstring), or None
    for anything else: a bug, whose traceback must show."""
    from .data.errors import DataError, DataNotFoundError, DownloadError
    from .sweep.store import StoreError
    from .train import TrainingDiverged

    if isinstance(e, CLIError):
        return str(e), e.code
    if isinstance(e, DataNotFoundError):
        return _data_not_found(e, getattr(args, "data_dir", None), getattr(args, "download", False)), 1
    if isinstance(e, TrainingDiverged):
        return f"training diverged at {e}", 1
    if isinstance(e, (StoreError, DataError, DownloadError)):
        return str(e), 1
    if isinstance(e, (ValueError, TypeError)) and raised_on_purpose(e):  # a value the library rejected
        return str(e), 2
    if isinstance(e, OSError):
        return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""), 1
    return None


def raised_on_purpose(e: BaseException) -> bool:
    """Did a ``raise`` statement in gradreg's own code raise ``e``? That is a value gradreg
    checked and rejected, shown as one line. A ValueError or TypeError from anywhere else (an
    unpacking that failed, a call into torch) is a bug, and its traceback must show."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    if not path.is_relative_to(Path(__file__).resolve().parent):
        return False
    return linecache.getline(str(path), tb.tb_lineno).lstrip().startswith("raise")


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if (
        args.command == "train"
        and getattr(args, "model", None) is not None
        and ":" not in args.model
        and args.model not in MODELS_FOR[args.dataset]
    ):
        parser.error(
            f"--model {args.model!r} does not fit --dataset {args.dataset}; "
            f"valid: {', '.join(MODELS_FOR[args.dataset])}"
        )
    try:
        return args.func(args)
    except Exception as e:
        known = None if args.debug else _one_line(e, args)
        if known is None:
            raise
        message, code = known
        message = " ".join(message.split())  # one line, whatever the library's message looks like
        parser.exit(code, f"gradreg {args.command}: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
