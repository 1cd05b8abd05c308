"""Smoke test of the reliability runner (``make faults``, ``python -m harness.faults``): two
scenarios at ``--quick`` scale, so the runner itself is exercised by the normal test run. The
full figures are ``docs/reliability.md``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(180)
def test_quick_faults_meet_the_goal(tmp_path: Path) -> None:
    """Scenario 5 (application kill -9 with durability=spool, restart) and 10 (forked
    multiprocessing workers) at quick scale: exit status 0 means no record lost and none stored
    twice; the Markdown report carries the table and the regenerating command."""
    report = tmp_path / "reliability.md"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.faults", "--quick", "--only", "5,10",
         "--write", str(report)],
        capture_output=True,
        check=False,
        text=True,
        timeout=170,
        cwd=str(ROOT),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = report.read_text()
    assert "-m harness.faults --write docs/reliability.md" in text
    figures = text.split("## How each scenario is measured")[0]  # not the loss-path list
    rows = [line for line in figures.splitlines() if line.startswith(("| 5 |", "| 10 |"))]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[5] == "0"  # lost
        assert cells[6] == "0"  # duplicated in the sink
        assert cells[-1] == "met"
