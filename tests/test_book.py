"""The book's invariants: every notebook executed and clean, Colab cells agree with _config.yml,
the table of contents lists every chapter, and the conda environment matches pyproject.toml."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


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
    assert None not in counts, f"{path.name}: code cells never run; execute with `make execute NB={path.relative_to(ROOT)}`"
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: not run top to bottom once (execution counts {counts})"
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
    assert path.stat().st_size < 2_000_000, f"{path.name} is {path.stat().st_size} bytes: lower figure dpi or sizes"


def _toc_files(entries) -> list[str]:
    files = []
    for e in entries:
        if "file" in e:
            files.append(e["file"])
        files += _toc_files(e.get("sections", []))
    return files


def test_toc_lists_every_notebook_and_page():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert toc["format"] == "jb-book"
    listed = {toc["root"], *_toc_files(toc.get("chapters", []))}
    pages = {str(p.relative_to(ROOT).with_suffix("")) for p in (ROOT / "book").glob("*") if p.suffix in (".ipynb", ".md")}
    assert pages == listed, f"in book/ but not in _toc.yml: {pages - listed}; in _toc.yml but missing: {listed - pages}"


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
