"""Review 9 (outside review of the sender's spool/memory/close paths): reproductions of the
defects found, each ``xfail(strict=True)`` until fixed. Real RabbitMQ; the spool's disk is a
tiny tmpfs that really fills up (needs root: skipped otherwise)."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.brokers import RabbitMQ
from harness.drain import drain_amqp, is_marker
from harness.helpers import wait_until
from harness.proxy import TcpProxy
from mqlogging.handlers import MQHandler


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, so the spool's disk can really fill up (needs root; skipped otherwise)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def _fill(fs: Path) -> None:
    """Take every free byte of ``fs``."""
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={fs / 'filler'}", "bs=4k"], capture_output=True, check=False
    )


@pytest.mark.xfail(
    strict=True,
    reason="review 9, R1: a full disk makes the replay of the writer's open segment loop "
    "(ack write fails, the claim is released when caught up, progress is lost): every "
    "record is published again and again",
)
def test_a_full_disk_does_not_replay_the_spool_over_and_over(
    rabbitmq: RabbitMQ, queue_name: str, tiny_fs: Path, app_logger: logging.Logger
) -> None:
    """Broker unreachable: 500 records go to the spool (the writer's open segment). Then the
    disk fills up completely and the broker comes back. Replaying is at-least-once, so a
    record may arrive twice after the failure, but not more: at most 2 copies of each. Before
    a fix, every ~0.5 s the whole segment was published again (each record ~10 times in 5 s),
    for as long as the disk stayed full."""
    proxy = TcpProxy(rabbitmq.host, rabbitmq.amqp_port)  # not started: refused
    url = f"amqp://guest:guest@{proxy.host}:{proxy.port}/?exchange=&queue={queue_name}"
    handler = MQHandler(url, spool=tiny_fs / "spool", close_timeout=2, retry_max=0.2)
    app_logger.addHandler(handler)
    n = 500
    for i in range(n):
        app_logger.info("r %d", i)
    wait_until(lambda: handler.stats()["spooled"] == n, timeout=10)
    _fill(tiny_fs)
    proxy.start()
    try:
        handler.flush(4)
        (tiny_fs / "filler").unlink()
        handler.close()
        docs = drain_amqp(rabbitmq, queue_name, n, timeout=20, idle=1.0)
    finally:
        proxy.cut()
    records = [d for d in docs if not is_marker(d)]
    assert len({d["event"]["id"] for d in records}) == n
    assert len(records) <= 2 * n, f"{len(records)} copies of {n} records"
