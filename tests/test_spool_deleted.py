"""The spool writer and reader when the directory, or a segment, is deleted under them (review 7,
defect D2): counted, never silent, never a crash. The handler-level tests (drop markers, audit,
``local://``) are in tests/handlers/test_spool_deleted.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from harness.brokers import NoidaES
from harness.collector import dataset_for
from harness.helpers import unique_name
from mqlogging._types import Message
from mqlogging.backends.elasticsearch import ElasticsearchProducer
from mqlogging.spool import Spool, SpoolReader, bind_destination, dropped_totals


def _bodies(first: int, n: int) -> list[bytes]:
    return [json.dumps({"n": i}).encode() for i in range(first, first + n)]


def _numbers(directory: Path) -> list[int]:
    """The ``n`` of every record a fresh reader finds in ``directory``, in order."""
    with SpoolReader(str(directory)) as reader:
        return [json.loads(r.body)["n"] for r in reader.read(10_000)]


def test_open_segment_deleted_counts_exactly_what_no_reader_confirmed(tmp_path: Path) -> None:
    """Write-ahead shape: 100 records appended, a companion reader shipped (committed) the
    first 30; the directory is deleted. The next append counts the other 70 as ``deleted``,
    gives exactly those lines to ``drop_hook``, re-creates the directory with its
    ``DESTINATION`` binding, and stores the new batch there (append returns its length)."""
    directory = tmp_path / "spool"
    spool = Spool(directory)
    bind_destination(str(directory), "amqp://host/queue")
    announced: list[tuple[list[bytes], str]] = []
    spool.drop_hook = lambda lines, reason: announced.append((lines, reason))
    spool.append(_bodies(0, 100))
    reader = spool.reader()
    reader.commit(reader.read(30))
    shutil.rmtree(directory)
    assert spool.append(_bodies(100, 5)) == 5
    reader.close()
    assert spool.stats().dropped == {"deleted": 70}
    assert dropped_totals(str(directory)) == {"deleted": 70}
    [(lines, reason)] = announced
    assert reason == "deleted"
    assert [json.loads(line)["n"] for line in lines] == list(range(30, 100))
    assert (directory / "DESTINATION").read_text() == "amqp://host/queue\n"
    spool.close()
    assert _numbers(directory) == list(range(100, 105))


def test_open_segment_deleted_before_a_seal_is_counted_and_seal_does_not_raise(
    tmp_path: Path,
) -> None:
    """Memory-mode shape (records spooled while the broker is down, sealed before replay):
    the directory is deleted, then ``seal()``: the 50 records are counted as ``deleted``,
    seal() and close() do not raise, and the spool keeps working in the re-created
    directory."""
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.append(_bodies(0, 50))
    shutil.rmtree(directory)
    spool.seal()
    assert spool.stats().dropped == {"deleted": 50}
    assert spool.append(_bodies(50, 1)) == 1
    spool.close()
    assert _numbers(directory) == [50]


def test_directory_deleted_with_no_open_segment_loses_no_new_record(tmp_path: Path) -> None:
    """The directory is deleted while this writer has no open segment (its records sealed):
    the next append re-creates it instead of failing (a ``SpoolError`` would make the
    handler drop the batch). The sealed segment's records went with it; their count is not
    knowable once the names are gone, so none is invented."""
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.append(_bodies(0, 10))
    spool.seal()
    shutil.rmtree(directory)
    assert spool.append(_bodies(10, 3)) == 3
    spool.close()
    assert _numbers(directory) == [10, 11, 12]
    assert spool.stats().dropped == {}


def test_a_batch_is_not_reported_stored_into_a_deleted_segment(tmp_path: Path) -> None:
    """Only the segment file is deleted (not the directory), between two appends: the
    second batch is stored in a new segment and the first counted; nothing of the second
    batch is counted and a fresh reader finds it."""
    directory = tmp_path / "spool"
    spool = Spool(directory)
    spool.append(_bodies(0, 4))
    for name in os.listdir(directory):
        if name.endswith(".open"):
            os.unlink(directory / name)
    assert spool.append(_bodies(4, 2)) == 2
    spool.close()
    assert _numbers(directory) == [4, 5]
    assert spool.stats().dropped == {"deleted": 4}


def test_drop_counts_do_not_go_back_when_the_journal_is_deleted(tmp_path: Path) -> None:
    """``dropped.log`` is deleted with the directory: the counts it held (3 rejected by a
    consumer, seen by stats(); 2 refused by the bounds, journaled by this writer) stay in
    :meth:`Spool.stats`, beside the new ``deleted`` count, so the handler's counters never go
    back."""
    directory = tmp_path / "spool"
    spool = Spool(directory, max_bytes=2048, segment_bytes=1024, overflow="drop_newest")
    spool.append(_bodies(0, 10))
    assert spool.append([b'{"pad": "' + b"x" * 3000 + b'"}'] * 2) == 0  # overflow: 2
    reader = spool.reader()
    reader.reject(reader.read(3))
    assert spool.stats().dropped == {"overflow": 2, "rejected": 3}
    shutil.rmtree(directory)
    spool.append(_bodies(10, 1))
    reader.close()
    spool.close()
    assert spool.stats().dropped == {"overflow": 2, "rejected": 3, "deleted": 7}


def test_sealed_segments_deleted_before_replay_do_not_stop_the_reader(tmp_path: Path) -> None:
    """Sealed segments deleted by hand before (and while) a reader replays: the reader skips
    what is gone without raising, ships what is left, and reads the directory again once it
    is re-created; a reader of a directory deleted outright reads nothing, no exception."""
    directory = tmp_path / "spool"
    spool = Spool(directory)
    for i in range(6):
        spool.append(_bodies(i, 1))
        spool.seal()  # one record per segment
    spool.close()
    names = sorted(n for n in os.listdir(directory) if n.endswith(".jsonl"))
    with SpoolReader(str(directory)) as reader:
        first = reader.read(1)
        os.unlink(directory / names[0])  # claimed and open in the reader: still readable
        os.unlink(directory / names[2])  # not claimed yet: gone
        rest = reader.read(100)
        reader.commit(first + rest)
        assert [json.loads(r.body)["n"] for r in first + rest] == [0, 1, 3, 4, 5]
        shutil.rmtree(directory)
        assert reader.read(100) == []
        Spool(directory).append(_bodies(6, 1))
        assert [json.loads(r.body)["n"] for r in reader.read(100)] == [6]


def test_rejected_spool_deleted_counts_the_rejected_record_it_held(
    elasticsearch: NoidaES, tmp_path: Path
) -> None:
    """The Elasticsearch endpoint's ``rejected=`` spool (the same writer as the collector's
    dead letters) is deleted after it kept one rejected record: the next rejected record is
    kept in the re-created directory, and the one deleted with it is counted there
    (``dropped.log``: ``deleted``), so ``mqlogging audit --dead-letters`` and the spool stats
    explain it."""
    dataset = dataset_for(unique_name("spooldel"))
    rejected = tmp_path / "rejected"
    netloc = elasticsearch.url.split("://", 1)[1].rstrip("/")
    url = f"elasticsearch+http://{netloc}/?dataset={dataset}&rejected={rejected}"
    body = {"@timestamp": "2026-01-01T00:00:00Z", "size": 1}
    bad = json.dumps({**body, "size": {"x": 1}}).encode()
    with ElasticsearchProducer(url) as producer:
        producer.endpoint.prepare_local()
        producer.publish_batch([Message("typed", json.dumps(body).encode())])
        producer.publish_batch([Message("bad-1", bad)])
        shutil.rmtree(rejected)
        producer.publish_batch([Message("bad-2", bad)])
        assert producer.stats()["rejected"] == 2
    with SpoolReader(str(rejected)) as reader:
        kept = [json.loads(r.body)["record_id"] for r in reader.read(10)]
    assert kept == ["bad-2"]
    assert dropped_totals(str(rejected)) == {"deleted": 1}


def test_companion_reader_after_the_directory_is_deleted(tmp_path: Path) -> None:
    """Review 10, D3: records 1, 2 appended; the companion reader reads 1 and confirms it; the
    directory is deleted; record 3 is appended (the writer notices, counts 2 as deleted, writes
    3 again). The reader, which still holds the unlinked segment open, then delivers every
    record at most once, and a record counted as deleted is not also delivered: each record
    is either delivered or counted, never both, never neither."""
    directory = tmp_path / "spool"
    spool = Spool(directory)
    announced: list[int] = []
    spool.drop_hook = lambda lines, _reason: announced.extend(
        json.loads(line)["i"] for line in lines if line
    )
    reader = spool.reader()
    spool.append([b'{"i":1}', b'{"i":2}'])
    first = reader.read(1)
    reader.commit(first)
    shutil.rmtree(directory)
    spool.append([b'{"i":3}'])
    delivered = [json.loads(r.body)["i"] for r in first]
    for _ in range(3):
        records = reader.read(10)
        delivered += [json.loads(r.body)["i"] for r in records]
        reader.commit(records)
    spool.close()
    reader.close()
    assert delivered == [1, 3]
    assert announced == [2]
    assert spool.stats().dropped == {"deleted": 1}


def test_records_in_flight_when_the_directory_is_deleted_are_counted_and_kept(
    tmp_path: Path,
) -> None:
    """Records 1, 2, 3 appended; the companion reader hands out 1 (not confirmed: in flight);
    the directory is deleted; record 4 is appended. Record 1 is counted as deleted (the
    documented safe side: its reader may never confirm it) *and* still readable after a
    rewind (the unlinked file is cut after it, not before); 2 and 3 are counted and never
    delivered; 4 is delivered once."""
    directory = tmp_path / "spool"
    spool = Spool(directory)
    announced: list[int] = []
    spool.drop_hook = lambda lines, _reason: announced.extend(
        json.loads(line)["n"] for line in lines if line
    )
    reader = spool.reader()
    spool.append(_bodies(1, 3))
    assert [json.loads(r.body)["n"] for r in reader.read(1)] == [1]
    shutil.rmtree(directory)
    spool.append(_bodies(4, 1))
    reader.rewind()
    delivered: list[int] = []
    for _ in range(3):
        records = reader.read(10)
        delivered += [json.loads(r.body)["n"] for r in records]
        reader.commit(records)
    spool.close()
    reader.close()
    assert delivered == [1, 4]
    assert announced == [1, 2, 3]
