"""The book's invariants: every notebook executed and clean, Colab cells agree with _config.yml,
the table of contents lists every chapter and page, every module has an API page, the questions
page links to labels that exist, the versions and run times on the first page are current, and
the conda environment matches pyproject.toml."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import pytest
import tomllib
import yaml
from book_toc import toc_pages

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
PAGES = toc_pages(ROOT)  # read once; several tests look pages up
MODULES = sorted(p.stem for p in (ROOT / "segnotes").glob("*.py") if p.stem != "__init__")
MAX_NOTEBOOK_BYTES = 300_000
# A raw floating-point difference in a compared output differs between CPUs (the before-stop hook's
# rule): scientific notation from 1e-5 down, or a plain decimal with four zeros after the point.
RAW_DIFF = re.compile(r"\b\d\.\d+e-(0?[5-9]|1\d)\b|\b0\.0000\d")
TRAINS = re.compile(r"\bfit(_seeds)?\(")


def _code_cells(path: Path) -> list[dict]:
    nb = json.loads(path.read_text())
    return [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]


def install_line() -> str:
    """The one install command every notebook's first cell must contain, built from _config.yml."""
    repo = CONFIG["repository"]
    return f'%pip install -q "segnotes @ git+{repo["url"]}@{repo["branch"]}"'


def test_there_are_notebooks():
    assert NOTEBOOKS, "book/ has no notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_executed_and_clean(path: Path):
    """nbval skips cells that were never run: every code cell must carry the outputs of one top-to-bottom run."""
    cells = _code_cells(path)
    counts = [c["execution_count"] for c in cells]
    assert None not in counts, (
        f"{path.name}: code cells never run; execute with `make execute NB={path.relative_to(ROOT)}`"
    )
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name}: not run top to bottom once (execution counts {counts})"
    )
    for c in cells:
        for out in c.get("outputs", []):
            assert out["output_type"] != "error", f"{path.name}: a cell has an error output"
            assert "image/svg+xml" not in out.get("data", {}), f"{path.name}: SVG output (embeds a date); use PNG"
            if out["output_type"] == "stream" and out["name"] == "stderr":
                ignored = "".join(c["source"]).lstrip().startswith("# NBVAL_IGNORE_OUTPUT")
                assert ignored, f"{path.name}: stray stderr output: {''.join(out['text'])[:300]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_installs_from_configured_repository(path: Path):
    first, second = (("".join(c["source"])) for c in _code_cells(path)[:2])
    assert install_line() in first, f"{path.name}: first cell must contain {install_line()!r}"
    assert "import segnotes" in first and "except ImportError" in first
    assert "segnotes.setup(" in second, f"{path.name}: second code cell must call segnotes.setup()"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_a_title_and_a_kernel(path: Path):
    nb = json.loads(path.read_text())
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    size = path.stat().st_size
    assert size <= MAX_NOTEBOOK_BYTES, (
        f"{path.name} is {size} bytes (limit {MAX_NOTEBOOK_BYTES}): smaller or fewer figures"
    )


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _ignored(cell: dict) -> bool:
    first = _source(cell).lstrip().split("\n", 1)[0]
    return first.startswith(("# NBVAL_IGNORE_OUTPUT", "# NBVAL_SKIP"))


