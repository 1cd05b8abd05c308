"""The ``local://`` backend: a spool directory as a queue, through the transport interface."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from harness.helpers import wait_until
from mqlogging._ids import new_id
from mqlogging._types import Message
from mqlogging.backends import open_consumer, open_producer
from mqlogging.backends.base import TapOptions
from mqlogging.backends.endpoints import Endpoint
from mqlogging.backends.local import LocalConsumer, LocalProducer, LocalTap
from mqlogging.errors import ConfigurationError, ConnectError, NotConfirmed

CTX = multiprocessing.get_context("fork")


def ecs(n: int) -> Message:
    rid = new_id()
    doc = {"@timestamp": "2026-01-01T00:00:00.000000Z", "message": f"m{n}", "n": n,
           "event": {"id": rid}, "mqlogging": {"schema": "ecs"}}  # fmt: skip
    return Message(rid, json.dumps(doc).encode())


def _publish_and_linger(url: str, count: int) -> None:
    producer = open_producer(url)
    producer.publish_batch([ecs(n) for n in range(count)])
    os.kill(os.getpid(), signal.SIGSTOP)  # alive, never writes or closes again


class TestLocalBackend:
    def test_round_trip_with_ids(self, tmp_path: Path) -> None:
        """Published messages come back in order, with the body's event.id as delivery id;
        acked ones are gone and the directory empties once the producer closed."""
        url = f"local://{tmp_path}/q?segment_bytes=8K&fsync=always"
        messages = [ecs(n) for n in range(100)]
        with open_producer(url) as producer:
            assert isinstance(producer, LocalProducer)
            producer.publish_batch(messages[:60])
            producer.publish_batch(messages[60:])
        with open_consumer(url) as consumer:
            assert isinstance(consumer, LocalConsumer)
            got = []
            while batch := consumer.fetch(30, timeout=0.2):
                got.extend(batch)
                consumer.ack(batch)
        assert [m.id for m in messages] == [d.id for d in got]
        assert [m.body for m in messages] == [d.body for d in got]
        assert [p for p in (tmp_path / "q").iterdir() if p.suffix in (".jsonl", ".open")] == []

    def test_visible_without_further_writes(self, tmp_path: Path) -> None:
        """A record published by a live producer that then goes silent (stopped, not closed)
        is fetched within ~1 s: consumers read the live open segment."""
        url = f"local://{tmp_path}"
        proc = CTX.Process(target=_publish_and_linger, args=(url, 5))
        proc.start()
        try:
            with open_consumer(url) as consumer:
                got: list[object] = []
                wait_until(lambda: got.extend(consumer.fetch(10, timeout=0.1)) or len(got) == 5,
                           timeout=1.5, message="5 records from a live producer")  # fmt: skip
                consumer.ack(got)  # type: ignore[arg-type]
                assert consumer.fetch(10, timeout=0.1) == []
            open_segments = [p for p in tmp_path.iterdir() if p.suffix == ".open"]
            assert len(open_segments) == 1  # the live producer's segment was not deleted
        finally:
            proc.kill()
            proc.join(10)

    def test_out_of_order_acks_and_requeue(self, tmp_path: Path) -> None:
        """Acks in any order commit the contiguous prefix; nack(requeue) redelivers; after a
        consumer restart everything after the first unacked record comes back (at-least-once:
        acks beyond a gap are not durable), nothing before it."""
        url = f"local://{tmp_path}"
        with open_producer(url) as producer:
            producer.publish_batch([ecs(n) for n in range(10)])
        consumer = open_consumer(url)
        batch = consumer.fetch(10, timeout=1)
        consumer.ack(batch[7:])
        consumer.ack(batch[:3])
        consumer.nack(batch[5:7])
        again = consumer.fetch(10, timeout=1)
        assert [d.id for d in batch[5:7]] == [d.id for d in again]
        assert all(d.redelivered for d in again)
        consumer.ack(again)
        consumer.close()  # 3 and 4 were never acked
        with open_consumer(url) as consumer:
            rest = consumer.fetch(10, timeout=0.5)
            assert [d.id for d in batch[3:]] == [d.id for d in rest]
            consumer.nack(rest, requeue=False)
            assert consumer.fetch(10, timeout=0.2) == []

    def test_line_without_id_gets_a_stable_id(self, tmp_path: Path) -> None:
        """Bodies without a record id of ours get <segment>:<offset>, the same on every
        delivery (another producer's ``id`` is a user field); a record of ours keeps its id."""
        url = f"local://{tmp_path}"
        ours = b'{"id": "c", "mqlogging": {"schema": "flat"}}'
        with open_producer(url) as producer:
            producer.publish_batch(
                [
                    Message("a", b'{"msg": "no id"}'),
                    Message("b", b'{"id": "b"}'),
                    Message("c", ours),
                ]
            )
        with open_consumer(url) as consumer:
            first = consumer.fetch(10, timeout=1)
            consumer.nack(first)
            second = consumer.fetch(10, timeout=1)
        assert [d.id for d in first] == [d.id for d in second]
        assert first[0].id.endswith(":0")
        assert first[1].id.rsplit(":", 1)[0] == first[0].id.rsplit(":", 1)[0]
        assert first[2].id == "c"

    def test_bad_options_fail_at_construction(self, tmp_path: Path) -> None:
        """Spool options in the URL are validated when the producer/consumer is created."""
        for query in ("max_bytes=huge", "fsync=maybe", "overflow=explode", "max_age=-1"):
            with pytest.raises(ConfigurationError, match="local://"):
                open_producer(f"local://{tmp_path}?{query}")
            with pytest.raises(ConfigurationError, match="local://"):
                open_consumer(f"local://{tmp_path}?{query}")

    def test_full_spool_with_refuse_is_not_confirmed(self, tmp_path: Path) -> None:
        """overflow=refuse: publish_batch raises NotConfirmed naming the endpoint."""
        url = f"local://{tmp_path}?segment_bytes=4K&max_bytes=8K&overflow=refuse"
        with open_producer(url) as producer:
            producer.publish_batch([ecs(n) for n in range(40)])  # ~5K of 8K
            with pytest.raises(NotConfirmed, match=r"full.*local://"):
                producer.publish_batch([ecs(n) for n in range(40)])


def _tap_until(tap: LocalTap, wanted: int, timeout: float = 10.0) -> list[bytes]:
    """Poll ``tap`` until it returned ``wanted`` bodies (or ``timeout`` passed)."""
    got: list[bytes] = []

    def enough() -> bool:
        got.extend(tap.poll(0.05))
        return len(got) >= wanted

    wait_until(enough, timeout=timeout)
    return got


def _side_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".ack", ".lock"))


