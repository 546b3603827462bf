"""The index of the committed evidence: ``results/README.md``, rebuilt from the store alone.

One line per experiment of the paper (and beyond it): how many of its planned runs are stored,
the CPU cost they took, and the verdict -- *reproduced* (every cell consistent with the paper),
*differs* (with the cells, and the report that explains them), for a figure, which prints no
numbers, how many of the paper's sentences about it hold, *running* (some runs missing),
or *needs a GPU* with the projected cost on this CPU. Experiments not run here get their
projection from the measured per-step costs below.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import write_text_atomic
from ..paper.claims import VERDICTS, checks, has_claims, tally
from ..paper.numbers import TABLES
from .report import build_report, paper_agreement, report_stem
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


def experiment_line(store_path: Path, name: str, profile: str) -> dict:
    rep = build_report(store_path, name, profile)
    plan, summaries = rep["plan"], rep["summaries"]
    with Store(store_path) as store:
        keys = {k for cell in plan["cells"] for c in cell["candidates"] for k in c["runs"]}
        rows = [r for r in store.rows(name) if r["run_key"] in keys]
    planned, stored = len(keys), len(rows)  # every candidate's runs: a tuned cell trains them all
    cpu = sum(r["wall_time_s"] or 0.0 for r in rows)
    table = TABLES.get(plan.get("paper_table") or "")
    scale, _ = metric_scale(plan)
    agreement = paper_agreement(summaries, table, scale) if table is not None else []
    differs = [f"{r['row']} / {r['col']}" for r in agreement if r["verdict"] == "differs"]
    claims = checks(name, summaries, scale) if table is None and has_claims(name) else []
    if stored < planned:
        status = f"running: {stored} of {planned} runs stored"
    elif claims:
        status = "done; " + tally(claims)
    elif table is None:
        status = "done (no table in the paper to compare with)"
    elif differs:
        status = f"differs in {len(differs)} of {len(agreement)} cells: {', '.join(differs)}"
    else:
        status = f"reproduced: all {len(agreement)} cells consistent with the paper"
    return {
        "name": name,
        "agreement": agreement,
        "commits": sorted({str(r.get("code_version") or "?") for r in rows}),
        "title": plan["title"],
        "stored": stored,
        "planned": planned,
        "cpu_s": cpu,
        "status": status,
        "report": f"{report_stem(name, profile)}.md",
        "hardware": rows[0]["device"] if rows else "",
        "torch": sorted({str(r.get("torch_version") or "?") for r in rows}),
        "claims": claims,
        "seeds": sorted({s.n for s in summaries if s.n}),  # runs per cell
    }


HEADLINE_BEGIN = "<!-- headline: gradreg index --out results --readme README.md -->"
HEADLINE_END = "<!-- /headline -->"


def _commit(version: str) -> str:
    """``0.2.0+g1d9a424`` -> ``1d9a424`` (the commit a run's code came from)."""
    return version.rsplit("+g", 1)[-1] if "+g" in version else version


def cell_table(lines_: list[dict], hardware: str) -> list[str]:
    """Every cell of the paper's tables that has runs here: ours against the paper's number,
    n, the verdict (Welch from the paper's summary, Bonferroni over the table), and per
    experiment the CPU time and the commits its runs came from."""
    out = [
        "| experiment | cell | ours | paper | n | verdict |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for e in lines_:
        if not e["agreement"]:
            continue
        for r in e["agreement"]:
            paper = f"{r['paper']:.2f}" + ("" if r["paper_std"] is None else f" ({r['paper_std']:.2f})")
            out.append(
                f"| {e['name']} | {r['row']} / {r['col']} | {r['ours']:.2f} ({r['ours_std']:.2f}) | {paper} "
                f"| {r['n']} | {r['verdict']} |"
            )
        commits = ", ".join(dict.fromkeys(_commit(c) for c in e["commits"]))
        notes.append(
            f"{e['name']}: {e['stored']} of {e['planned']} runs, {_hours(e['cpu_s'])} of training, commits {commits}"
        )
    if len(out) == 2:
        return []
    unit = "test accuracy (%) for the MNIST tables, test MSE (×1e-5) for SIN"
    return out + ["", f"Metric: {unit}. Hardware: {hardware}. " + "; ".join(notes) + "."]


def verdict(e: dict) -> str:
    """One experiment's verdict in a few words: its cells against the paper's numbers, or the
    paper's sentences about a figure, or that the paper has nothing to compare with."""
    if e["stored"] < e["planned"]:
        return f"running: {e['stored']} of {e['planned']} runs"
    if e["agreement"]:
        n = len(e["agreement"])
        differ = sum(1 for r in e["agreement"] if r["verdict"] == "differs")
        if not differ:
            return f"all {n} cells consistent with the paper"
        if differ == n:
            return f"all {n} cells differ from the paper"
        return f"{n - differ} of {n} cells consistent, {differ} differ" + ("s" if differ == 1 else "")
    if e["claims"]:
        counts = [(v, sum(1 for c in e["claims"] if c.verdict == v)) for v in VERDICTS]
        plural = {"holds": "hold", "does not hold": "do not hold"}
        said = [f"{k} {v if k == 1 else plural.get(v, v)}" for v, k in counts if k]
        return f"the paper's {len(e['claims'])} claims: " + ", ".join(said)
    return "no numbers in the paper to compare with"


def headline(lines_: list[dict], hardware: str, reports: str = "results", profile: str = "published") -> list[str]:
    """The README's headline: one row per experiment with runs here -- what it checks, its
    verdict (:func:`verdict`), the runs per cell and its report under ``reports`` (the results
    directory as seen from the README) -- then the command, hardware and torch that made them."""
    entries = [e for e in lines_ if e["stored"]]
    if not entries:
        return []
    out = [
        "| experiment | what it checks | verdict | n | report |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        seeds = e["seeds"]
        n = "–" if not seeds else str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
        link = f"{reports}/{e['report']}" if reports else e["report"]
        out.append(f"| {e['name']} | {e['title']} | {verdict(e)} | {n} | [{e['report']}]({link}) |")
    torch_versions = ", ".join(sorted({t for e in entries for t in e["torch"]}))
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
    """``OUT/README.md``: every experiment with a ``profile`` plan in the store, and the ones left for a GPU."""
    from .runner import STORE_NAME

    out_dir = Path(out_dir)
    store_path = out_dir / STORE_NAME
    with Store(store_path) as store:
        names = [e for e in store.experiments() if profile in store.profiles(e)]
    order = [
        "table1",
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
        total += e["cpu_s"]
        hardware = hardware or e["hardware"]
        lines.append(
            f"| {name}: {e['title']} | {e['stored']}/{e['planned']} | {_hours(e['cpu_s'])} | {e['status']} "
            f"| [{e['report']}]({e['report']}) |"
        )
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
