"""Open every page of the built book in headless Chromium, the way a reader would.

Needs ``_build/html`` (``make strict-build``) and Debian's ``chromium``; ``make test``
provides both. Outside CI, a machine without Chromium skips; in CI (``CI`` set) a missing
browser or book is a failure, never a skip.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
PAGES = [TOC["root"], *(c["file"] for c in TOC["chapters"])]


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
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
        )
        yield browser
        browser.close()


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
    broken = page.evaluate(
        """async () => {
            const imgs = [...document.querySelectorAll('img')];
            for (const img of imgs) { img.loading = 'eager'; try { await img.decode(); } catch (e) {} }
            return imgs.filter(i => i.offsetParent !== null && !(i.naturalWidth > 0)).map(i => i.src.slice(0, 80));
        }"""
    )
    assert not broken, f"{page_path}: images that did not load: {broken}"
    if page_path.endswith(".ipynb") or (ROOT / f"{page_path}.ipynb").exists():
        repo = CONFIG["repository"]
        owner_repo = repo["url"].removeprefix("https://github.com/")
        expected = f"https://colab.research.google.com/github/{owner_repo}/blob/{repo['branch']}/{page_path}.ipynb"
        links = page.eval_on_selector_all("a[href*='colab.research.google.com']", "els => els.map(e => e.href)")
        assert expected in links, f"{page_path}: Colab link should be {expected}, found {links}"
    assert not errors, f"{page_path}: JavaScript errors: {errors}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{Path(page_path).name}.png"), full_page=True)
    page.close()
