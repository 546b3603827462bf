"""The documentation cannot drift from the code: README.md and docs/*.md are checked against it.

- Every fenced ```python block runs as written. The unmarked blocks of a page run in order in
  one namespace per page (a page may set up a model once and use it below); a block preceded by
  ``<!-- docs-test: needs-data -->`` or ``<!-- docs-test: needs-gpu -->`` runs alone, in a fresh
  namespace, and is skipped with that reason when ``$GRADREG_DATA_DIR`` names no directory or
  CUDA is absent. Blocks use tiny sizes: each page runs in seconds on a CPU.
- Every ``gradreg ...`` command in a ```bash/```console block parses with
  ``gradreg.cli.build_parser()``; every ``gradreg SUBCOMMAND --flag`` in inline code names a
  real subcommand and one of its flags; every ``./run X`` is a command of the ``run`` script;
  every ``python examples/X.py --flag`` is an option of that script.
- Every repository path in inline code and every relative link of the README exists; the API
  page documents every public name; the site's navigation lists every page.
- User docs speak to users: no process words (issues, reviews, sessions, ...), no test names.
- LICENSE, CHANGELOG and the version agree with pyproject.toml and ``gradreg --version``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gradreg
from gradreg import regularizers as R
from gradreg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
MARKER = re.compile(r"<!--\s*docs-test:\s*([\w-]+)\s*-->")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
SHELL = {"bash", "sh", "shell", "console"}
# generated blocks: their text is the output of a script that a test compares them with
GENERATED = [("<!-- bench: ", "<!-- /bench -->")]


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def blocks(page: Path) -> list[dict]:
    """The fenced code blocks of ``page``: language, code (dedented), first line, marker."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.fullmatch(prev)
        body, i = [], i + 1
        first = i + 1  # 1-based line number of the block's first line
        while i < len(lines) and not (lines[i].startswith(indent + fence) and not lines[i].strip()[len(fence) :]):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        code = "\n".join(body) + "\n"
        out.append({"lang": lang.lower(), "code": code, "line": first, "marker": marker.group(1) if marker else None})
        i += 1
    return out


def _written(page: Path) -> str:
    """The page without its generated blocks: the text that people wrote."""
    text = page.read_text(encoding="utf-8")
    for begin, end in GENERATED:
        while begin in text:
            head, rest = text.split(begin, 1)
            text = head + rest.split(end, 1)[1]
    return text


def _prose(page: Path) -> str:
    """The written text without its fenced blocks: what a reader reads as prose."""
    return re.sub(r"^(\s*)(```+|~~~+).*?^\1\2\s*$", "", _written(page), flags=re.M | re.S)


# --------------------------------------------------------------------------- python blocks


def _requirement(marker: str | None) -> str | None:
    """Why a marked block cannot run here, or None when it can."""
    if marker is None:
        return None
    if marker == "needs-data":
        d = os.environ.get("GRADREG_DATA_DIR")
        return None if d and Path(d).is_dir() else "needs a dataset: set GRADREG_DATA_DIR"
    if marker == "needs-gpu":
        return None if torch.cuda.is_available() else "needs a GPU (CUDA)"
    raise AssertionError(f"unknown docs-test marker {marker!r}; known: needs-data, needs-gpu")


