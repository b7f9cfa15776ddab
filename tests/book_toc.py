"""The book's pages in reading order, read from ``_toc.yml``: shared by the book tests and the browser check."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _files(entries: list[dict]) -> list[str]:
    files = []
    for entry in entries:
        if "file" in entry:
            files.append(entry["file"])
        files += _files(entry.get("sections", []))
    return files


def toc_pages(root: Path = ROOT) -> list[str]:
    """Every page ``root/_toc.yml`` lists, root first, without file extensions (``book/02_mobilenetv2_unet``)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    chapters = toc.get("chapters", []) + sum((part["chapters"] for part in toc.get("parts", [])), [])
    return [toc["root"], *_files(chapters)]
