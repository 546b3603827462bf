"""The index of the committed evidence: ``results/README.md``, rebuilt from the store alone.

One line per experiment of the paper (and beyond it): how many of its planned runs are stored,
the CPU cost they took, and the verdict -- *reproduced* (every cell consistent with the paper),
*differs* (with the cells, and the report that explains them), *not judged* (cells with too few
seeds to judge, by the rule of ``gradreg.sweep.agreement``), for a figure, which prints no
numbers, how many of the paper's sentences about it hold, *running* (some runs missing),
or *needs a GPU* with the projected cost on this CPU. Experiments not run here get their
projection from the measured per-step costs below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text_atomic
from ..paper.claims import VERDICTS, checks, has_claims, tally
from ..paper.numbers import TABLES
from . import agreement as agree
from .agreement import Agreement
from .report import build_report, mean_std_text, report_stem
from .store import Store
from .units import metric_scale

# Measured on this project's 2 CPU cores (gradreg bench, hand-written plain step = 1): LeNet
# B=50 plain 14.6 ms; ResNet B=128 plain 3.28 s; exact FrobReg (class loop) 7.3x, JacReg similar;
# DataGrad 2.6x, SpectReg 2.3x on the ResNet. Used only to project experiments not run here.
CPU_STEP_S = {"lenet5": 0.0146, "resnet_cifar": 3.28}
LEFT_FOR_GPU = {
    "table3": ("CIFAR-10 ResNet, 2000 images: 4 cells x 10 seeds x 50,000 steps", 40 * 50_000 * 3.28 * 2.0),
    "table5": ("full CIFAR-10 ResNet with augmentation: 16 runs x 50,000 steps", 16 * 50_000 * 3.28 * 2.0),
    "fig3": ("full CIFAR-10 ResNet learning curves: 2 runs x 50,000 steps", 2 * 50_000 * 3.28 * 1.8),
}


def _hours(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


@dataclass(frozen=True)
class ExperimentLine:
    """One experiment in the index.

    Attributes:
        name: The experiment.
        title: Its title.
        stored: Its runs in the store.
        planned: Its planned runs (every candidate's: a tuned cell trains them all).
        cpu_s: The summed training time of the stored runs.
        status: The index's status column.
        report: The report's file name.
        hardware: The device of the first stored run ("" without runs).
        torch: The torch versions of the runs.
        commits: The gradreg versions (with commit) of the runs.
        agreement: Each cell against the paper, for a table the paper prints.
        claims: The paper's sentences about a figure, checked.
        seeds: The distinct runs per cell, over the cells with runs.
    """

    name: str
    title: str
    stored: int
    planned: int
    cpu_s: float
    status: str
    report: str
    hardware: str
    torch: tuple[str, ...]
    commits: tuple[str, ...]
    agreement: tuple[Agreement, ...]
    claims: tuple
    seeds: tuple[int, ...]


def status(stored: int, planned: int, agreement: tuple[Agreement, ...], claims: tuple, has_table: bool) -> str:
    """The index's status of one experiment.

    Args:
        stored: Its runs in the store.
        planned: Its planned runs.
        agreement: Its cells against the paper.
        claims: The paper's sentences about it, checked (a figure).
        has_table: Whether the paper prints a table for it.

    Returns:
        "running: ...", "done; ..." (claims), "done (no table ...)", "differs in k of n cells: ..."
        (cells too thin to judge are counted after), "not judged: ..." or "reproduced: ...".
    """
    if stored < planned:
        return f"running: {stored} of {planned} runs stored"
    if claims and not has_table:
        return "done; " + tally(list(claims))
    if not has_table:
        return "done (no table in the paper to compare with)"
    differs = [r.cell for r in agreement if r.verdict == agree.DIFFERS]
    unjudged = sum(1 for r in agreement if r.verdict == agree.TOO_FEW)
    thin = f"; {unjudged} with {agree.TOO_FEW}" if unjudged else ""
    if differs:
        return f"differs in {len(differs)} of {len(agreement)} cells: {', '.join(differs)}{thin}"
    if unjudged:
        return f"not judged: {unjudged} of {len(agreement)} cells have {agree.TOO_FEW}"
    return f"reproduced: all {len(agreement)} cells consistent with the paper"


def experiment_line(store_path: Path, name: str, profile: str) -> ExperimentLine:
    """One experiment's line of the index, from the store.

    Args:
        store_path: The SQLite store.
        name: The experiment.
        profile: The profile of its plan.

    Returns:
        The line.
    """
    rep = build_report(store_path, name, profile)
    plan, summaries, agreement = rep["plan"], rep["summaries"], tuple(rep["agreement"])
    with Store(store_path) as store:
        keys = set(plan.run_keys())
        rows = [r for r in store.rows(name) if r["run_key"] in keys]
    planned, stored = len(keys), len(rows)  # every candidate's runs: a tuned cell trains them all
    table = TABLES.get(plan.paper_table or "")
    scale, _ = metric_scale(plan.to_dict())
    claims = tuple(checks(name, summaries, scale)) if has_claims(name) else ()
    return ExperimentLine(
        name=name,
        title=plan.title,
        stored=stored,
        planned=planned,
        cpu_s=sum(r["wall_time_s"] or 0.0 for r in rows),
        status=status(stored, planned, agreement, claims, table is not None),
        report=f"{report_stem(name, profile)}.md",
        hardware=rows[0]["device"] if rows else "",
        torch=tuple(sorted({str(r.get("torch_version") or "?") for r in rows})),
        commits=tuple(sorted({str(r.get("code_version") or "?") for r in rows})),
        agreement=agreement,
        claims=claims,
        seeds=tuple(sorted({s.n for s in summaries if s.n})),  # runs per cell
    )


HEADLINE_BEGIN = "<!-- headline: gradreg index --out results --readme README.md -->"
HEADLINE_END = "<!-- /headline -->"


def _commit(version: str) -> str:
    """``0.2.0+g1d9a424`` -> ``1d9a424`` (the commit a run's code came from)."""
    return version.rsplit("+g", 1)[-1] if "+g" in version else version


def cell_table(lines_: list[ExperimentLine], hardware: str) -> list[str]:
    """Every cell of the paper's tables that has runs here: ours against the paper's number,
    n, the verdict (``gradreg.sweep.agreement``), and per experiment the CPU time and the
    commits its runs came from.

    Args:
        lines_: The index's experiments.
        hardware: The hardware line.

    Returns:
        The table and its note; ``[]`` where no experiment has cells against the paper.
    """
    out = [
        "| experiment | cell | ours | paper | n | verdict |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for e in lines_:
        if not e.agreement:
            continue
        for r in e.agreement:
            ours, paper = mean_std_text(r.ours, r.ours_std), mean_std_text(r.paper, r.paper_std)
            out.append(f"| {e.name} | {r.cell} | {ours} | {paper} | {r.n} | {r.verdict} |")
        commits = ", ".join(dict.fromkeys(_commit(c) for c in e.commits))
        notes.append(f"{e.name}: {e.stored} of {e.planned} runs, {_hours(e.cpu_s)} of training, commits {commits}")
    if len(out) == 2:
        return []
    unit = "test accuracy (%) for the MNIST tables, test MSE (×1e-5) for SIN"
    thin = any(r.verdict == agree.TOO_FEW for e in lines_ for r in e.agreement)
    rule = f" {agree.RULE}" if thin else ""
    return out + ["", f"Metric: {unit}. Hardware: {hardware}. " + "; ".join(notes) + "." + rule]


def verdict(e: ExperimentLine) -> str:
    """One experiment's verdict in a few words: its cells against the paper's numbers
    (``gradreg.sweep.agreement.tally``), or the paper's sentences about a figure, or that the
    paper has nothing to compare with.

    Args:
        e: The experiment's line.

    Returns:
        The words.
    """
    if e.stored < e.planned:
        return f"running: {e.stored} of {e.planned} runs"
    if e.agreement and e.claims:  # a table whose caption draws conclusions (Table 6)
        return agree.tally(e.agreement) + "; " + _claims_words(e.claims)
    if e.agreement:
        return agree.tally(e.agreement)
    if e.claims:
        return _claims_words(e.claims)
    return "no numbers in the paper to compare with"


def _claims_words(claims: tuple) -> str:
    """The checked claims counted by verdict: "the paper's 3 claims: 2 hold, 1 partly"."""
    counts = [(v, sum(1 for c in claims if c.verdict == v)) for v in VERDICTS]
    plural = {"holds": "hold", "does not hold": "do not hold"}
    said = [f"{k} {v if k == 1 else plural.get(v, v)}" for v, k in counts if k]
    return f"the paper's {len(claims)} claims: " + ", ".join(said)


def headline(
    lines_: list[ExperimentLine], hardware: str, reports: str = "results", profile: str = "published"
) -> list[str]:
    """The README's headline: one row per experiment with runs here, then the command, hardware
    and torch that made them.

    Args:
        lines_: The index's experiments.
        hardware: The hardware line.
        reports: The results directory as seen from the README ("" for the same directory).
        profile: The profile indexed.

    Returns:
        The block's lines: what each experiment checks, its verdict (``verdict``), the runs per
        cell and its report; ``[]`` where nothing has runs.
    """
    entries = [e for e in lines_ if e.stored]
    if not entries:
        return []
    out = [
        "| experiment | what it checks | verdict | n | report |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        seeds = e.seeds
        n = "–" if not seeds else str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
        link = f"{reports}/{e.report}" if reports else e.report
        out.append(f"| {e.name} | {e.title} | {verdict(e)} | {n} | [{e.report}]({link}) |")
    torch_versions = ", ".join(sorted({t for e in entries for t in e.torch}))
    index = f"{reports}/README.md" if reports else "README.md"
    return out + [
        "",
        f"n: runs (seeds) per cell, each made by `gradreg run NAME --profile {profile} --out {reports or '.'}` on "
        f"{hardware}, torch {torch_versions}. Every cell against the paper, with its training time and commits: "
        f"[{index}]({index}).",
    ]


def replace_block(text: str, begin: str, end: str, block: list[str]) -> str:
    """``text`` with the lines between the ``begin`` and ``end`` marker lines replaced by ``block``."""
    if begin not in text or end not in text:
        raise ValueError(f"the markers {begin!r} and {end!r} are not both in the file")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return head + begin + "\n" + "\n".join(block) + "\n" + end + tail


def write_index(out_dir: Path, profile: str = "published", readme: Path | None = None) -> Path:
    """Write ``OUT/README.md``: every experiment with a ``profile`` plan in the store, and the ones left for a GPU.

    Args:
        out_dir: The results directory (its store, and where the index goes).
        profile: The profile indexed.
        readme: A README whose headline block (between ``HEADLINE_BEGIN`` and ``HEADLINE_END``)
            is refilled, or None.

    Returns:
        The index's path.

    Raises:
        ValueError: ``readme`` lacks the headline markers.
    """
    from .runner import STORE_NAME

    out_dir = Path(out_dir)
    store_path = out_dir / STORE_NAME
    with Store(store_path) as store:
        names = [e for e in store.experiments() if profile in store.profiles(e)]
    order = [
        "table1",
        "table1_bn",
        "table2",
        "table4",
        "table6",
        "table7",
        "fig2",
        "fig2_lambda",
        "fig4",
        "fig5",
        "fig6",
        "sin2",
        "fastgr",
        "fastgr_sin",
        "hidden",
        "robust",
        "robust_tradeoff",
    ]
    names = sorted(names, key=lambda n: order.index(n) if n in order else len(order))
    lines = [
        f"# The evidence ({profile} profile)",
        "",
        "Each experiment's report is beside this file (Markdown, CSV, PNG); every run is a line of "
        "`records/runs.jsonl` (config, metrics, learning curve, penalties, smoothness probes, wall time, torch, "
        "hardware, gradreg version and commit). `gradreg report NAME --out results` rebuilds a report from those "
        "records alone; `scripts/evidence.sh` trains what is missing, on this machine or a fresh one.",
        "",
        "CPU time: the sum over runs of each run's share of its ensemble's training loop (2 worker threads ran "
        "side by side), so roughly the wall time of training on 2 cores.",
        "",
        "| experiment | runs | CPU time | status | report |",
        "|---|---|---|---|---|",
    ]
    total = 0.0
    hardware = ""
    entries = []
    for name in names:
        e = experiment_line(store_path, name, profile)
        entries.append(e)
        total += e.cpu_s
        hardware = hardware or e.hardware
        link = f"[{e.report}]({e.report})"
        lines.append(f"| {name}: {e.title} | {e.stored}/{e.planned} | {_hours(e.cpu_s)} | {e.status} | {link} |")
    for name, (what, seconds) in LEFT_FOR_GPU.items():
        lines.append(f"| {name} | 0 | – | needs a GPU: {what}; projected {_hours(seconds)} on these 2 CPU cores | – |")
    lines += ["", f"Hardware: {hardware or 'none yet'}. Total CPU time of the runs above: {_hours(total)}.", ""]
    cells = cell_table(entries, hardware or "none yet")
    if cells:
        lines += ["## Ours against the paper, cell by cell", "", *cells, ""]
    if readme is not None:
        readme = Path(readme)
        reports = Path(os.path.relpath(out_dir.resolve(), readme.resolve().parent)).as_posix()
        head = headline(entries, hardware or "none yet", "" if reports == "." else reports, profile)
        text = readme.read_text()
        write_text_atomic(readme, replace_block(text, HEADLINE_BEGIN, HEADLINE_END, head or ["(no runs yet)"]))
    return write_text_atomic(out_dir / "README.md", "\n".join(lines))
