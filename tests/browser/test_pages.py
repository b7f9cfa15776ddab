"""Open every page of the built book in headless Chromium and fail on what a reader would see.

Needs ``_build/html`` (``make strict-build``) and Debian's ``chromium``; ``make test``
provides both. Outside CI, a machine without Chromium skips; in CI (``CI`` set) a missing
browser or book is a failure, never a skip.

Besides a title, text, loaded images, the Colab link and no JavaScript errors, each page must
be free of what makes a page hard to read (each found on main at 551c0fd):

* markdown-table pipes shown as a paragraph (a table printed as CommonMark, which has no tables);
* a block of progress-bar lines longer than a couple of lines, or any output longer than a screen
  or two of text;
* a page taller than :data:`MAX_PAGE_HEIGHT` pixels at 1280 px width;
* a figure below :data:`MIN_FIGURE_DPI` dpi, narrower than :data:`MIN_IMAGE_WIDTH` px, or shrunk
  so far that matplotlib's default 10 pt text is drawn smaller than :data:`MIN_TEXT_PX` px;
* a Python traceback or a warning printed into an output;
* an exercise's solution (a ``hide-input`` cell) shown instead of collapsed.

One full-page screenshot per page is kept in ``_build/screenshots/`` for a human to look at.
Set ``SEGNOTES_BOOK_ROOT`` to check another checkout's build (e.g. an old commit's).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import struct
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from book_toc import toc_pages

ROOT = Path(os.environ.get("SEGNOTES_BOOK_ROOT") or Path(__file__).resolve().parents[2])
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())

# Measured at 1280x900 on the reworked chapters: 11 000 to 15 000 px each; on 551c0fd, chapter 2 was
# 20 645 px and chapter 6 32 252 px, most of both a progress-bar dump.
MAX_PAGE_HEIGHT = 25_000
MAX_PROGRESS_LINES = 2  # a finished bar, plus one summary line
MAX_OUTPUT_LINES = 60  # a plain-text output longer than this is scrolled past, not read
MIN_FIGURE_DPI = 100  # the house rule (segnotes.setup sets matplotlib's rcParams)
MIN_IMAGE_WIDTH = 300  # rendered CSS pixels
MIN_TEXT_PX = 9.0  # matplotlib's default 10 pt text, as drawn on the page


PAGES = toc_pages(ROOT)


def _require(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("CI") or os.environ.get("SEGNOTES_BROWSER_CHECK"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def server():
    _require((HTML / "index.html").exists(), f"{HTML} is missing: build the book first (make strict-build)")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    _require(CHROMIUM is not None, "Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


# Runs in the page: everything a reader would see, gathered in one pass.
READER_VIEW = r"""async () => {
    const main = document.querySelector('main');
    const imgs = [...main.querySelectorAll('img')];
    for (const img of imgs) { img.loading = 'eager'; try { await img.decode(); } catch (e) {} }
    const visible = imgs.filter(i => i.offsetParent !== null);
    const firstWords = el => el.innerText.trim().replace(/\s+/g, ' ').slice(0, 70);
    const tableRule = /\|\s*:?(-{3,}|[\u2013\u2014]+):?\s*(\|\s*:?(-{3,}|[\u2013\u2014]+):?\s*)*\|/;
    const progress = /\d+%\|/;
    const outputs = [...main.querySelectorAll('.cell_output .output pre')];
    return {
        height: document.documentElement.scrollHeight,
        broken: visible.filter(i => !(i.naturalWidth > 0)).map(i => i.src.slice(0, 80)),
        images: visible.map(i => ({
            src: i.src, width: i.getBoundingClientRect().width, naturalWidth: i.naturalWidth,
        })),
        pipes: [...main.querySelectorAll('p')].filter(p => tableRule.test(p.innerText)).map(firstWords),
        outputs: outputs.filter(pre => !pre.closest('[class*="highlight-python"]')).map(pre => ({
            lines: pre.innerText.split('\n').length,
            progress: pre.innerText.split('\n').filter(l => progress.test(l)).length,
            start: firstWords(pre),
        })),
        warnings: outputs.map(pre => pre.innerText.match(/\b\w+Warning: .{0,80}/))
                         .filter(m => m).map(m => m[0]),
        tracebacks: [...main.querySelectorAll('.output.traceback, .output.error')].length,
        shownSolutions: [...main.querySelectorAll('.cell.tag_hide-input .cell_input')]
                            .filter(el => el.checkVisibility() && el.innerText.trim() !== '').map(firstWords),
    };
}"""


def _png_dpi(path: Path) -> float | None:
    """The horizontal resolution in a PNG's pHYs chunk (matplotlib writes it), or None."""
    data = path.read_bytes()
    at = data.find(b"pHYs")
    if not data.startswith(b"\x89PNG") or at < 0:
        return None
    per_unit, _, unit = struct.unpack(">IIB", data[at + 4 : at + 13])
    return per_unit * 0.0254 if unit == 1 else None


