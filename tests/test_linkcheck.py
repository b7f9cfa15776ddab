"""The weekly external-link check (tests/tools/linkcheck.py), run here against a local server."""

from __future__ import annotations

import functools
import http.server
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "tools"))
import linkcheck  # noqa: E402

REPO = "https://github.com/segnotes/segnotes"


@pytest.fixture()
def site(tmp_path: Path):
    """A built 'site' linking a paper, a tracker thread and a Colab launch; a 'GitHub' serving some files."""
    html, served = tmp_path / "html", tmp_path / "served"
    (served / "segnotes/segnotes/main/book").mkdir(parents=True)
    (served / "segnotes/segnotes/main/book/01_a.ipynb").write_text("{}")
    (served / "abs").mkdir()
    (served / "abs/1505.04597").write_text("paper")
    html.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    local = f"http://127.0.0.1:{httpd.server_address[1]}"
    mapping = {"https://raw.githubusercontent.com": local, "https://arxiv.org": local}
    yield html, mapping
    httpd.shutdown()


def _page(html: Path, *links: str) -> None:
    (html / "index.html").write_text("".join(f'<a href="{link}">x</a>' for link in links))


def test_resolving_links_pass(site):
    html, mapping = site
    _page(
        html,
        "https://arxiv.org/abs/1505.04597",
        "https://colab.research.google.com/github/segnotes/segnotes/blob/main/book/01_a.ipynb",
    )
    assert linkcheck.check(html, REPO, "main", mapping) == []


def test_missing_paper_and_missing_notebook_are_reported(site):
    html, mapping = site
    _page(
        html,
        "https://arxiv.org/abs/0000.00000",
        "https://colab.research.google.com/github/segnotes/segnotes/blob/main/book/99_gone.ipynb",
    )
    broken = linkcheck.check(html, REPO, "main", mapping)
    assert len(broken) == 2 and all(": 404 (index.html)" in line for line in broken)


def test_colab_link_to_another_branch_is_reported(site):
    html, mapping = site
    _page(html, "https://colab.research.google.com/github/segnotes/segnotes/blob/dev/book/01_a.ipynb")
    (line,) = linkcheck.check(html, REPO, "main", mapping)
    assert "not segnotes/segnotes@main" in line


def test_command_line_needs_a_built_site(tmp_path: Path):
    with pytest.raises(SystemExit):
        linkcheck.main([str(tmp_path), "--repository", REPO, "--branch", "main"])
