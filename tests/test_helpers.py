"""The test harness's own promises that the rest of the suite relies on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from harness.helpers import wait_until

ROOT = Path(__file__).resolve().parents[1]

_STARTER = """
import subprocess, sys
from harness.helpers import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                         preexec_fn=die_with_parent)
print(child.pid, flush=True)
child.wait()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone, just not reaped


def test_die_with_parent_takes_the_child_along() -> None:
    """A child started with die_with_parent is killed when its starter is SIGKILLed (what a
    timed-out `make faults` or pytest run does), instead of running on as an orphan."""
    starter = subprocess.Popen(
        [sys.executable, "-c", _STARTER], stdout=subprocess.PIPE, text=True, cwd=str(ROOT)
    )
    assert starter.stdout is not None
    child = int(starter.stdout.readline())
    assert _alive(child)
    starter.send_signal(signal.SIGKILL)
    starter.wait(10)
    wait_until(lambda: not _alive(child), timeout=10, message="the orphaned child to die")
