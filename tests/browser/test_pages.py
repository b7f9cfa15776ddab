"""Open every page of the built book in headless Chromium and fail on what a reader would see.

Needs ``_build/html`` (``make strict-build``) and Debian's ``chromium``; ``make test``
provides both. Outside CI, a machine without Chromium skips; in CI (``CI`` set) a missing
browser or book is a failure, never a skip.

Besides a title, text, loaded images, the Colab link and no JavaScript errors, each page must
be free of what makes a page hard to read (each found on main at 551c0fd or 02aa291):

* markdown-table pipes shown as a paragraph (a table printed as CommonMark, which has no tables);
* a block of progress-bar lines longer than a couple of lines, or any output longer than a screen
  or two of text;
* a page taller than :data:`MAX_PAGE_HEIGHT` pixels at 1280 px width;
* a figure below :data:`MIN_FIGURE_DPI` dpi, narrower than :data:`MIN_IMAGE_WIDTH` px, or shrunk
  so far that matplotlib's default 10 pt text is drawn smaller than :data:`MIN_TEXT_PX` px;
* a Python traceback or a warning printed into an output;
* an exercise's solution shown instead of collapsed: a cell tagged ``hide-cell`` (or
  ``hide-input``, the old format) whose code or output is visible before its toggle is clicked,
  or still hidden after;
* at a 1280x900 laptop window: more than :data:`MAX_SCROLLING_BLOCKS` of the code and output
  blocks scroll sideways, or any output block does (a printed result cut at the edge); the
  sidebar's book title covered by anything (a sticky header did) or off screen; more than one
  search box; a "Last updated" line with the build's date (it dates the build, not the content);
* at a 390-px phone width: the page as a whole scrolls sideways;
* at both widths: a launch (Colab), repository or issues button that a click does not open; on a
  phone, a menu button that does not open the book's navigation or the page's contents.

One full-page screenshot per page is kept in ``_build/screenshots/`` for a human to look at.
Set ``SEGNOTES_BOOK_ROOT`` to check another checkout's build (e.g. an old commit's).
"""

from __future__ import annotations

