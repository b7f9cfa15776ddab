"""Every link in the text of the built "questions readers ask" page (and the first page) leads somewhere.

Runs after the build, with the browser check (``make browser-check``); it only parses
``_build/html``. An internal link must name an existing page and, with a ``#fragment``, an
element with that id on it; a link to an issue tracker must be an issue or pull request of
one of the four projects the page is about.
"""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(os.environ.get("SEGNOTES_BOOK_ROOT") or Path(__file__).resolve().parents[2])
HTML = ROOT / "_build" / "html"
TRACKERS = (
    "qubvel-org/segmentation_models.pytorch",
    "huggingface/transformers",
    "NVlabs/SegFormer",
    "open-mmlab/mmsegmentation",
)
ISSUE = re.compile(r"https://github\.com/([\w.-]+/[\w.-]+)/(issues|pull)/\d+")


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self._in_article = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "article":
            self._in_article += 1
        if tag == "a" and self._in_article and attrs.get("href"):
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "article":
            self._in_article -= 1


def _parse(path: Path) -> _Anchors:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _require_build() -> None:
    if (HTML / "index.html").exists():
        return
    why = f"{HTML} is missing: build the book first (make strict-build)"
    if os.environ.get("CI") or os.environ.get("SEGNOTES_BROWSER_CHECK"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.mark.parametrize("page", ["book/questions", "book/index"])
def test_every_link_resolves(page: str):
    _require_build()
    path = HTML / f"{page}.html"
    assert path.exists(), f"{path} was not built"
    links = _parse(path).links
    assert links, f"{page}: no links found"
    broken, cache = [], {}
    for href in links:
        url = urlparse(href)
        if url.scheme in ("http", "https"):
            m = ISSUE.fullmatch(href.split("#")[0])
            if url.netloc == "github.com" and m and m.group(1) not in TRACKERS:
                broken.append(f"{href}: not an issue of {TRACKERS}")
            continue
        if url.scheme or href.startswith("mailto:"):
            continue
        target = (path.parent / unquote(url.path)).resolve() if url.path else path
        if not target.exists():
            broken.append(f"{href}: no page {target.relative_to(HTML) if target.is_relative_to(HTML) else target}")
            continue
        if url.fragment:
            ids = cache.setdefault(target, _parse(target).ids)
            if unquote(url.fragment) not in ids:
                broken.append(f"{href}: no element with id {url.fragment!r} on {target.name}")
    assert not broken, f"{page}: broken links:\n  " + "\n  ".join(broken)


def test_questions_page_links_every_answer_to_a_chapter():
    """A {ref} to a label no chapter defines is built as plain text, not a link: count the links."""
    _require_build()
    links = _parse(HTML / "book" / "questions.html").links
    linked = {urlparse(h).fragment for h in links if re.match(r"0\d_\w+\.html#q-", h)}
    wanted = set(re.findall(r"<(q-[\w-]+)>`", (ROOT / "book" / "questions.md").read_text()))
    assert wanted <= linked, f"answers whose proof is not a link into a chapter: {sorted(wanted - linked)}"
    issues = {h for h in links if ISSUE.fullmatch(h)}
    assert len(issues) >= 10, f"the questions page cites only {len(issues)} issues"