def _image_problems(images: list[dict], server: str) -> list[str]:
    problems = []
    for img in images:
        name = Path(urlparse(img["src"]).path).name
        width, natural = img["width"], img["naturalWidth"]
        if width < MIN_IMAGE_WIDTH:
            problems.append(f"image {name} is {width:.0f} px wide on the page (< {MIN_IMAGE_WIDTH})")
        if not img["src"].startswith(server) or not name.endswith(".png"):
            continue
        dpi = _png_dpi(HTML / unquote(urlparse(img["src"]).path).lstrip("/"))
        if dpi is None:
            continue
        if dpi < MIN_FIGURE_DPI - 0.5:
            problems.append(f"figure {name} is saved at {dpi:.0f} dpi (< {MIN_FIGURE_DPI})")
        text_px = 10 * dpi / 72 * min(1.0, width / natural)
        if text_px < MIN_TEXT_PX:
            problems.append(
                f"figure {name} ({natural} px) is shown {width:.0f} px wide: its 10 pt text is {text_px:.2f} px "
                f"(< {MIN_TEXT_PX}); use a smaller figsize or fewer panels per row"
            )
    return problems


def reader_problems(view: dict, server: str) -> list[str]:
    """What a reader of one page would stumble over, one line per problem (empty: the page reads well)."""
    problems = []
    if view["height"] > MAX_PAGE_HEIGHT:
        problems.append(f"the page is {view['height']} px tall (> {MAX_PAGE_HEIGHT}): split it or trim outputs")
    problems += [f"a markdown table is shown as raw pipes: {p!r}" for p in view["pipes"]]
    for out in view["outputs"]:
        if out["progress"] > MAX_PROGRESS_LINES:
            problems.append(f"an output holds {out['progress']} progress-bar lines (> {MAX_PROGRESS_LINES})")
        elif out["lines"] > MAX_OUTPUT_LINES:
            problems.append(f"an output is {out['lines']} lines long (> {MAX_OUTPUT_LINES}): {out['start']!r}")
    problems += [f"a warning is printed: {w!r}" for w in view["warnings"]]
    if view["tracebacks"]:
        problems.append(f"{view['tracebacks']} error output(s) with a traceback")
    problems += [f"an exercise's solution is shown, not collapsed: {s!r}" for s in view["shownSolutions"]]
    return problems + _image_problems(view["images"], server)


@pytest.mark.parametrize("page_path", PAGES)
def test_page_renders(server, browser, page_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server}/{page_path}.html", wait_until="load")
    title = page.title()
    assert title and "segnotes" in title, f"{page_path}: unexpected title {title!r}"
    body = page.inner_text("main")
    assert "Traceback (most recent call last)" not in body, f"{page_path}: a Python traceback is shown"
    assert len(body) > 200, f"{page_path}: the page has almost no text"
    view = page.evaluate(READER_VIEW)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = page_path.removeprefix("book/").replace("/", "_")  # api/index and index must not collide
    page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
    assert not view["broken"], f"{page_path}: images that did not load: {view['broken']}"
    if (ROOT / f"{page_path}.ipynb").exists():
        repo = CONFIG["repository"]
        owner_repo = repo["url"].removeprefix("https://github.com/")
        expected = f"https://colab.research.google.com/github/{owner_repo}/blob/{repo['branch']}/{page_path}.ipynb"
        links = page.eval_on_selector_all("a[href*='colab.research.google.com']", "els => els.map(e => e.href)")
        assert expected in links, f"{page_path}: Colab link should be {expected}, found {links}"
    assert not errors, f"{page_path}: JavaScript errors: {errors}"
    page.close()
    problems = reader_problems(view, server)
    assert not problems, f"{page_path} ({view['height']} px tall) does not read well:\n  " + "\n  ".join(problems)


def test_reader_problems_reports_every_kind():
    """The checks themselves: a synthetic view with every problem is reported line by line."""
    view = {
        "height": MAX_PAGE_HEIGHT + 1,
        "pipes": ["| a | b | | — | — |"],
        "outputs": [
            {"lines": 3, "progress": MAX_PROGRESS_LINES + 1, "start": "training: 0%|"},
            {"lines": MAX_OUTPUT_LINES + 1, "progress": 0, "start": "epoch 1"},
            {"lines": MAX_OUTPUT_LINES, "progress": MAX_PROGRESS_LINES, "start": "fine"},
        ],
        "warnings": ["UserWarning: x"],
        "tracebacks": 1,
        "shownSolutions": ["class PooledReductionAttention"],
        "images": [{"src": "http://elsewhere/a.png", "width": MIN_IMAGE_WIDTH - 1, "naturalWidth": 100}],
    }
    problems = reader_problems(view, "http://127.0.0.1:1")
    assert len(problems) == 8, problems
    assert re.search(r"raw pipes", problems[1])