import datetime
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
# 20 645 px and chapter 6 32 252 px, most of both a progress-bar dump. The chapters now carry
# architecture diagrams (500-600 px each) and equations: chapters 4 and 5 measure 25 300-25 600 px.
# Progress dumps are caught by MAX_PROGRESS_LINES and MAX_OUTPUT_LINES on their own.
MAX_PAGE_HEIGHT = 28_000
MAX_PROGRESS_LINES = 2  # a finished bar, plus one summary line
MAX_OUTPUT_LINES = 60  # a plain-text output longer than this is scrolled past, not read
MIN_FIGURE_DPI = 100  # the house rule (segnotes.setup sets matplotlib's rcParams)
MIN_IMAGE_WIDTH = 300  # rendered CSS pixels
MIN_TEXT_PX = 9.0  # matplotlib's default 10 pt text, as drawn on the page
# Code and output blocks that may scroll sideways at 1280x900: the chapters keep their lines
# <= 88 characters and the column shows about 100 (book/_static/segnotes.css); outputs wrap.
MAX_SCROLLING_BLOCKS = 0.1
PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1280, "height": 900}


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
    };
}"""


# Runs in the page: every hidden cell (an exercise's solution) before and after its toggle is
# clicked. A cell is hidden when none of its code and outputs is visible.
SOLUTIONS_VIEW = r"""() => {
    const cells = [...document.querySelectorAll('main div.cell.tag_hide-cell, main div.cell.tag_hide-input')];
    const parts = cell => [...cell.querySelectorAll('.cell_input, .cell_output')];
    const name = cell => {
        const code = cell.querySelector('.cell_input pre');
        return (code ? code.textContent : cell.textContent).trim().split('\n')[0].slice(0, 60);
    };
    return cells.map(cell => {
        const label = [...cell.querySelectorAll('summary')].map(el => el.innerText.trim()).join(' ');
        const shownBefore = parts(cell).filter(el => el.checkVisibility())
                                       .map(el => el.classList.contains('cell_input') ? 'code' : 'output');
        for (const summary of cell.querySelectorAll('details:not([open]) > summary')) summary.click();
        const hiddenAfter = parts(cell).filter(el => !el.checkVisibility())
                                       .map(el => el.classList.contains('cell_input') ? 'code' : 'output');
        return {name: name(cell), tag: cell.classList.contains('tag_hide-cell') ? 'hide-cell' : 'hide-input',
                label, shownBefore, hiddenAfter};
    });
}"""

# Runs in the page at the laptop size, after the hidden cells are opened: which code and output
# blocks scroll sideways, whether anything covers the sidebar's title, the search boxes shown,
# and any "Last updated" line.
LAYOUT_VIEW = r"""() => {
    const main = document.querySelector('main');
    const blocks = [...main.querySelectorAll('pre')].filter(p => p.checkVisibility());
    const scrolls = p => p.scrollWidth > p.clientWidth + 1;
    const firstLine = p => p.textContent.trim().split('\n')[0].slice(0, 70);
    const title = document.querySelector('.bd-sidebar-primary .logo__title, .bd-sidebar-primary .navbar-brand');
    const covered = [];
    if (title) {
        const r = title.getBoundingClientRect();
        for (const fx of [0.05, 0.5, 0.95]) for (const fy of [0.05, 0.5, 0.95]) {
            const [x, y] = [r.left + fx * r.width, r.top + fy * r.height];
            const hit = document.elementFromPoint(x, y);
            if (hit === title || title.contains(hit)) continue;
            covered.push(hit ? `(${x.toFixed(0)}, ${y.toFixed(0)}) under ${hit.tagName.toLowerCase()}.`
                               + String(hit.className).trim().split(/\s+/).join('.')
                             : `(${x.toFixed(0)}, ${y.toFixed(0)}) off screen`);
        }
    }
    const search = '.search-button-field, .search-button__button, .search-button, input[type="search"]';
    return {
        blocks: blocks.length,
        scrolling: blocks.filter(scrolls).map(firstLine),
        cutOutputs: blocks.filter(p => p.closest('.cell_output') && scrolls(p)).map(firstLine),
        title: title ? title.textContent.trim() : null,
        covered,
        searchBoxes: [...document.querySelectorAll(search)].filter(el => el.checkVisibility()).length,
        lastUpdated: document.body.innerText.match(/Last updated[^\n]*/gi) || [],
    };
}"""

PAGE_WIDTH = "() => ({scrollWidth: document.scrollingElement.scrollWidth, innerWidth: window.innerWidth})"


# The article header's drop-down buttons and the links each must show when clicked.
HEADER_BUTTONS = {
    ".dropdown-launch-buttons": {"launch (Colab)": "a[href*='colab.research.google.com']"},
    ".dropdown-source-buttons": {
        "repository": "a.btn-source-repository-button",
        "issues": "a.btn-source-issues-button",
    },
}


def button_problems(page, notebook: bool) -> list[str]:
    """Click each header drop-down as a reader would; its links must then be visible."""
    problems = []
    width = page.viewport_size["width"]
    for dropdown, links in HEADER_BUTTONS.items():
        if dropdown == ".dropdown-launch-buttons" and not notebook:
            continue
        try:
            page.locator(f".bd-header-article {dropdown} > button").click(timeout=3000)
        except Exception as error:  # Playwright's TimeoutError: covered or hidden
            problems.append(
                f"at {width} px the {' and '.join(links)} button is not reachable: {str(error).splitlines()[0]}"
            )
            continue
        for name, link in links.items():
            try:
                page.locator(f".bd-header-article {dropdown} {link}").wait_for(state="visible", timeout=3000)
            except Exception:
                problems.append(f"at {width} px the {name} link does not show when its button is clicked")
        page.keyboard.press("Escape")
    return problems


def menu_problems(page) -> list[str]:
    """On a phone, the article header's menu buttons must open the navigation and the page's contents."""
    problems = []
    for kind, what in (("primary", "the book's navigation"), ("secondary", "the page's contents")):
        toggle = page.locator(f".bd-header-article .{kind}-toggle")
        if kind == "secondary" and not toggle.count():
            continue  # a page without sections has no contents to open
        try:
            toggle.click(timeout=3000)
            page.locator(f"#pst-{kind}-sidebar-modal[open]").wait_for(state="visible", timeout=3000)
        except Exception as error:
            problems.append(f"at a phone's width the menu button does not open {what}: {str(error).splitlines()[0]}")
        page.keyboard.press("Escape")
    return problems


def _build_dates() -> list[datetime.date]:
    """The days the book may have been built: the day ``index.html`` was written, and today."""
    built = HTML / "index.html"
    days = [datetime.date.today()]
    if built.exists():
        days.append(datetime.date.fromtimestamp(built.stat().st_mtime))
    return days


def _date_strings(days: list[datetime.date]) -> list[str]:
    """Each day as Sphinx's ``html_last_updated_fmt`` (default ``%b %d, %Y``) or a similar format prints it."""
    formats = ("%b %d, %Y", "%B %d, %Y", "%Y-%m-%d", "%d %b %Y", "%d %B %Y", "%d/%m/%Y", "%m/%d/%Y")
    return [day.strftime(f) for day in days for f in formats]


