"""The three-node cluster rows of ``make faults`` (18-20, issue #14) at ``--quick`` scale.

Slow (about three minutes, a cluster of its own included): ``make test-slow``. The normal suite
covers the leader kill at handler level in ``tests/backends/test_amqp_cluster.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cluster_faults_lose_nothing(tmp_path: Path) -> None:
    """Quorum leader killed -9 under two handlers and two collectors (18), rolling restart of
    the three nodes (19), the handler's node stopped (20): exit status 0 means no record lost
    and none stored twice, and each row says so."""
    report = tmp_path / "reliability.md"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.faults", "--quick", "--only", "18,19,20",
         "--write", str(report)],
        capture_output=True,
        check=False,
        text=True,
        timeout=590,
        cwd=str(ROOT),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = report.read_text().split("## How each scenario is measured")[0]
    rows = [
        line for line in figures.splitlines() if line.startswith(("| 18 |", "| 19 |", "| 20 |"))
    ]
    assert len(rows) == 3
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert (cells[5], cells[6], cells[-1]) == ("0", "0", "met")