class TestLocalTap:
    def test_shows_records_written_after_it_opened_only(self, tmp_path: Path) -> None:
        """Without backlog the tap shows what is published after it opened, in order, across
        a seal (the producer closing renames the segment under the tap) and a new segment."""
        url = f"local://{tmp_path}"
        with open_producer(url) as producer:
            producer.publish_batch([ecs(n) for n in range(5)])  # before the tap: not shown
            with LocalTap(Endpoint.from_url(url), TapOptions()) as tap:
                assert tap.poll(0) == []
                producer.publish_batch([ecs(n) for n in range(5, 8)])
                producer.close()  # seals the segment the tap follows
                with open_producer(url) as later:
                    later.publish_batch([ecs(n) for n in range(8, 10)])
                got = _tap_until(tap, 5)
        assert [json.loads(b)["n"] for b in got] == [5, 6, 7, 8, 9]

    def test_backlog_shows_unconsumed_records_first(self, tmp_path: Path) -> None:
        """With backlog the tap first shows the records no consumer committed yet (not the
        committed ones), then new ones."""
        url = f"local://{tmp_path}"
        with open_producer(url) as producer:
            producer.publish_batch([ecs(n) for n in range(10)])
            with open_consumer(url) as consumer:
                consumer.ack(consumer.fetch(4, timeout=1))  # 0..3 consumed and committed
                with LocalTap(Endpoint.from_url(url), TapOptions(backlog=True)) as tap:
                    producer.publish_batch([ecs(10)])
                    got = _tap_until(tap, 7)
        assert [json.loads(b)["n"] for b in got] == list(range(4, 11))

    def test_following_acknowledges_nothing(self, tmp_path: Path) -> None:
        """The tap takes no claim and writes no progress: no .ack or .lock file appears, and a
        consumer afterwards still gets every record the tap showed."""
        url = f"local://{tmp_path}"
        with LocalTap(Endpoint.from_url(url), TapOptions(backlog=True)) as tap:
            with open_producer(url) as producer:
                producer.publish_batch([ecs(n) for n in range(20)])
            assert len(_tap_until(tap, 20)) == 20
            assert _side_files(tmp_path) == []
        with open_consumer(url) as consumer:
            got = []
            while batch := consumer.fetch(50, timeout=0.2):
                got.extend(batch)
                consumer.ack(batch)
        assert [json.loads(d.body)["n"] for d in got] == list(range(20))

    def test_missing_directory_is_a_configuration_error(self, tmp_path: Path) -> None:
        """A local:// path that does not exist is refused in one line naming the path."""
        with pytest.raises(ConfigurationError, match="does not exist"):
            LocalTap(Endpoint.from_url(f"local://{tmp_path}/nope"), TapOptions())

    def test_unreadable_directory_is_a_lost_connection(self, tmp_path: Path) -> None:
        """A spool directory that disappears while tailed makes poll() raise ConnectError
        (tail reports it and retries), not a raw OSError."""
        spool = tmp_path / "spool"
        spool.mkdir()
        tap = LocalTap(Endpoint.from_url(f"local://{spool}"), TapOptions())
        spool.rmdir()
        with pytest.raises(ConnectError, match="cannot list spool directory"):
            tap.poll(0)
        tap.close()
