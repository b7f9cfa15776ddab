"""A pytest plugin for the nbval runs: the wall-clock time of each notebook, summed over its cells.

book/index.md's run-time table is read from this line of `make nbval` (on an idle 2-core machine);
nbval's own --durations lists single cells only.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    if report.when in ("setup", "call", "teardown"):
        _seconds[Path(report.nodeid.split("::")[0]).name] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not any(name.endswith(".ipynb") for name in _seconds):
        return
    terminalreporter.section("notebook run times")
    for name, seconds in sorted(_seconds.items()):
        if name.endswith(".ipynb"):
            terminalreporter.write_line(f"{name}: {seconds:.0f} s ({seconds / 60:.1f} min)")