def solution_problems(cells: list[dict]) -> list[str]:
    """A hidden cell (an exercise's solution) must hide its code and output until its toggle is clicked."""
    problems = []
    for cell in cells:
        title = cell["name"].removeprefix("# @title ").strip()
        if cell["name"].startswith("# @title ") and title.lower() not in cell["label"].lower():
            problems.append(f"the toggle of {title!r} reads {cell['label']!r}: it should name the solution")
        if cell["shownBefore"]:
            fix = " (tag it hide-cell: hide-input leaves the output shown)" if cell["tag"] == "hide-input" else ""
            shown = " and ".join(cell["shownBefore"])
            problems.append(
                f"a {cell['tag']} cell's {shown} is shown before its toggle is clicked{fix}: {cell['name']!r}"
            )
        if cell["hiddenAfter"]:
            hidden = " and ".join(cell["hiddenAfter"])
            problems.append(
                f"a {cell['tag']} cell's {hidden} stays hidden after its toggle is clicked: {cell['name']!r}"
            )
    return problems


def layout_problems(layout: dict, phone: dict, build_dates: list[datetime.date] | None = None) -> list[str]:
    """What makes a page hard to read at 1280x900 (``layout``) and on a phone (``phone``)."""
    problems = []
    blocks, scrolling = layout["blocks"], layout["scrolling"]
    if len(scrolling) > MAX_SCROLLING_BLOCKS * blocks:
        problems.append(
            f"{len(scrolling)} of {blocks} code/output blocks scroll sideways at 1280x900 "
            f"(> {MAX_SCROLLING_BLOCKS:.0%}); keep lines <= 88 characters: " + "; ".join(map(repr, scrolling[:5]))
        )
    problems += [f"an output's lines are cut at the edge at 1280x900: {line!r}" for line in layout["cutOutputs"]]
    if layout["title"] is None:
        problems.append("the sidebar has no book title")
    problems += [f"the sidebar's title {layout['title']!r} is covered at {c}" for c in layout["covered"]]
    if layout["searchBoxes"] != 1:
        problems.append(f"{layout['searchBoxes']} search boxes are shown at 1280x900 (want one)")
    dates = _date_strings(_build_dates() if build_dates is None else build_dates)
    problems += [
        f"the page shows the build's date as its last update: {line!r}"
        for line in layout["lastUpdated"]
        if any(d in line for d in dates)
    ]
    if phone["scrollWidth"] > phone["innerWidth"] + 1:
        problems.append(
            f"at {phone['innerWidth']} px (a phone) the page scrolls sideways: it is {phone['scrollWidth']} px wide"
        )
    return problems


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
    return problems + _image_problems(view["images"], server)


