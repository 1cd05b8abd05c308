"""``mqlogging spool inspect | export | replay``: offline tools for a handler's spool."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from harness.brokers import RabbitMQ
from harness.drain import amqp_url, drain_amqp, seqs
from harness.helpers import free_port
from mqlogging.cli import main
from mqlogging.handlers import MQHandler
from mqlogging.spool import Spool, SpoolReader

N = 600


def _refused() -> str:
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/?exchange=&queue=q"


@pytest.fixture
def filled_spool(tmp_path: Path) -> Path:
    """A spool written by a handler whose broker was down: N records and one corrupt line."""
    spool = tmp_path / "spool"
    handler = MQHandler(_refused(), spool=str(spool), retry_max=0.05, close_timeout=1)
    logger = logging.getLogger(f"cli.{tmp_path.name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    for i in range(N):
        logger.info("record %d", i, extra={"seq": i})
    logger.removeHandler(handler)
    handler.close()
    with Spool(spool) as extra:
        extra.append([b"this is not json"])
    return spool


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqlogging", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_inspect(filled_spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """inspect reports records, bytes, oldest/newest timestamps and corrupt lines, and changes
    nothing in the directory."""
    before = sorted(p.name for p in filled_spool.iterdir())
    assert main(["spool", "inspect", "--json", str(filled_spool)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["records"], summary["corrupt_lines"]) == (N, 1)
    assert summary["bytes"] > 0
    assert summary["oldest"] <= summary["newest"]
    assert main(["spool", "inspect", str(filled_spool)]) == 0
    text = capsys.readouterr().out
    assert f"records        {N}" in text
    assert before == sorted(p.name for p in filled_spool.iterdir())


def test_export(filled_spool: Path) -> None:
    """export writes every readable record as JSON lines on stdout, in spool order."""
    result = _cli("spool", "export", str(filled_spool))
    assert result.returncode == 0, result.stderr
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert list(range(N)) == [d["seq"] for d in docs]
    assert f"exported {N} records" in result.stderr


def test_replay_to_broker(filled_spool: Path, rabbitmq: RabbitMQ, queue_name: str) -> None:
    """replay publishes every record in order with confirmation, shows progress on stderr and
    leaves the spool empty (segments deleted once confirmed)."""
    result = _cli("spool", "replay", str(filled_spool), "--to", amqp_url(rabbitmq, queue_name))
    assert result.returncode == 0, result.stderr
    assert "replay:" in result.stderr
    assert f"replayed {N} records" in result.stderr
    assert "guest:guest" not in result.stderr
    assert list(range(N)) == seqs(drain_amqp(rabbitmq, queue_name, N))
    assert not [p for p in filled_spool.iterdir() if p.suffix in (".jsonl", ".open")]


def test_replay_resumes_after_interruption(
    filled_spool: Path, rabbitmq: RabbitMQ, queue_name: str
) -> None:
    """An interrupted replay (the first 200 records confirmed and committed) resumes: the next
    replay sends only the rest."""
    with SpoolReader(filled_spool) as reader:
        reader.commit(reader.read(200))
    result = _cli("spool", "replay", str(filled_spool), "--to", amqp_url(rabbitmq, queue_name))
    assert result.returncode == 0, result.stderr
    assert list(range(200, N)) == seqs(drain_amqp(rabbitmq, queue_name, N - 200))


def test_replay_says_when_a_running_process_holds_records(
    filled_spool: Path, rabbitmq: RabbitMQ, queue_name: str
) -> None:
    """While another process holds the claim on the spool's segments (a handler still
    sending, or still exiting), replay sends nothing of them and says that they are still
    there and why, instead of a bare "replayed 0 records"; once the claim is gone, a second
    replay sends them all."""
    url = amqp_url(rabbitmq, queue_name)
    with SpoolReader(filled_spool) as holder:
        assert holder.read(1)  # claims the segment, commits nothing
        result = _cli("spool", "replay", str(filled_spool), "--to", url, "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"note: {N} records are still in the spool" in result.stderr
    result = _cli("spool", "replay", str(filled_spool), "--to", url, "--quiet")
    assert f"replayed {N} records" in result.stderr
    assert "note:" not in result.stderr
    assert list(range(N)) == seqs(drain_amqp(rabbitmq, queue_name, N))


def test_replay_failure_exit_code_and_nothing_deleted(filled_spool: Path) -> None:
    """replay to an unreachable broker exits non-zero with one error line and deletes
    nothing."""
    result = _cli("spool", "replay", str(filled_spool), "--to", _refused(), "--quiet")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("mqlogging: error: replay to amqp://guest:***@")
    assert json.loads(_cli("spool", "inspect", "--json", str(filled_spool)).stdout)["records"] == N


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    """A directory that does not exist is a one-line error and exit code 2."""
    result = _cli("spool", "inspect", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


LANE_N = 50


@pytest.fixture
def lane_root(tmp_path: Path) -> Path:
    """A ``strategy="all"`` spool root: both brokers refused, so each of the two per-endpoint
    spools below it holds a copy of the LANE_N records; the root holds no segment itself."""
    root = tmp_path / "spool"
    urls = [f"amqp://guest:guest@127.0.0.1:{free_port()}/?exchange=&queue=q{i}" for i in (1, 2)]
    handler = MQHandler(urls, strategy="all", spool=str(root), retry_max=0.05, close_timeout=1)
    logger = logging.getLogger(f"cli.lanes.{tmp_path.name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    for i in range(LANE_N):
        logger.info("record %d", i, extra={"seq": i})
    logger.removeHandler(handler)
    handler.close()
    return root


def _lanes(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_replay_of_a_lane_root_is_refused_naming_its_lanes(
    lane_root: Path, rabbitmq: RabbitMQ, queue_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """replay and export of a ``strategy="all"`` root (which holds no record itself) refuse
    with one line naming the lane directories and exit 2, shipping and deleting nothing
    (they used to answer "replayed 0 records", exit 0); replaying each named lane then
    delivers every record of each lane: LANE_N records twice, nothing lost or duplicated."""
    lanes = _lanes(lane_root)
    assert len(lanes) == 2
    url = amqp_url(rabbitmq, queue_name)
    for action in (["replay", str(lane_root), "--to", url, "--quiet"], ["export", str(lane_root)]):
        capsys.readouterr()
        assert main(["spool", *action]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        [line] = err.strip().splitlines()
        assert all(str(lane) in line for lane in lanes), line
    for lane in lanes:
        assert main(["spool", "inspect", "--json", str(lane)]) == 0
        assert json.loads(capsys.readouterr().out)["records"] == LANE_N
    for lane in lanes:
        assert main(["spool", "replay", str(lane), "--to", url, "--quiet"]) == 0
    delivered = seqs(drain_amqp(rabbitmq, queue_name, 2 * LANE_N))
    assert sorted(2 * list(range(LANE_N))) == sorted(delivered)


def test_inspect_of_a_lane_root_lists_its_lanes(
    lane_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """inspect of a ``strategy="all"`` root counts no record of its own and lists the lanes,
    saying they are not counted, in text and JSON."""
    names = [lane.name for lane in _lanes(lane_root)]
    assert main(["spool", "inspect", "--json", str(lane_root)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["records"], summary["subdirectories"]) == (0, names)
    assert main(["spool", "inspect", str(lane_root)]) == 0
    text = capsys.readouterr().out
    assert f"{', '.join(names)} (not counted above" in text


def test_old_import_path_of_the_spool_tools_still_works() -> None:
    """``mqlogging.handlers.replay_spool``/``ReplayResult`` (moved to mqlogging.cli.spool) still
    resolve, to the same objects, with a DeprecationWarning naming the new place."""
    import mqlogging.handlers
    from mqlogging.cli import spool as tools

    with pytest.warns(DeprecationWarning, match="mqlogging.cli.spool.replay_spool"):
        assert mqlogging.handlers.replay_spool is tools.replay_spool
    with pytest.warns(DeprecationWarning, match="ReplayResult"):
        assert mqlogging.handlers.ReplayResult is tools.ReplayResult
    with pytest.raises(AttributeError):
        _ = mqlogging.handlers.no_such_name  # type: ignore[attr-defined]