def _run(code_blocks: list[tuple[str, int]], page: Path, tmp_path, monkeypatch) -> None:
    """Run the blocks in order in one namespace, in a scratch directory, leaving no state
    behind: registered regularizers and torch.compile caches are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    registry, aliases = dict(R.REGISTRY), dict(R.ALIASES)
    torch.manual_seed(0)
    ns: dict = {"__name__": "__docs__"}
    try:
        for code, line in code_blocks:
            try:
                exec(compile(code, f"{_name(page)}:{line}", "exec"), ns)
            except Exception as e:
                raise AssertionError(f"{_name(page)}, the python block at line {line} failed: {e!r}") from e
    finally:
        R.REGISTRY.clear()
        R.REGISTRY.update(registry)
        R.ALIASES.clear()
        R.ALIASES.update(aliases)
        if "torch._dynamo" in sys.modules:
            torch._dynamo.reset()


PYTHON_PAGES = [p for p in PAGES if any(b["lang"] == "python" and not b["marker"] for b in blocks(p))]
MARKED = [(p, b) for p in PAGES for b in blocks(p) if b["lang"] == "python" and b["marker"]]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_name)
def test_python_blocks_run_as_written(page, tmp_path, monkeypatch):
    code = [(b["code"], b["line"]) for b in blocks(page) if b["lang"] == "python" and not b["marker"]]
    _run(code, page, tmp_path, monkeypatch)


@pytest.mark.parametrize(("page", "block"), MARKED, ids=[f"{_name(p)}:{b['line']}" for p, b in MARKED])
def test_marked_python_blocks_run_where_they_can(page, block, tmp_path, monkeypatch):
    why = _requirement(block["marker"])
    if why:
        pytest.skip(f"{_name(page)}:{block['line']} {why}")
    _run([(block["code"], block["line"])], page, tmp_path, monkeypatch)


def test_every_page_with_code_has_python_that_runs():
    """The extraction itself: the pages that teach the API have runnable blocks, so a broken
    fence parser cannot make the tests above pass by finding nothing."""
    names = {_name(p) for p in PYTHON_PAGES}
    assert {"README.md", "docs/quickstart.md", "docs/dropin.md", "docs/fast.md"} <= names
    assert all(b["marker"] in ("needs-data", "needs-gpu") for _, b in MARKED)


# --------------------------------------------------------------------------- commands


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: sub for a in actions for name, sub in a.choices.items()}


def _commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: continuations joined, comments, prompts and
    environment assignments dropped, split at ``&&``, ``||``, ``;`` and ``|``."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        line = re.sub(r"^\s*\$\s+", "", line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        cmd: list[str] = []
        for tok in list(lexer) + [";"]:
            if tok in (";", "&&", "||", "|", "&"):
                if cmd:
                    out.append(cmd)
                cmd = []
            elif cmd or not re.fullmatch(r"\w+=.*", tok):
                cmd.append(tok)
    return out


def _shell_commands() -> list[tuple[str, int, list[str]]]:
    shell = [(p, b) for p in PAGES for b in blocks(p) if b["lang"] in SHELL]
    return [(_name(p), b["line"], cmd) for p, b in shell for cmd in _commands(b["code"])]


COMMANDS = _shell_commands()
GRADREG = [(page, line, cmd) for page, line, cmd in COMMANDS if Path(cmd[0]).name == "gradreg"]


@pytest.mark.parametrize(("page", "line", "cmd"), GRADREG, ids=[f"{p}:{n}:{c[1]}" for p, n, c in GRADREG])
def test_gradreg_commands_in_the_docs_parse(page, line, cmd, capsys):
    args = cmd[1:]
    if any(a in ("-h", "--help", "--version") for a in args):  # these exit before the rest is parsed
        assert args[0].startswith("-") or args[0] in subcommands(build_parser()), f"{page}:{line}: {cmd}"
        return
    try:
        build_parser().parse_args(args)
    except SystemExit as e:
        err = capsys.readouterr().err.strip().splitlines()
        pytest.fail(f"{page}:{line}: `{shlex.join(cmd)}` does not parse: {err[-1] if err else e}")
    # argparse also takes abbreviations (--ray for --ray-address): the docs spell options out
    sub = subcommands(build_parser())[args[0]]
    for flag in [a.split("=", 1)[0] for a in args if a.startswith("--")]:
        assert flag in sub._option_string_actions, f"{page}:{line}: `{shlex.join(cmd)}`: no option {flag}"


def test_the_docs_show_every_gradreg_command():
    shown = {cmd[1] for _, _, cmd in GRADREG if len(cmd) > 1}
    assert set(subcommands(build_parser())) <= shown, set(subcommands(build_parser())) - shown


def _run_commands() -> set[str]:
    text = (ROOT / "run").read_text()
    case = text.split('case "${1:-}" in', 1)[1]
    return {m for m in re.findall(r"^\s*([\w|-]+)\)\s*$", case, re.M) for m in m.split("|")}


def test_run_commands_in_the_docs_exist():
    cmds = _run_commands()
    assert {"demo", "test", "docs"} <= cmds
    used = [(p, n, c) for p, n, c in COMMANDS if c[0] == "./run"]
    assert used
    for page, line, cmd in used:
        assert len(cmd) > 1 and cmd[1] in cmds, f"{page}:{line}: `{shlex.join(cmd)}`: ./run has {sorted(cmds)}"


def test_example_scripts_in_the_docs_take_the_flags_shown():
    used = [(p, n, c) for p, n, c in COMMANDS for i, a in enumerate(c) if a.startswith("examples/")]
    assert used
    for page, line, cmd in used:
        script = next(a for a in cmd if a.startswith("examples/"))
        source = (ROOT / script).read_text()
        for flag in [a.split("=", 1)[0] for a in cmd[cmd.index(script) + 1 :] if a.startswith("--")]:
            assert f'"{flag}"' in source, f"{page}:{line}: {script} has no option {flag}"


INLINE = re.compile(r"`([^`\n]+)`")


def test_gradreg_commands_in_the_prose_name_real_subcommands_and_flags():
    """Inline code is often a fragment (``gradreg run NAME --profile ...``), so it is not
    parsed; but its subcommand and every flag must exist."""
    parser = build_parser()
    subs = subcommands(parser)
    seen = 0
    for page in PAGES:
        for span in INLINE.findall(_prose(page)):
            words = span.split()
            if not words or words[0] != "gradreg" or len(words) < 2:
                continue
            seen += 1
            name = words[1].rstrip(":")  # an error message: gradreg train: ...
            if name.isupper():  # a placeholder: gradreg COMMAND --help
                options = {o for p in (parser, *subs.values()) for o in p._option_string_actions}
            else:
                sub = parser if name.startswith("-") else subs.get(name)
                assert sub is not None, f"{_name(page)}: `{span}`: gradreg has no command {name!r}"
                options = set(sub._option_string_actions)
            for w in words[1:]:
                flag = w.split("=", 1)[0].strip("[]().,")
                if flag.startswith("--"):
                    assert flag in options, f"{_name(page)}: `{span}`: no option {flag}"
    assert seen


# --------------------------------------------------------------------------- paths, links, pages

PATH = re.compile(r"^(?:scripts|examples|results|src|docs|tests)/[\w./-]+$")


def test_repository_paths_in_inline_code_exist():
    checked = 0
    for page in PAGES:
        for span in INLINE.findall(_prose(page)):
            span = span.split("::", 1)[0].rstrip("/")
            if PATH.match(span) and not re.search(r"NAME|PROFILE|DIR|OUT", span):
                checked += 1
                assert (ROOT / span).exists(), f"{_name(page)}: `{span}` does not exist"
    assert checked


def test_readme_links_open_files_of_the_checkout():
    text = (ROOT / "README.md").read_text()
    links = [t.split("#", 1)[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    assert links
    for target in filter(None, links):
        assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


def test_the_readme_is_short_and_in_a_newcomers_order():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) <= 10_000, f"README.md is {len(text.encode())} bytes; the limit is 10 KB"
    heads = re.findall(r"^## (.+)$", text, re.M)
    order = ["Results", "Install", "Quick start", "The regularizers", "Two commands", "Documentation"]
    assert [h for h in heads if h in order] == order, heads


def test_the_api_page_documents_every_public_name():
    api = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: ([\w.]+)\s*$", api, re.M))
    missing = {f"gradreg.{n}" for n in gradreg.__all__} - documented
    assert not missing, f"docs/api.md lacks {sorted(missing)}"
    if (ROOT / "src" / "gradreg" / "attacks.py").is_file():
        assert "gradreg.attacks" in documented


def test_the_site_navigation_lists_every_page():
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r":\s*([\w./-]+\.md)\s*$", nav, re.M))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.glob("*.md")}
    assert listed == pages, f"in nav, not in docs/: {listed - pages}; in docs/, not in nav: {pages - listed}"


def _load_hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", DOCS / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_walks_every_subcommand():
    hook = _load_hook("cli_reference")
    found = [words for words, _, _ in hook.commands(build_parser())]
    assert found[0] == ("gradreg",)
    assert {w[1] for w in found[1:]} == set(subcommands(build_parser()))
    page = hook.on_page_markdown((DOCS / "cli.md").read_text(), None, None, None)
    assert hook.MARKER not in page
    for words in found:
        assert f"usage: {' '.join(words)}" in page


# --------------------------------------------------------------------------- words for users

PROCESS = re.compile(
    r"\b(issues?|sessions?|reviews?|reviewed|reviewers?|withdrawn|lab notebook)\b|\.\./shared|\bUTC\b"
    r"|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}|\btests?/test_\w+|\btest_\w+",
    re.I,
)


def test_user_docs_have_no_process_words():
    """How the project is run (its issues, reviews, sessions, a bench run's clock time, the
    tests' names) is not what a user reads the docs for. Generated blocks are skipped: their
    words come from the scripts that make them."""
    found = []
    for page in PAGES:
        for line in _written(page).splitlines():
            found += [f"{_name(page)}: {m.group(0)!r} in: {line.strip()[:100]}" for m in PROCESS.finditer(line)]
    assert not found, "\n".join(found)


def test_the_process_word_check_can_fail():
    assert PROCESS.search("as the issue asked") and PROCESS.search("see ../shared/data")
    assert PROCESS.search("tests/test_dropin.py::test_x") and not PROCESS.search("the test suite checks it")


# --------------------------------------------------------------------------- project files


def _pyproject_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def test_the_newest_changelog_release_is_the_package_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    heads = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.M)
    assert heads and heads[0] == ("Unreleased", ""), heads[:1]
    released = heads[1:]
    assert released and all(date for _, date in released), released
    versions = [tuple(int(x) for x in v.split(".")) for v, _ in released]
    assert versions == sorted(versions, reverse=True) and [d for _, d in released] == sorted(
        (d for _, d in released), reverse=True
    )
    assert released[0][0] == gradreg.__version__ == _pyproject_version()


def test_gradreg_version_prints_the_package_version():
    out = subprocess.run(
        [sys.executable, "-c", "from gradreg.cli import main; main(['--version'])"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.stdout.startswith(f"gradreg {gradreg.__version__}"), (out.stdout, out.stderr)


def test_license_is_the_mit_license_that_pyproject_names():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c)" in text and "gradreg authors" in text
    assert re.search(r'^license = "MIT"$', (ROOT / "pyproject.toml").read_text(), re.M)