@pytest.mark.parametrize("page_path", PAGES)
def test_page_renders(server, browser, page_path):
    page = browser.new_page(viewport=LAPTOP)
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
    # The solutions are opened first, so that their code and outputs are measured too.
    solutions = page.evaluate(SOLUTIONS_VIEW)
    page.evaluate("window.scrollTo(0, 0)")
    layout = page.evaluate(LAYOUT_VIEW)
    page.evaluate("window.scrollTo(0, document.scrollingElement.scrollHeight / 2)")
    layout["covered"] += [f"{c} (page scrolled)" for c in page.evaluate(LAYOUT_VIEW)["covered"]]
    notebook = (ROOT / f"{page_path}.ipynb").exists()
    buttons = button_problems(page, notebook)
    page.set_viewport_size(PHONE)
    phone = page.evaluate(PAGE_WIDTH)
    buttons += button_problems(page, notebook) + menu_problems(page)
    assert not errors, f"{page_path}: JavaScript errors: {errors}"
    page.close()
    problems = reader_problems(view, server) + solution_problems(solutions) + layout_problems(layout, phone) + buttons
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
        "images": [{"src": "http://elsewhere/a.png", "width": MIN_IMAGE_WIDTH - 1, "naturalWidth": 100}],
    }
    problems = reader_problems(view, "http://127.0.0.1:1")
    assert len(problems) == 7, problems
    assert re.search(r"raw pipes", problems[1])


def test_solution_problems_reports_shown_and_stuck_cells():
    hidden = {
        "name": "# @title Solution to exercise 1",
        "tag": "hide-cell",
        "label": "Show solution to exercise 1",
        "shownBefore": [],
        "hiddenAfter": [],
    }
    old_format = {**hidden, "tag": "hide-input", "shownBefore": ["output"]}
    stuck = {**hidden, "hiddenAfter": ["code", "output"]}
    unnamed = {**hidden, "label": "Show code cell content"}
    assert solution_problems([hidden, {**hidden, "name": "def helper():", "label": "Show code"}]) == []
    problems = solution_problems([hidden, old_format, stuck, unnamed])
    assert len(problems) == 3, problems
    assert "output is shown before" in problems[0] and "tag it hide-cell" in problems[0]
    assert "code and output stays hidden after" in problems[1]
    assert "should name the solution" in problems[2]


def test_layout_problems_reports_every_kind():
    built = [datetime.date(2026, 11, 29)]
    fine = {
        "blocks": 20,
        "scrolling": ["x = 1"] * 2,  # one block in ten
        "cutOutputs": [],
        "title": "segnotes",
        "covered": [],
        "searchBoxes": 1,
        "lastUpdated": ["Last updated on Oct 01, 2026"],  # a content date, not the build's
    }
    wide_enough = {"scrollWidth": 391, "innerWidth": 390}
    assert layout_problems(fine, wide_enough, built) == []
    bad = {
        "blocks": 20,
        "scrolling": ["x = 1"] * 3,
        "cutOutputs": ["mIoU >= 0.6 in every seed: True"],
        "title": "segnotes",
        "covered": ["(20, 45) under div.navbar-item"],
        "searchBoxes": 2,
        "lastUpdated": ["Last updated on Nov 29, 2026."],
    }
    problems = layout_problems(bad, {"scrollWidth": 500, "innerWidth": 390}, built)
    assert len(problems) == 6, problems
    assert problems[0].startswith("3 of 20 code/output blocks scroll sideways")
    assert layout_problems({**fine, "title": None}, wide_enough, built) == ["the sidebar has no book title"]
