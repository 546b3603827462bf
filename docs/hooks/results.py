"""MkDocs hook: publish the committed evidence, ``results/``, with the site.

Pages in ``docs/`` link to reports as ``../results/NAME.md``, which is right when they are read
in the repository. The site is built from ``docs/`` alone, so this hook adds the files of
``results/`` to it as ``results/...`` and points those links there.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

ROOT = Path(__file__).resolve().parents[2]
KINDS = {".md", ".png", ".csv", ".json", ".jsonl", ".txt"}  # committed evidence, not stores or checkpoints


def on_files(files, config):
    for path in sorted((ROOT / "results").rglob("*")):
        rel = path.relative_to(ROOT)
        if path.is_file() and path.suffix in KINDS and "checkpoints" not in rel.parts:
            files.append(
                File(
                    rel.as_posix(),
                    str(ROOT),
                    config["site_dir"],
                    config["use_directory_urls"],
                    inclusion=InclusionLevel.NOT_IN_NAV,  # reached through links, not the navigation
                )
            )
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri.startswith("results/"):
        return markdown
    return markdown.replace("](../results/", "](results/")