def _text_outputs(cell: dict) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append("".join(out["text"]))
        elif "data" in out:
            parts.append("".join(out["data"].get("text/plain", "")))
    return "".join(parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_training_cells_are_followed_by_a_checked_cell(path: Path):
    """A training run's numbers are ignored by nbval; the claim must then be checked by the next cell."""
    cells = _code_cells(path)
    for i, cell in enumerate(cells):
        ignored_output = _source(cell).lstrip().startswith("# NBVAL_IGNORE_OUTPUT")  # not the Colab-only skip cell
        if ignored_output and TRAINS.search(_source(cell)):
            following = cells[i + 1] if i + 1 < len(cells) else None
            assert following is not None and not _ignored(following), (
                f"{path.name}: the ignored training cell {_source(cell)[:120]!r} must be followed by a compared cell "
                "that asserts a threshold, e.g. print('mIoU >= baseline + 0.25:', ...)"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_compared_cells_print_no_raw_float_difference(path: Path):
    for cell in _code_cells(path):
        if _ignored(cell):
            continue
        found = RAW_DIFF.search(_text_outputs(cell))
        assert not found, (
            f"{path.name}: a compared cell prints {found.group(0)!r}, which changes from CPU to CPU; "
            f"print a threshold instead (max_diff < 1e-4: True). Cell: {_source(cell)[:120]!r}"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_ends_with_exercises_and_hidden_solutions(path: Path):
    nb = json.loads(path.read_text())
    headings = [
        i
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "markdown" and re.search(r"^## Exercises\s*$", _source(c), re.MULTILINE)
    ]
    assert headings, f"{path.name}: no '## Exercises' section (issue 12: 3-5 exercises with checked solutions)"
    after = [c for c in nb["cells"][headings[-1] :] if c["cell_type"] == "code" and _source(c).strip()]
    solutions = [c for c in after if "hide-cell" in c.get("metadata", {}).get("tags", [])]
    assert 3 <= len(solutions) <= 5, (
        f"{path.name}: {len(solutions)} solution cells tagged hide-cell after '## Exercises'; want 3-5"
    )
    for c in after:
        assert "hide-input" not in c.get("metadata", {}).get("tags", []), (
            f"{path.name}: hide-input shows a solution's output under the question; tag it hide-cell"
        )
    for c in solutions:
        src = _source(c)
        assert not _ignored(c), f"{path.name}: a solution's output must be compared by nbval: {src[:80]!r}"
        # Colab's form view collapses the cell to its title, as the page collapses it to a toggle.
        assert src.startswith("# @title ") and c["metadata"].get("cellView") == "form", (
            f"{path.name}: a solution starts with '# @title Solution to exercise N' and has cellView: form"
        )
        assert re.search(r"^\s*assert ", src, re.MULTILINE), f"{path.name}: a solution asserts its answer: {src[:80]!r}"
        assert not re.search(r"print\([^)]*,\s*True\)", src), f"{path.name}: a solution prints a literal True"


def test_toc_lists_every_notebook_and_page():
    assert TOC["format"] == "jb-book"
    listed = PAGES
    assert len(listed) == len(set(listed)), "a page is listed twice in _toc.yml"
    pages = {
        str(p.relative_to(ROOT).with_suffix(""))
        for p in (ROOT / "book").rglob("*")
        if p.suffix in (".ipynb", ".md") and "_build" not in p.parts and ".ipynb_checkpoints" not in p.parts
    }
    assert pages == set(listed), (
        f"in book/ but not in _toc.yml: {pages - set(listed)}; in _toc.yml but missing: {set(listed) - pages}"
    )


def test_chapters_are_listed_in_file_order():
    chapters = [f for f in PAGES if (ROOT / f"{f}.ipynb").exists()]
    assert chapters == sorted(chapters) and len(chapters) == len(NOTEBOOKS)


@pytest.mark.parametrize("module", MODULES)
def test_every_module_has_an_api_page_that_links_to_its_chapter(module: str):
    """No module is forgotten by the API reference: book/api/<module>.md documents it and is in the TOC."""
    page = ROOT / "book" / "api" / f"{module}.md"
    assert page.exists(), f"segnotes/{module}.py has no API page: add book/api/{module}.md and list it in _toc.yml"
    text = page.read_text()
    assert f".. automodule:: segnotes.{module}\n" in text, (
        f"{page.name} must document segnotes.{module} with automodule"
    )
    assert re.search(r"\{doc\}`\.\./0\d_", text), f"{page.name} must link to the chapter that teaches the module"
    assert f"book/api/{module}" in PAGES, f"book/api/{module} is not in _toc.yml"


def test_api_pages_document_existing_modules_only():
    pages = {p.stem for p in (ROOT / "book" / "api").glob("*.md")} - {"index"}
    assert pages <= set(MODULES), f"API pages for modules that no longer exist: {sorted(pages - set(MODULES))}"


def _labels_in_notebooks() -> set[str]:
    labels = set()
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "markdown":
                labels |= set(re.findall(r"^\(([\w-]+)\)=\s*$", _source(cell), re.MULTILINE))
    return labels


def test_questions_page_cites_real_issues_and_links_existing_labels():
    """Every answer links a label that a chapter defines (the built-page check is tests/browser/test_links.py)."""
    text = (ROOT / "book" / "questions.md").read_text()
    sections = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    assert len(sections) >= 10
    trackers = (
        "qubvel-org/segmentation_models.pytorch",
        "huggingface/transformers",
        "NVlabs/SegFormer",
        "open-mmlab/mmsegmentation",
    )
    for section in sections:
        title = section.splitlines()[0]
        cited = re.findall(
            r"\[([\w.-]+/[\w.-]+)#(\d+)\]\(https://github\.com/([\w.-]+/[\w.-]+)/(issues|pull)/(\d+)\)", section
        )
        assert cited, f"questions.md, {title!r}: cite at least one issue as [owner/repo#N](https://github.com/...)"
        for repo, number, url_repo, _, url_number in cited:
            assert repo == url_repo and number == url_number, f"{title!r}: link text {repo}#{number} != its URL"
            assert repo in trackers, f"{title!r}: {repo} is not one of the trackers {trackers}"
        assert re.search(r"\{ref\}`[^`]*<q-[\w-]+>`", section), f"{title!r}: link the proving cell with {{ref}}"
    missing = sorted(set(re.findall(r"<(q-[\w-]+)>`", text)) - _labels_in_notebooks())
    assert not missing, f"labels the questions page links to but no chapter defines: {missing}"


def _index_table(heading: str) -> dict[str, str]:
    text = (ROOT / "book" / "index.md").read_text()
    section = text.split(f"### {heading}\n", 1)[1].split("\n#", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return {name.strip(): value.strip() for name, value in rows[2:]}


def _lock() -> dict[str, str]:
    """constraints.txt, the lock `make book` / `make test` install: normalised name -> exact version."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[_normalise(name)] = version.strip()
    return pins


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_lock_pins_every_line_exactly():
    lines = [x for x in (ROOT / "constraints.txt").read_text().splitlines() if x.strip() and not x.startswith("#")]
    assert lines and all(re.fullmatch(r"[\w.-]+==[\w.+!-]+", x) for x in lines), "constraints.txt: name==version only"


def test_tested_versions_on_the_first_page_are_the_lock():
    """One source of truth: the first page's table states what the lock pins."""
    stated = _index_table("Tested versions")
    assert {"torch", "timm", "transformers", "segmentation_models_pytorch"} <= set(stated)
    lock = _lock()
    wrong = {name: (v, lock.get(_normalise(name))) for name, v in stated.items() if lock.get(_normalise(name)) != v}
    assert not wrong, f"book/index.md states versions the lock (constraints.txt) does not pin (stated, lock): {wrong}"


def test_installed_versions_are_the_lock():
    """`make test` installs the lock; `make test-colab` / `test-latest` deselect this test on purpose."""
    installed = {_normalise(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    wrong = {name: (v, installed[name]) for name, v in _lock().items() if name in installed and installed[name] != v}
    assert not wrong, f"installed versions differ from constraints.txt (lock, installed): {wrong}; run make test"
    missing = {"torch", "timm", "transformers", "segmentation-models-pytorch", "jupyter-book"} - set(installed)
    assert not missing, f"not installed: {missing}"


def test_run_time_table_lists_every_chapter():
    times = _index_table("Run time of each chapter")
    assert len(times) == len(NOTEBOOKS), (
        f"book/index.md lists {len(times)} chapter run times for {len(NOTEBOOKS)} notebooks"
    )
    unfilled = [chapter for chapter, t in times.items() if not re.fullmatch(r"\d+(\.\d+)? (s|min)", t)]
    assert not unfilled, f"book/index.md: run times not filled in (e.g. '2.5 min'): {unfilled}"


def test_license_matches_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and f"Copyright (c) {CONFIG['copyright']} {CONFIG['author']}" in text


def test_config_serves_stored_outputs_and_colab():
    assert CONFIG["execute"]["execute_notebooks"] == "off"
    assert CONFIG["only_build_toc_files"] is True
    assert "path_to_book" not in CONFIG.get("repository", {}), "leave path_to_book unset: _config.yml is at the root"
    assert CONFIG["repository"]["url"].startswith("https://github.com/")
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"


def test_environment_yml_matches_pyproject_extras():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    named = set()
    for line in pip:
        m = re.fullmatch(r"-e \.\[(.+)\]", line.strip())
        if m:
            named |= set(m.group(1).split(","))
    assert named == extras, f"environment.yml installs extras {named}, pyproject.toml defines {extras}"


def test_package_pins_nothing_exactly():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = pyproject["project"]["dependencies"] + sum(pyproject["project"]["optional-dependencies"].values(), [])
    assert not [d for d in deps if "==" in d], "no == pins: Colab must keep its own torch"
    torch_dep = next(d for d in deps if d.startswith("torch") and not d.startswith("torchvision"))
    assert torch_dep == "torch>=2.1"


PAGE_COLUMNS = 88  # monospace characters the page column shows at 1280 px (the browser check measures it)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_and_printed_lines_fit_the_page(path: Path):
    """A longer line scrolls sideways on the page, and a checked verdict at its end is cut off."""
    long = []
    for i, cell in enumerate(_code_cells(path)):
        printed = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []) if o["output_type"] == "stream")
        for kind, text in (("code", _source(cell)), ("output", printed)):
            long += [f"cell {i + 1} {kind}: {line[:60]!r}..." for line in text.splitlines() if len(line) > PAGE_COLUMNS]
    assert not long, f"{path.name}: {len(long)} lines over {PAGE_COLUMNS} characters: {long[:5]}"
