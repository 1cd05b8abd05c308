"""The README's commands and snippets work as written (against the private brokers).

`make test` itself is what runs this file, so it is the one command not re-run here.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block(lang: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)
    assert len(blocks) == 1, f"expected one {lang} block in README.md"
    return blocks[0]


def test_make_targets_exist() -> None:
    """The two commands the README names are Makefile targets, and CI runs `make test`."""
    commands = re.findall(r"^make (\w+)", _block("sh"), flags=re.M)
    assert commands == ["demo", "test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in commands:
        assert re.search(rf"^{target}:", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_demo_shows_the_summary(tmp_path: Path) -> None:
    """`make demo`'s script collects every record of every worker and prints the summary."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "demo.py"),
            "--out",
            str(tmp_path / "demo"),
            "--workers",
            "3",
            "--records",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"NO_COLOR": "1", "PATH": ""},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Collected 300 of 300 records" in result.stdout
    assert "duplicates: 0" in result.stdout
    assert "KeyError" in result.stdout  # the last errors are shown with their tracebacks


def test_handler_quickstart(rabbitmq, queue_name, tmp_path: Path, monkeypatch) -> None:
    """The dictConfig snippet runs unchanged except for the broker addresses, and its record
    arrives in the queue with the static and extra fields."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # the default spool location
    amqp = f"{rabbitmq.amqp_url}?queue={queue_name}&routing_key={queue_name}"
    stomp = f"{rabbitmq.stomp_url}/queue/{queue_name}-stomp"
    code = (
        _block("python")
        .replace("amqp://guest:guest@localhost/", amqp)
        .replace("stomp://localhost:61613/queue/logs", stomp)
    )
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        exec(compile(code, "README.md", "exec"), {})
        handler = next(h for h in root.handlers if type(h).__name__ == "MQHandler")
        handler.flush()
        wait_until(lambda: rabbitmq.queue_depth(queue_name) == 1, timeout=20)
    finally:
        for h in root.handlers[:]:
            if h not in saved[0]:
                root.removeHandler(h)
                h.close()
        root.setLevel(saved[1])
    with rabbitmq.amqp_channel() as channel:
        _, _, body = channel.basic_get(queue_name, auto_ack=True)
    doc = json.loads(body)
    assert doc["message"] == "invoice sent"
    assert doc["invoice"] == 42
    assert doc["service"]["name"] == "billing"
    assert doc["site"] == "CERN"


@pytest.mark.parametrize("check", ["mqlogging", "module"])
def test_collector_quickstart_validates(tmp_path: Path, check: str) -> None:
    """The collector TOML snippet is a valid configuration (`collect --check` exits 0)."""
    config = tmp_path / "collector.toml"
    config.write_text(_block("toml"))
    cmd = (
        [str(Path(sys.executable).parent / "mqlogging")]
        if check == "mqlogging"
        else [sys.executable, "-m", "mqlogging.collector"]
    )
    result = subprocess.run(
        [*cmd, "--config", str(config), "--check"]
        if check == "module"
        else [*cmd, "collect", "--config", str(config), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_install_lines_work_from_a_clone() -> None:
    """mqlogging is not on PyPI: the README installs from the checkout (`pip install '.[...]'`),
    names only extras that pyproject.toml defines, and mentions the registry name only as the
    form for a future release (issue #11, defect 19)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                 ["optional-dependencies"])  # fmt: skip
    specs = re.findall(r"pip install '([^']+)'", README)
    assert any(spec.startswith(".[") for spec in specs), specs
    for spec in specs:
        name, _, rest = spec.partition("[")
        assert set(rest.rstrip("]").split(",")) <= extras, spec
        if name != ".":
            line = next(x for x in README.splitlines() if spec in x)
            assert "once a release exists" in line, line
