"""MkDocs hook: the command-line reference, written from gradreg's argparse parsers at build time.

``docs/cli.md`` holds the marker below; this hook replaces it with every command's
``--help``, found by walking the parser that ``gradreg.cli.build_parser()`` returns, so the
page lists whatever commands and options the parser has, however the CLI's modules are split.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

MARKER = "<!-- cli-reference -->"
WIDTH = "100"  # help text wraps at this many columns, whatever the terminal that builds the site


def commands(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ("gradreg",), summary: str | None = None
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """``(words, parser, one-line help)`` for ``parser`` and every subcommand below it, depth first,
    in the order they were added; a parser registered under several names (aliases) appears once."""
    yield words, parser, summary
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help for a in action._choices_actions}
        seen: set[int] = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            yield from commands(sub, (*words, name), helps.get(name))


def render() -> str:
    from gradreg.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parts = []
        for words, parser, summary in commands(build_parser()):
            level = "#" * min(len(words) + 1, 6)
            parts.append(f"{level} {' '.join(words)}\n")
            if summary:
                parts.append(f"{summary[0].upper()}{summary[1:]}.\n")
            parts.append(f"```text\n{parser.format_help().rstrip()}\n```\n")
        return "\n".join(parts)
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
