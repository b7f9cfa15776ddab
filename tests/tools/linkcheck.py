"""Every external link of the built book resolves (``make linkcheck``; the weekly workflow runs it).

Reads ``_build/html``, collects every ``http(s)`` link of the pages (papers, tracker threads, library
sites) and the Colab launch buttons, and checks:

* a Colab launch URL names the configured repository and branch, and the notebook it opens exists
  on that branch (its raw file answers);
* every other link answers with a status below 400 (HEAD, then GET for servers that refuse HEAD).

``--map PREFIX=REPLACEMENT`` rewrites URLs before fetching them: the tests point GitHub at a local
server with it. Exits 1 and lists every broken link.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

COLAB = re.compile(r"https://colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/([\w./-]+?)/(.+\.ipynb)$")
# Links that are not pages to check: the site's own search, and template placeholders.
SKIP = re.compile(r"^https?://(localhost|127\.0\.0\.1)|\{")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: set[str] = set()

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href") or ""
        if tag == "a" and href.startswith(("http://", "https://")) and not SKIP.search(href):
            self.links.add(href.split("#", 1)[0])


def external_links(html: Path) -> dict[str, set[str]]:
    """Every external link of the built site -> the pages that contain it."""
    found: dict[str, set[str]] = {}
    for page in sorted(html.rglob("*.html")):
        if "_static" in page.parts or "_sources" in page.parts:
            continue
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        for link in parser.links:
            found.setdefault(link, set()).add(str(page.relative_to(html)))
    return found


def _status(url: str, mapping: dict[str, str], retries: int = 2) -> int | str:
    for prefix, replacement in mapping.items():
        if url.startswith(prefix):
            url = replacement + url[len(prefix) :]
    headers = {"User-Agent": "segnotes-linkcheck (+https://github.com/segnotes/segnotes)"}
    for attempt in range(retries + 1):
        for method in ("HEAD", "GET"):
            request = urllib.request.Request(url, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=20) as response:
                    return response.status
            except urllib.error.HTTPError as error:
                if error.code in (403, 405) and method == "HEAD":
                    continue  # some servers refuse HEAD: ask again with GET
                if error.code == 429 and attempt < retries:
                    time.sleep(5 * (attempt + 1))
                    break
                return error.code
            except (urllib.error.URLError, TimeoutError) as error:
                if attempt == retries:
                    return str(getattr(error, "reason", error))
                break
    return "no answer"


def check(html: Path, repository: str, branch: str, mapping: dict[str, str] | None = None) -> list[str]:
    """The broken links of the site at ``html``, one line each (empty when every link resolves)."""
    mapping = mapping or {}
    repo = repository.removeprefix("https://github.com/").rstrip("/")
    broken = []
    for link, pages in sorted(external_links(html).items()):
        where = ", ".join(sorted(pages)[:3])
        colab = COLAB.match(link)
        if colab:
            if (colab.group(1), colab.group(2)) != (repo, branch):
                broken.append(f"{link}: launches {colab.group(1)}@{colab.group(2)}, not {repo}@{branch} ({where})")
                continue
            link = f"https://raw.githubusercontent.com/{repo}/{branch}/{colab.group(3)}"
        status = _status(link, mapping)
        if not (isinstance(status, int) and status < 400):
            broken.append(f"{link}: {status} ({where})")
    return broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the built site, e.g. _build/html")
    parser.add_argument("--repository", required=True, help="_config.yml's repository url")
    parser.add_argument("--branch", required=True, help="_config.yml's repository branch")
    parser.add_argument("--map", action="append", default=[], help="PREFIX=REPLACEMENT, rewrites URLs (tests)")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").exists():
        parser.error(f"{args.html} has no index.html: build the book first (make book)")
    mapping = dict(m.split("=", 1) for m in args.map)
    broken = check(args.html, args.repository, args.branch, mapping)
    print(f"{len(external_links(args.html))} external links, {len(broken)} broken")
    for line in broken:
        print("  " + line)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
