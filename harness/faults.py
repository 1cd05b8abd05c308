"""Reliability figures: run the pipeline through ten faults and count every record end to end.

``make faults`` (``.venv/bin/python -m harness.faults --write docs/reliability.md``) starts
private brokers (:mod:`harness.brokers`), then for each scenario runs the real pipeline::

    application ──MQHandler──> RabbitMQ ──collector process──> sink (file / noida-db / stand-in)
    (subprocess, dictConfig)                (python -m mqlogging.collector)

The application is this module run as ``python -m harness.faults app SPEC.json``: a separate
process that configures :class:`mqlogging.MQHandler` with :func:`logging.config.dictConfig` and
logs records ``extra={"seq": i}``, then waits until its handler has delivered everything (what a
long-running service does) and prints the handler's ``stats()``. The sink is read back and the
set of ``seq`` values compared with what was emitted:

- *lost* = emitted - distinct records in the sink (scenario 9: must equal the handler's drop
  counter instead of 0);
- *dup. in sink* = records stored more than once under different ids (what Elasticsearch would
  keep twice; impossible by ``_id`` construction unless a record got two ids);
- *dup. deliveries* = deliveries of a record id the sink already had (at-least-once redeliveries:
  extra lines in the file sink, 409 answers of Elasticsearch) — honest, expected after crashes;
- *audit* = ``mqlogging audit`` over the sink: unexplained gaps, announced drops, duplicates
  (the loss counter operators have; cross-checked against the runner's own count);
- *recovery* = from the end of the fault (broker up again, sink healthy...) to the moment the
  last new record reached the sink (polled every 0.1 s).

``--quick`` divides the record counts by 10 (the smoke test runs two scenarios that way);
``--only 1,5`` selects scenarios. Exit status 1 when a scenario misses its goal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.config
import mmap
import os
import platform
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.brokers import NoidaES, RabbitMQ, reserve_port
from harness.cluster import RabbitMQCluster
from harness.collector import (
    BulkStandIn,
    CollectorProcess,
    amqp_queue_url,
    dataset_for,
    write_config,
)
from harness.helpers import die_with_parent, free_port, small_filesystem, unique_name
from harness.kafka import NoidaKafka

ROOT = Path(__file__).resolve().parents[1]

APP_LOGGER = "faultapp"  # not "mqlogging.*": the handler ignores its own loggers
COMMAND = ".venv/bin/python -m harness.faults --write docs/reliability.md   (make faults)"


# =============================================================================================
# The application under test (a subprocess: ``python -m harness.faults app SPEC.json``)
# =============================================================================================


def _emit(logger: logging.Logger, first: int, count: int, rate: float, counter: Any) -> None:
    """Log ``count`` records (seq ``first``..), paced at ``rate``/s (0: as fast as possible).

    ``counter`` (an mmap the runner reads; it survives ``kill -9``) holds two numbers: records
    whose ``emit()`` returned (offset 0) and records whose ``emit()`` was entered (offset 8).
    They differ by one when the process is killed inside ``emit()``: that record may or may
    not have been stored, and no guarantee covers it.
    """
    start = time.monotonic()
    for k in range(count):
        seq = first + k
        if counter is not None:
            struct.pack_into("<Q", counter, 8, k + 1)
        logger.info("fault-run record %d", seq, extra={"seq": seq})
        if counter is not None:
            struct.pack_into("<Q", counter, 0, k + 1)
        if rate and k % 50 == 49:
            ahead = start + (k + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


def _drain(handler: Any, timeout: float) -> bool:
    """Wait until the handler holds nothing: memory queue empty, spool empty, flush confirmed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = handler.flush(min(5.0, max(0.1, deadline - time.monotonic())))
        st = handler.stats()
        if ok and st["queued"] == 0 and st["spool"]["records"] == 0:
            return True
        time.sleep(0.2)
    return False


def _worker(first: int, count: int, rate: float, shutdown: bool) -> None:
    """A forked worker: it logs through the handler it inherited and returns, like any
    ``multiprocessing`` target (no explicit flush or close unless ``shutdown``)."""
    _emit(logging.getLogger(APP_LOGGER), first, count, rate, None)
    if shutdown:
        logging.shutdown()


def _task(args: tuple[int, int]) -> int:
    """A pool task: log ``count`` records from ``first`` through the inherited handler."""
    first, count = args
    _emit(logging.getLogger(APP_LOGGER), first, count, 0, None)
    return count


def _run_pool(spec: dict[str, Any], first: int, count: int) -> None:
    """Log ``count`` records from pool workers, ``per_task`` per task, then end the pool the
    way its users do: ``with Pool() as p`` (``terminate()``: SIGTERM to every worker) or
    ``close(); join()`` (workers recycled by ``maxtasksperchild`` end with ``os._exit``)."""
    pool_spec = spec["pool"]
    per = pool_spec["per_task"]
    tasks = [(first + k, min(per, count - k)) for k in range(0, count, per)]
    if pool_spec["kind"] == "billiard":
        import billiard  # type: ignore[import-untyped]

        pool = billiard.Pool(pool_spec["processes"], maxtasksperchild=pool_spec.get("recycle"))
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        pool = ctx.Pool(pool_spec["processes"], maxtasksperchild=pool_spec.get("recycle"))
    if pool_spec.get("end") == "terminate":
        with pool:
            pool.map(_task, tasks, chunksize=1)
    else:
        pool.map(_task, tasks, chunksize=1)
        pool.close()
        pool.join()


def app_main(spec_path: str) -> int:
    import multiprocessing

    from mqlogging import MQHandler

    spec = json.loads(Path(spec_path).read_text())
    if spec.get("fsize"):  # scenario 9 without tmpfs: writes beyond the limit fail (EFBIG)
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (spec["fsize"], spec["fsize"]))
    logging.config.dictConfig(spec["logging"])
    logger = logging.getLogger(APP_LOGGER)
    handler = next(h for h in logger.handlers if isinstance(h, MQHandler))
    with open(spec["counter"], "r+b") as f:
        counter = mmap.mmap(f.fileno(), 16)
    first, count, rate = spec["first"], spec["count"], spec["rate"]
    workers = spec.get("workers", 0)
    if workers:
        # Seqs: the parent has [0, own), worker w has [own + w * per, own + (w + 1) * per).
        # The parent logs a third of its own before forking (still queued at fork time), a
        # third while the workers run, the rest after joining them.
        per = count // (workers + 1)
        own = count - per * workers
        third = own // 3
        _emit(logger, first, third, rate, None)
        ctx = multiprocessing.get_context("fork")
        procs = [
            ctx.Process(
                target=_worker,
                args=(first + own + per * w, per, rate, spec.get("worker_shutdown", False)),
            )
            for w in range(workers)
        ]
        for p in procs:
            p.start()
        _emit(logger, first + third, third, rate, None)
        for p in procs:
            p.join()
        _emit(logger, first + 2 * third, own - 2 * third, rate, None)
        struct.pack_into("<QQ", counter, 0, count, count)
    elif spec.get("pool"):
        _run_pool(spec, first, count)
        struct.pack_into("<QQ", counter, 0, count, count)
    else:
        _emit(logger, first, count, rate, counter)
    print("EMITTED", flush=True)
    if spec.get("exit") == "shutdown":
        # What an application does at exit: no waiting loop of its own, just
        # logging.shutdown() (flush + close within close_timeout), once the runner says go.
        go = Path(spec["go"])
        while not go.exists():
            time.sleep(0.05)
        began = time.monotonic()
        logging.shutdown()
        took = time.monotonic() - began
        print("STATS " + json.dumps({"shutdown_seconds": took, **handler.stats()}), flush=True)
        return 0
    drained = _drain(handler, spec.get("drain_timeout", 300.0))
    print("STATS " + json.dumps({"drained": drained, **handler.stats()}), flush=True)
    return 0


# =============================================================================================
# The runner
# =============================================================================================


@dataclass
class Row:
    number: int
    name: str
    sink: str
    emitted: int = 0
    delivered: int = 0
    lost: int = 0
    dup_sink: int = 0
    dup_deliveries: int = 0
    recovery: float | None = None
    counted_drops: int | None = None
    inversions: int | None = None  # order checked: records that arrived after a later one
    misrouted: int | None = None  # destinations checked: records in another app's queue
    audit: dict[str, Any] | None = None  # `mqlogging audit` totals over the scenario's sink
    note: str = ""
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        if self.error:
            return False
        if self.inversions or self.misrouted or not self.audit_agrees:
            return False
        if self.counted_drops is not None:  # scenario 9: every missing record was counted
            # (the counters include drop markers that could not be stored either: the audit,
            # which sees their sequence numbers too, must match them exactly)
            return self.lost <= self.counted_drops and self.dup_sink == 0
        return self.lost == 0 and self.dup_sink == 0

    @property
    def audit_agrees(self) -> bool:
        """``mqlogging audit`` over the sink finds no unexplained gap, and every drop it sees is
        one the handler counted (it cannot see records lost after a producer's last one: see
        mqlogging/audit.py; this runner's own count by ``seq`` covers those)."""
        if self.audit is None:
            return True
        allowed = self.counted_drops or 0
        return bool(self.audit["missing"] == 0 and self.audit["dropped"] == allowed)


@dataclass
class Tally:
    """What a sink holds: every delivery, by record id and by ``seq``."""

    deliveries: int = 0
    ids: set[str] = field(default_factory=set)
    seq_ids: dict[int, set[str]] = field(default_factory=dict)
    changed_at: float = 0.0  # monotonic time the last new record arrived
    order: list[int] = field(default_factory=list)  # seq of each new record, in sink order

    def add(self, seq: int, rid: str) -> None:
        self.deliveries += 1
        if rid not in self.ids:
            self.ids.add(rid)
            self.changed_at = time.monotonic()
            self.order.append(seq)
        self.seq_ids.setdefault(seq, set()).add(rid)

    def inversions(self, first: int, count: int) -> int:
        """Records of ``first``..``first+count-1`` (one emitter) that arrived after a later one."""
        top, n = -1, 0
        for seq in self.order:
            if first <= seq < first + count:
                if seq < top:
                    n += 1
                top = max(top, seq)
        return n

    @property
    def distinct(self) -> int:
        return len(self.seq_ids)

    @property
    def dup_records(self) -> int:
        """Extra copies stored under a different id: what Elasticsearch would hold twice."""
        return sum(len(ids) - 1 for ids in self.seq_ids.values())

    @property
    def dup_deliveries(self) -> int:
        return self.deliveries - len(self.ids)


def _record_id(doc: dict[str, Any]) -> str:
    from mqlogging.wire import read_meta

    return read_meta(doc).id or ""


class FileReader:
    """Follows collector file sinks (JSON lines) and tallies every line."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.offsets = dict.fromkeys(paths, 0)
        self.rest = dict.fromkeys(paths, b"")
        self.tally = Tally()

    def poll(self) -> Tally:
        for path in self.paths:
            try:
                with open(path, "rb") as f:
                    f.seek(self.offsets[path])
                    data = f.read()
            except FileNotFoundError:
                continue
            self.offsets[path] += len(data)
            *lines, self.rest[path] = (self.rest[path] + data).split(b"\n")
            for line in lines:
                if line.strip():
                    doc = json.loads(line)
                    if "seq" in doc:  # not the handler's drop markers (mqlogging.wire)
                        self.tally.add(int(doc["seq"]), _record_id(doc))
        return self.tally


class StandInReader:
    """Tallies what the fault-injecting ``_bulk`` stand-in stored (409s are redeliveries)."""

    def __init__(self, bulk: Any) -> None:
        self.bulk = bulk
        self.tally = Tally()
        self.seen = 0

    def poll(self) -> Tally:
        with self.bulk.lock:
            items = list(self.bulk.docs.items())[self.seen :]
            conflicts = self.bulk.statuses.get(409, 0)
        for rid, doc in items:
            if "seq" in doc:  # not the handler's drop markers (mqlogging.wire)
                self.tally.add(int(doc["seq"]), rid)
        self.seen += len(items)
        self.tally.deliveries = len(self.tally.ids) + conflicts
        return self.tally


class EsReader:
    """Tallies an index of the lab's noida-db, read back at most once a second (a scan)."""

    def __init__(self, url: str, index: str) -> None:
        self.url = url
        self.index = index
        self.tally = Tally()
        self._read_at = 0.0

    def poll(self) -> Tally:
        now = time.monotonic()
        if now - self._read_at >= 1.0:
            self._read_at = now
            with contextlib.suppress(Exception):  # noida-db down: keep the last count
                fresh = es_readback(self.url, self.index)
                tally = self.tally  # updated in place: the runner holds on to it
                if fresh.distinct != tally.distinct:
                    tally.changed_at = now
                tally.deliveries, tally.ids = fresh.deliveries, fresh.ids
                tally.seq_ids, tally.order = fresh.seq_ids, fresh.order
        return self.tally


def es_readback(url: str, index: str) -> Tally:
    """Every document of ``index`` in noida-db (scan), tallied by ``_id`` and ``seq``."""
    from elasticsearch import Elasticsearch, NotFoundError, helpers

    tally = Tally()
    with Elasticsearch(url, request_timeout=60) as es:
        try:
            es.indices.refresh(index=index)
            for hit in helpers.scan(es, index=index, _source=["seq"], size=5000):
                if "seq" in hit["_source"]:  # not the handler's drop markers
                    tally.add(int(hit["_source"]["seq"]), hit["_id"])
        except NotFoundError:
            pass
    return tally


def _counter_file(path: Path) -> Path:
    path.write_bytes(b"\0" * 16)
    return path


def _read_counter(path: Path, offset: int = 0) -> int:
    value: int = struct.unpack_from("<Q", path.read_bytes(), offset)[0]
    return value


class App:
    """One run of the application subprocess."""

    def __init__(self, workdir: Path, name: str, spec: dict[str, Any]) -> None:
        self.counter = _counter_file(workdir / f"{name}.counter")
        spec = {**spec, "counter": str(self.counter)}
        spec_path = workdir / f"{name}.json"
        spec_path.write_text(json.dumps(spec))
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "harness.faults", "app", str(spec_path)],
                stdout=out,
                stderr=err,
                cwd=str(ROOT),
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
                preexec_fn=die_with_parent,  # noqa: PLW1509 (one prctl call, no lock)
            )

    def emitted(self) -> int:
        """Records whose ``emit()`` returned."""
        return _read_counter(self.counter)

    def entered(self) -> int:
        """Records whose ``emit()`` was called (one more if killed inside it)."""
        return _read_counter(self.counter, 8)

    def done_emitting(self) -> bool:
        return b"EMITTED" in self.out_path.read_bytes()

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def stats(self) -> dict[str, Any]:
        for line in self.out_path.read_text().splitlines():
            if line.startswith("STATS "):
                stats: dict[str, Any] = json.loads(line[6:])
                return stats
        msg = f"the application printed no stats (exit {self.proc.returncode}): {self.stderr()}"
        raise RuntimeError(msg)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")[-2000:]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def handler_logging(endpoints: list[str], spool: Path, **options: Any) -> dict[str, Any]:
    """The dictConfig the application uses (plain keyword values, as a user would write)."""
    handler = {
        "class": "mqlogging.MQHandler",
        "endpoints": endpoints,
        "spool": str(spool),
        "static_fields": {"service": "faults"},
        "batch_size": 500,
        "close_timeout": 10.0,
        "retry_max": 2.0,
        "connect_timeout": 3.0,
        "timeout": 5.0,
        **options,
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"mq": handler},
        "loggers": {APP_LOGGER: {"handlers": ["mq"], "level": "INFO", "propagate": False}},
    }


def queue_url(broker: Any, queue: str) -> str:
    """Default exchange, routing key = the scenario's queue (declared durable)."""
    return str(amqp_queue_url(broker, queue))


class Lab:
    """The brokers shared by every scenario, started lazily, closed at the end."""

    def __init__(self, workdir: Path, quick: bool) -> None:
        self.workdir = workdir
        self.quick = quick
        self._rabbit: Any = None
        self._rabbit2: Any = None
        self._es: Any = None
        self._cluster: RabbitMQCluster | None = None
        self._kafka: Any = None

    @property
    def cluster(self) -> RabbitMQCluster:
        """The three-node RabbitMQ cluster, booted on first use, every node running."""
        if self._cluster is None:
            self._cluster = RabbitMQCluster()
        self._cluster.ensure_running()
        return self._cluster

    def scale(self, n: int) -> int:
        return max(200, n // 10) if self.quick else n

    def _running(self, attr: str, factory: Any) -> Any:
        """The broker in ``attr``, started on first use and restarted if a scenario left it down."""
        broker = getattr(self, attr)
        if broker is None:
            broker = factory()
            broker.start()
            setattr(self, attr, broker)
        broker.ensure_running()
        return broker

    @property
    def rabbit(self) -> Any:
        return self._running("_rabbit", RabbitMQ)

    @property
    def rabbit2(self) -> Any:
        return self._running("_rabbit2", RabbitMQ)

    @property
    def es(self) -> Any:
        return self._running("_es", NoidaES)

    @property
    def kafka(self) -> Any:
        return self._running("_kafka", NoidaKafka)

    def serves_es(self, url: str) -> bool:
        """True when ``url`` is the lab's noida-db (started already), not a stand-in: its
        index is what ``mqlogging audit`` reads afterwards."""
        return self._es is not None and url == self._es.url

    def close(self) -> None:
        for broker in (self._rabbit, self._rabbit2, self._es, self._cluster, self._kafka):
            if broker is not None:
                with contextlib.suppress(Exception):
                    broker.close()


class Scenario:
    """Per-scenario plumbing: a queue name, a directory, collectors, apps, the readers."""

    def __init__(self, lab: Lab, number: int) -> None:
        self.lab = lab
        self.queue = unique_name(f"faults{number}")
        self.dir = lab.workdir / f"s{number}"
        self.dir.mkdir(parents=True)
        self.collectors: list[Any] = []
        self.apps: list[App] = []
        self.readers: list[Any] = []
        self.closers: list[Callable[[], None]] = []
        # What `mqlogging audit` reads afterwards: the index if there is one, else the files.
        self.sink_files: list[Path] = []
        self.es_indices: list[tuple[str, str]] = []
        self.bulks: list[Any] = []

    # -- pieces ---------------------------------------------------------------------------------

    def file_collector(self, urls: list[str]) -> FileReader:
        """Collector ``c`` draining ``urls`` into ``c.jsonl``, and the reader that tallies it."""
        reader = FileReader([self.dir / "c.jsonl"])
        self.readers.append(reader)
        self.collector("c", urls, [self.file_sink("c")])
        return reader

    def file_sink(self, name: str) -> dict[str, Any]:
        path = self.dir / f"{name}.jsonl"
        self.sink_files.append(path)
        return {"type": "file", "path": str(path), "fsync": False, "max_bytes": 0}

    def es_sink(self, url: str) -> dict[str, Any]:
        if self.lab.serves_es(url):
            self.es_indices.append((url, self.es_index))
        return {
            "type": "elasticsearch",
            "hosts": [url],
            "dataset": dataset_for(self.queue),
            "request_timeout": 30.0,
        }

    @property
    def es_index(self) -> str:
        return f"logs-{dataset_for(self.queue)}-default"

    def collector(
        self, name: str, sources: list[str], sinks: list[dict[str, Any]], wait: bool = True
    ) -> Any:
        port = free_port()
        config = write_config(
            self.dir / f"{name}.toml",
            sources=[{"url": url, "prefetch": 2000} for url in sources],
            sinks=sinks,
            pipeline={
                "batch_max_count": 1000,
                "batch_max_wait": 0.2,
                "retry_initial": 0.2,
                "retry_max": 2.0,
            },
            collector={"shutdown_timeout": 5.0, "log_level": "info"},
            http={"listen": f"127.0.0.1:{port}"},
        )
        proc = CollectorProcess(config, port, self.dir / f"{name}.log")
        self.collectors.append(proc)
        if wait:
            proc.wait_http(timeout=60)
        return proc

    def app(self, name: str, spec: dict[str, Any]) -> App:
        app = App(self.dir, name, {"rate": 0, "drain_timeout": 300.0, **spec})
        self.apps.append(app)
        return app

    def poll(self) -> None:
        for reader in self.readers:
            reader.poll()
        for app in self.apps:
            if app.exited() and app.proc.returncode not in (0, -signal.SIGKILL):
                msg = f"application exited {app.proc.returncode}: {app.stderr()}"
                raise RuntimeError(msg)

    def until(self, predicate: Callable[[], Any], timeout: float, what: str) -> None:
        """Poll the sinks every 0.1 s until ``predicate()``; raise on the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if predicate():
                return
            if time.monotonic() >= deadline:
                msg = f"timed out after {timeout:.0f}s waiting for {what}"
                raise TimeoutError(msg)
            time.sleep(0.1)

    def settle(self, tally: Tally, expected: int, timeout: float, brokers: list[Any]) -> None:
        """Wait for ``expected`` distinct records (or the deadline: then some are lost), then
        until the queues are empty and nothing new arrived for 1.5 s (late duplicates)."""
        with contextlib.suppress(TimeoutError):
            self.until(lambda: tally.distinct >= expected, timeout, f"{expected} records")
        last = (-1, 0.0)
        deadline = time.monotonic() + 30.0

        def quiet() -> bool:
            nonlocal last
            now = time.monotonic()
            if tally.deliveries != last[0]:
                last = (tally.deliveries, now)
                return False
            idle = all(b.queue_depth(self.queue) == 0 for b in brokers if b.is_running())
            return idle and now - last[1] >= 1.5

        with contextlib.suppress(TimeoutError):
            self.until(quiet, max(0.0, deadline - time.monotonic()), "quiet sink")

    def delivered(
        self,
        app: App,
        reader: FileReader | StandInReader,
        row: Row,
        n: int,
        *,
        fault_end: float | None,
        brokers: list[Any],
    ) -> None:
        """Wait for ``app`` to deliver and exit and for the sink to settle; count into ``row``."""
        self.until(app.exited, 300, "the application to deliver and exit")
        self.settle(reader.tally, n, 120, brokers)
        _fill_row(row, reader.tally, n, fault_end)

    def audit(self) -> dict[str, Any] | None:
        """``mqlogging audit`` totals over what the scenario's sinks hold (None: no sink)."""
        from mqlogging.audit import Audit, audit_es, audit_files

        audit = Audit()
        if self.es_indices:
            for url, index in dict.fromkeys(self.es_indices):
                audit_es(audit, url, index)
        elif self.sink_files:
            audit_files(audit, [str(p) for p in self.sink_files if p.exists()])
        elif self.bulks:
            for bulk in self.bulks:
                with bulk.lock:
                    docs = list(bulk.docs.values())
                for doc in docs:
                    audit.add_document(doc)
        else:
            return None
        totals: dict[str, Any] = audit.report()["totals"]
        return totals

    def close(self) -> None:
        for app in self.apps:
            app.close()
        for proc in self.collectors:
            with contextlib.suppress(Exception):
                if proc.proc.poll() is None:
                    proc.terminate(timeout=15)
            proc.close()
        for closer in self.closers:
            with contextlib.suppress(Exception):
                closer()


def _recovery(tally: Tally, fault_end: float | None) -> float | None:
    if fault_end is None:
        return None
    return max(0.0, tally.changed_at - fault_end)


def _fill_row(row: Row, tally: Tally, emitted: int, fault_end: float | None) -> None:
    row.emitted = emitted
    row.delivered = tally.distinct
    row.lost = emitted - tally.distinct
    row.dup_sink = tally.dup_records
    row.dup_deliveries = tally.dup_deliveries
    row.recovery = _recovery(tally, fault_end)


# =============================================================================================
# Scenarios
# =============================================================================================


def s1_broker_down_at_start(lab: Lab, s: Scenario, row: Row) -> None:
    """Broker down for the first 30 s of a 50k-record run."""
    rabbit = lab.rabbit
    n = lab.scale(50_000)
    down_for = 3.0 if lab.quick else 30.0
    url = queue_url(rabbit, s.queue)
    reader = s.file_collector([url])  # declares the queue while the broker is up
    rabbit.kill()
    t0 = time.monotonic()
    app = s.app("app", {
        "logging": handler_logging([url], s.dir / "spool"),
        "first": 0, "count": n, "rate": n / (down_for + 4.0),
    })  # fmt: skip
    s.until(lambda: time.monotonic() - t0 >= down_for, down_for + 5, "the outage")
    rabbit.start()
    fault_end = time.monotonic()
    s.delivered(app, reader, row, n, fault_end=fault_end, brokers=[rabbit])
    st = app.stats()
    row.note = (
        f"broker back after {fault_end - t0:.0f} s (restart included); "
        f"{st['spooled']} records went through the spool"
    )


def s2_broker_kill_twice(lab: Lab, s: Scenario, row: Row) -> None:
    """Broker SIGKILLed twice during a 100k-record run."""
    rabbit = lab.rabbit
    n = lab.scale(100_000)
    url = queue_url(rabbit, s.queue)
    reader = s.file_collector([url])
    app = s.app("app", {
        "logging": handler_logging([url], s.dir / "spool"),
        "first": 0, "count": n, "rate": 0 if lab.quick else 4000,
    })  # fmt: skip
    fault_end = 0.0
    restarts = []
    for fraction in (0.25, 0.6):
        s.until(lambda f=fraction: app.emitted() >= n * f or app.exited(), 300, "progress")  # type: ignore[misc]
        at = app.emitted()
        rabbit.sync_definitions()  # a fresh queue's definition: see RabbitMQ.sync_definitions
        rabbit.kill()
        t = time.monotonic()
        rabbit.start()
        fault_end = time.monotonic()
        restarts.append(f"kill at {at} emitted, down {fault_end - t:.1f} s")
    s.delivered(app, reader, row, n, fault_end=fault_end, brokers=[rabbit])
    row.note = "; ".join(restarts)


def s3_failover(lab: Lab, s: Scenario, row: Row) -> None:
    """Primary of two endpoints killed mid-stream; the secondary takes the stream."""
    primary, secondary = lab.rabbit, lab.rabbit2
    n = lab.scale(30_000)
    urls = [queue_url(primary, s.queue), queue_url(secondary, s.queue)]
    reader = s.file_collector(urls)
    app = s.app("app", {
        "logging": handler_logging(urls, s.dir / "spool", strategy="failover"),
        "first": 0, "count": n, "rate": 0 if lab.quick else 3000,
    })  # fmt: skip
    s.until(lambda: app.emitted() >= n * 0.4 or app.exited(), 300, "progress")
    at = app.emitted()
    primary.sync_definitions()  # a fresh queue's definition: see RabbitMQ.sync_definitions
    primary.kill()
    killed = time.monotonic()
    before = reader.poll().distinct
    # The stream goes on through the secondary while the primary is down.
    s.until(lambda: reader.tally.distinct > before + min(1000, n // 10) or app.exited(), 60,
            "records through the secondary")  # fmt: skip
    gap = time.monotonic() - killed
    s.until(app.done_emitting, 300, "the end of the emission")
    primary.start()  # records it confirmed before dying are still in its queue
    fault_end = time.monotonic()
    s.delivered(app, reader, row, n, fault_end=fault_end, brokers=[primary, secondary])
    depth2 = secondary.queue_depth(s.queue)
    row.note = (
        f"primary killed at {at} emitted; new records flowed through the secondary "
        f"{gap:.1f} s later; primary restarted after the run (queue left: {depth2})"
    )


def s4_blackhole(lab: Lab, s: Scenario, row: Row) -> None:
    """The broker is frozen (SIGSTOP: the kernel still accepts connections, nothing answers)."""
    rabbit = lab.rabbit
    n = lab.scale(20_000)
    hold = 3.0 if lab.quick else 15.0
    url = queue_url(rabbit, s.queue)
    reader = s.file_collector([url])
    app = s.app("app", {
        "logging": handler_logging([url], s.dir / "spool"),
        "first": 0, "count": n, "rate": n / (hold + 6.0),
    })  # fmt: skip
    s.until(lambda: app.emitted() >= n * 0.2 or app.exited(), 120, "progress")
    rabbit.freeze()
    s.closers.append(rabbit.thaw)
    t = time.monotonic()
    at = app.emitted()
    s.until(lambda: time.monotonic() - t >= hold, hold + 5, "the black hole")
    emitted_during = app.emitted() - at
    rabbit.thaw()
    fault_end = time.monotonic()
    s.delivered(app, reader, row, n, fault_end=fault_end, brokers=[rabbit])
    st = app.stats()
    row.note = (
        f"broker frozen {hold:.0f} s from record {at}; the application kept logging "
        f"({emitted_during} records meanwhile); {st['spooled']} records spooled"
    )


def s5_app_kill(lab: Lab, s: Scenario, row: Row) -> None:
    """Application SIGKILLed mid-run with ``durability="spool"``, then started again."""
    rabbit = lab.rabbit
    n = lab.scale(20_000)
    url = queue_url(rabbit, s.queue)
    reader = s.file_collector([url])
    conf = handler_logging([url], s.dir / "spool", durability="spool")
    rate = 1000 if lab.quick else 2000  # throttled: the kill must land mid-run, not after
    first = s.app("run1", {"logging": conf, "first": 0, "count": n, "rate": rate})
    s.until(lambda: first.emitted() >= n // 2 or first.exited(), 120, "progress")
    if first.exited():
        msg = "the first run finished before it could be killed: lower its rate"
        raise RuntimeError(msg)
    first.kill()
    done = first.emitted()  # emit() returned for exactly these records
    entered = first.entered()  # done + 1 if killed inside emit(): that one is not promised
    second = s.app("run2", {"logging": conf, "first": entered, "count": n - entered, "rate": rate})
    fault_end = time.monotonic()
    s.until(second.exited, 300, "the second run to deliver and exit")
    s.settle(reader.tally, n - (entered - done), 120, [rabbit])
    _fill_row(row, reader.tally, n, fault_end)
    if entered > done and done not in reader.tally.seq_ids:  # killed inside emit(): not stored
        row.emitted -= 1
        row.lost -= 1
    inside = " (inside the next emit())" if entered > done else ""
    row.note = (
        f"killed after {done} records{inside}; the restarted run replayed the spool, "
        "then logged the rest"
    )


def s6_collector_kill(lab: Lab, s: Scenario, row: Row) -> None:
    """Collector SIGKILLed mid-run, restarted; Elasticsearch (noida-db) as the sink."""
    rabbit, es = lab.rabbit, lab.es
    n = lab.scale(20_000)
    url = queue_url(rabbit, s.queue)
    reader = FileReader([s.dir / "c1.jsonl", s.dir / "c2.jsonl"])
    s.readers.append(reader)
    first = s.collector("c1", [url], [s.es_sink(es.url), s.file_sink("c1")])
    app = s.app("app", {
        "logging": handler_logging([url], s.dir / "spool"),
        "first": 0, "count": n, "rate": 0 if lab.quick else 2000,
    })  # fmt: skip
    s.until(lambda: reader.tally.distinct >= n * 0.4, 300, "40 % in the sink")
    killed_at = reader.tally.distinct
    first.kill()
    s.collector("c2", [url], [s.es_sink(es.url), s.file_sink("c2")])
    fault_end = time.monotonic()
    s.until(app.exited, 300, "the application to deliver and exit")
    s.settle(reader.tally, n, 180, [rabbit])
    stored = es_readback(es.url, s.es_index)
    _fill_row(row, stored, n, fault_end)
    row.dup_deliveries = reader.tally.dup_deliveries
    row.recovery = _recovery(reader.tally, fault_end)
    row.note = (
        f"collector killed at {killed_at} records in the sink, a new one started at once; "
        f"{stored.deliveries} documents in the index"
    )


def s7_sink_errors(lab: Lab, s: Scenario, row: Row) -> None:
    """The Elasticsearch ``_bulk`` endpoint answers 429 / 503 for 20 s."""
    rabbit = lab.rabbit
    n = lab.scale(20_000)
    hold = 3.0 if lab.quick else 20.0
    window: list[float] = []  # [start, end] monotonic, set by the runner

    def fault(request: int, item: int) -> int | None:
        if item == -1 and len(window) == 1:
            return 429 if request % 2 else 503
        return None

    bulk = BulkStandIn(fault)
    bulk.__enter__()
    s.bulks.append(bulk)
    s.closers.append(lambda: bulk.__exit__(None, None, None))
    reader = StandInReader(bulk)
    s.readers.append(reader)
    url = queue_url(rabbit, s.queue)
    collector = s.collector("c", [url], [s.es_sink(bulk.url)])
    app = s.app("app", {
        "logging": handler_logging([url], s.dir / "spool"),
        "first": 0, "count": n, "rate": n / (hold + 8.0),
    })  # fmt: skip
    s.until(lambda: app.emitted() >= n * 0.15, 120, "progress")
    window.append(time.monotonic())
    s.until(lambda: time.monotonic() - window[0] >= hold, hold + 5, "the sink outage")
    window.append(time.monotonic())
    fault_end = window[1]
    s.delivered(app, reader, row, n, fault_end=fault_end, brokers=[rabbit])
    with bulk.lock:
        refused = bulk.statuses.get(429, 0) + bulk.statuses.get(503, 0)
        requests = bulk.requests
    retried = collector.metric("retried")
    row.note = (
        f"{requests} bulk requests; whole-request 429/503 during {hold:.0f} s; "
        f"{retried:.0f} record writes retried by the collector"
    )
    del refused


def s8_competing_collectors(lab: Lab, s: Scenario, row: Row) -> None:
    """Two collectors compete on one queue; one is SIGKILLed mid-run (not restarted)."""
    rabbit, es = lab.rabbit, lab.es
    n = lab.scale(20_000)
    url = queue_url(rabbit, s.queue)
    reader = FileReader([s.dir / "a.jsonl", s.dir / "b.jsonl"])
    s.readers.append(reader)
    a = s.collector("a", [url], [s.es_sink(es.url), s.file_sink("a")])
    b = s.collector("b", [url], [s.es_sink(es.url), s.file_sink("b")])
    app = s.app("app", {
        "logging": handler_logging([url], s.dir / "spool"),
        "first": 0, "count": n, "rate": 0 if lab.quick else 2000,
    })  # fmt: skip
    s.until(lambda: reader.tally.distinct >= n * 0.4, 300, "40 % in the sink")
    a_lines = FileReader([s.dir / "a.jsonl"]).poll().deliveries
    a.kill()
    fault_end = time.monotonic()
    s.until(app.exited, 300, "the application to deliver and exit")
    s.settle(reader.tally, n, 180, [rabbit])
    stored = es_readback(es.url, s.es_index)
    _fill_row(row, stored, n, fault_end)
    row.dup_deliveries = reader.tally.dup_deliveries
    row.recovery = _recovery(reader.tally, fault_end)
    row.note = (
        f"collector A killed after writing {a_lines} records; B acked {b.metric('acked'):.0f}"
    )


def s9_spool_full(lab: Lab, s: Scenario, row: Row) -> None:
    """The spool directory lives on a full 2 MB filesystem while the broker is down."""
    rabbit = lab.rabbit
    n = 10_000 if lab.quick else 20_000  # ~450 B a record: always more than 2 MB
    url = queue_url(rabbit, s.queue)
    reader = s.file_collector([url])
    with small_filesystem(s.dir / "fs", "2m") as mounted:
        fs = mounted
        options: dict[str, Any] = {"queue_size": 1000}
        if not fs:
            fs = "RLIMIT_FSIZE 2 MB"  # per file: keep segments above it so a write fails
            options["spool_options"] = {"segment_bytes": 64 * 1024 * 1024}
        rabbit.kill()
        app = s.app("app", {
            "logging": handler_logging([url], s.dir / "fs" / "spool", **options),
            "first": 0, "count": n, "rate": 0, "fsize": 2 * 1024 * 1024 if "RLIMIT" in fs else 0,
        })  # fmt: skip
        s.until(app.done_emitting, 120, "the emission")
        rabbit.start()
        fault_end = time.monotonic()
        s.until(app.exited, 300, "the application to deliver and exit")
        st = app.stats()
        dropped = int(sum(st["dropped"].values()))
        s.settle(reader.tally, n - dropped, 120, [rabbit])
    _fill_row(row, reader.tally, n, fault_end)
    row.counted_drops = dropped
    row.note = (
        f"{fs}; broker down while logging; handler counted {dropped} dropped "
        f"({', '.join(f'{k}={v}' for k, v in st['dropped'].items()) or 'none'})"
    )
    if dropped > row.lost:  # the counters (and the audit) also see the markers' own numbers
        row.note += (
            f", of which {dropped - row.lost} drop markers that the full spool could not hold "
            "either (their ranges went out in a later marker)"
        )


def s10_forked_workers(lab: Lab, s: Scenario, row: Row) -> None:
    """Four forked ``multiprocessing`` workers and their parent log concurrently."""
    rabbit = lab.rabbit
    n = lab.scale(25_000)
    url = queue_url(rabbit, s.queue)
    reader = s.file_collector([url])
    app = s.app("app", {
        "logging": handler_logging([url], s.dir / "spool"),
        "first": 0, "count": n, "rate": 0, "workers": 4,
    })  # fmt: skip
    s.until(app.exited, 300, "the application to deliver and exit")
    end = time.monotonic()
    s.settle(reader.tally, n, 30, [rabbit])
    _fill_row(row, reader.tally, n, None)
    row.recovery = None
    lag = reader.tally.changed_at - end
    row.note = (
        f"parent + 4 fork workers, {n // 5} records each; last record in the sink "
        f"{lag:+.1f} s after the parent exited"
    )


def s11_close_in_backoff(lab: Lab, s: Scenario, row: Row) -> None:
    """The outage ends while the endpoint waits out its retry backoff; the application then
    exits at once through ``logging.shutdown()``."""
    rabbit = lab.rabbit
    n = lab.scale(20_000)
    url = queue_url(rabbit, s.queue)
    reader = s.file_collector([url])
    rabbit.kill()
    go = s.dir / "go"
    conf = handler_logging([url], s.dir / "spool", retry_max=30.0, close_timeout=20.0)
    app = s.app("app", {
        "logging": conf, "first": 0, "count": n, "rate": n / 6.0,
        "exit": "shutdown", "go": str(go),
    })  # fmt: skip
    s.until(app.done_emitting, 120, "the emission")
    rabbit.start()
    fault_end = time.monotonic()
    go.touch()  # the application exits now, while its endpoint is still backing off
    s.delivered(app, reader, row, n, fault_end=fault_end, brokers=[rabbit])
    st = app.stats()
    row.note = (
        f"broker down for the whole emission (retry_max 30 s), back before exit; "
        f"logging.shutdown() took {st['shutdown_seconds']:.1f} s of its 20 s close_timeout"
    )


def s12_shared_spool_order(lab: Lab, s: Scenario, row: Row) -> None:
    """Two instances of one application share a spool directory through an outage."""
    rabbit = lab.rabbit
    n = lab.scale(20_000)  # per instance
    url = queue_url(rabbit, s.queue)
    reader = s.file_collector([url])
    rabbit.kill()
    # Small segments (many per process), so the two readers meet on segment boundaries.
    conf = handler_logging([url], s.dir / "spool", spool_options={"segment_bytes": "64K"})
    a = s.app("a", {"logging": conf, "first": 0, "count": n, "rate": n / 12.0})
    b = s.app("b", {"logging": conf, "first": n, "count": n, "rate": n / 12.0})
    s.until(lambda: a.emitted() >= n // 4 and b.emitted() >= n // 4, 120, "progress")
    rabbit.start()  # back while both still log
    fault_end = time.monotonic()
    s.until(lambda: a.exited() and b.exited(), 300, "both instances to deliver and exit")
    s.settle(reader.tally, 2 * n, 120, [rabbit])
    _fill_row(row, reader.tally, 2 * n, fault_end)
    row.inversions = reader.tally.inversions(0, n) + reader.tally.inversions(n, n)
    row.note = (
        f"two processes, {n} records each, one spool directory, broker back mid-run; "
        f"records out of emit order per process: {row.inversions}"
    )


def _pool_row(lab: Lab, s: Scenario, row: Row, pool: dict[str, Any], n: int) -> None:
    rabbit = lab.rabbit
    url = queue_url(rabbit, s.queue)
    reader = s.file_collector([url])
    app = s.app("app", {
        "logging": handler_logging([url], s.dir / "spool"),
        "first": 0, "count": n, "pool": pool,
    })  # fmt: skip
    s.delivered(app, reader, row, n, fault_end=None, brokers=[rabbit])
    row.recovery = None


def s13_pool_terminate(lab: Lab, s: Scenario, row: Row) -> None:
    """``with multiprocessing.Pool() as p: p.map(...)``: the pool's exit terminates workers."""
    n = lab.scale(20_000)
    pool = {"kind": "multiprocessing", "processes": 4, "per_task": 100, "end": "terminate"}
    _pool_row(lab, s, row, pool, n)
    row.note = f"4 workers, {n // 100} tasks of 100 records; Pool.__exit__ sends SIGTERM"


def s14_recycled_workers(lab: Lab, s: Scenario, row: Row) -> None:
    """billiard (Celery's prefork pool) workers recycled every 10 tasks, ending in os._exit."""
    n = lab.scale(20_000)
    pool = {"kind": "billiard", "processes": 2, "per_task": 10, "recycle": 10, "end": "close"}
    _pool_row(lab, s, row, pool, n)
    row.note = (
        f"billiard.Pool(2, maxtasksperchild=10): {n // 10} tasks of 10 records, "
        f"{n // 100} worker processes in all"
    )


def s15_spool_two_destinations(lab: Lab, s: Scenario, row: Row) -> None:
    """Two applications with different destinations are given one spool directory."""
    rabbit = lab.rabbit
    n = lab.scale(5_000)
    qa, qb = f"{s.queue}_a", f"{s.queue}_b"
    ua, ub = queue_url(rabbit, qa), queue_url(rabbit, qb)
    in_a = FileReader([s.dir / "a.jsonl"])
    in_b = FileReader([s.dir / "b.jsonl"])
    s.readers += [in_a, in_b]
    s.collector("a", [ua], [s.file_sink("a")])
    s.collector("b", [ub], [s.file_sink("b")])
    shared = s.dir / "spool"
    go = s.dir / "go"
    go.touch()
    rabbit.kill()  # B runs while the broker is down: its records stay in the shared spool
    b = s.app("b1", {
        "logging": handler_logging([ub], shared, close_timeout=1.0),
        "first": n, "count": n, "exit": "shutdown", "go": str(go),
    })  # fmt: skip
    s.until(b.exited, 120, "B to exit with its records spooled")
    rabbit.start()
    fault_end = time.monotonic()
    a = App(s.dir, "a1", {"logging": handler_logging([ua], shared), "first": 0, "count": n,
                          "rate": 0, "drain_timeout": 300.0})  # fmt: skip
    a.proc.wait(300)
    refused = a.proc.returncode != 0
    if refused:  # told at startup that the directory serves another destination: as advised
        s.app("a2", {"logging": handler_logging([ua], s.dir / "spool-a"), "first": 0, "count": n})
    else:
        s.apps.append(a)
    s.app("b2", {"logging": handler_logging([ub], shared), "first": 2 * n, "count": 0})
    s.until(lambda: all(x.exited() for x in s.apps), 300, "the applications to exit")
    s.settle(in_a.tally, n, 60, [rabbit])
    s.settle(in_b.tally, n, 60, [rabbit])
    a_own = sum(1 for q in in_a.tally.seq_ids if q < n)
    b_own = sum(1 for q in in_b.tally.seq_ids if n <= q < 2 * n)
    row.emitted = 2 * n
    row.delivered = a_own + b_own
    row.lost = 2 * n - row.delivered
    row.misrouted = (in_a.tally.distinct - a_own) + (in_b.tally.distinct - b_own)
    row.dup_sink = in_a.tally.dup_records + in_b.tally.dup_records
    row.dup_deliveries = in_a.tally.dup_deliveries + in_b.tally.dup_deliveries
    row.recovery = _recovery(in_b.tally, fault_end)
    first_line = a.stderr().strip().splitlines()[-1:] if refused else []
    row.note = (
        f"B left {n} records in the shared spool; A "
        + (
            f"refused the directory at startup ({first_line[0][:160]!r}) and ran with its own"
            if refused
            else "ran on it"
        )
        + f"; B's next run shipped its records; records in the other's queue: {row.misrouted}"
    )


def s16_es_failover(lab: Lab, s: Scenario, row: Row) -> None:
    """Elasticsearch (noida-db) stopped mid-stream; the handler writes to it directly with
    ``[elasticsearch, amqp]`` failover, and a collector drains the broker into the same index
    (issue #15): every record in the index exactly once (``_id`` = record id).

    The stand-in is stopped with SIGTERM (it exits within about a second, cutting the requests
    in flight), not SIGKILL: noida-db loses documents it had acknowledged when it is killed -9
    (a whole index of 1,000 created documents disappeared in a direct check), which real
    Elasticsearch does not (its translog is fsynced before a bulk request is answered). A
    SIGKILL row would measure the stand-in, not mqlogging."""
    rabbit, es = lab.rabbit, lab.es
    n = lab.scale(20_000)
    broker = queue_url(rabbit, s.queue)
    dataset = dataset_for(s.queue)
    direct = f"elasticsearch+{es.url.rstrip('/')}/?dataset={dataset}&rejected={s.dir / 'rej'}"
    reader = EsReader(es.url, s.es_index)
    s.readers.append(reader)
    s.collector("c", [broker], [s.es_sink(es.url)])
    app = s.app("app", {
        "logging": handler_logging([direct, broker], s.dir / "spool", strategy="failover"),
        "first": 0, "count": n, "rate": 0 if lab.quick else 1000,
    })  # fmt: skip
    s.until(lambda: app.emitted() >= n * 0.4 or app.exited(), 300, "40 % emitted")
    at = app.emitted()
    es.stop()
    down_at = time.monotonic()
    s.until(app.done_emitting, 300, "the end of the emission")
    s.until(lambda: time.monotonic() - down_at >= 3.0, 10, "the outage")
    es.start()
    fault_end = time.monotonic()
    s.until(app.exited, 300, "the application to deliver and exit")
    s.settle(reader.tally, n, 180, [rabbit])
    stored = es_readback(es.url, s.es_index)
    _fill_row(row, stored, n, fault_end)
    row.recovery = _recovery(reader.tally, fault_end)
    endpoints = app.stats().get("endpoints", {})
    via_broker = next(
        (int(v.get("confirmed", 0)) for k, v in endpoints.items() if k.startswith("amqp")), 0
    )
    row.note = (
        f"noida-db stopped at {at} emitted, down {fault_end - down_at:.0f} s; "
        f"{via_broker} records went through the broker and the collector; "
        f"{stored.deliveries} documents in the index"
    )


def s17_https_ingest_broker_restart(lab: Lab, s: Scenario, row: Row) -> None:
    """Pilots log over HTTPS (RFC 3820 proxy certificate) to the collector's ingest, which
    publishes with confirms to RabbitMQ; the broker is killed and restarted mid-stream."""
    from harness.pilot_pki import make_pilot_pki

    rabbit = lab.rabbit
    n = lab.scale(20_000)
    url = queue_url(rabbit, s.queue)
    reader = s.file_collector([url])  # drains the queue; declares it while the broker is up
    grid = make_pilot_pki(s.dir / "grid")
    (s.dir / "tokens").write_text("unused:unused-token-0123456789\n")
    port, http_port = reserve_port(), reserve_port()
    config = write_config(
        s.dir / "ingest.toml",
        sources=[{
            "type": "http", "listen": f"127.0.0.1:{port}", "certfile": grid.server,
            "keyfile": grid.server_key, "client_ca": grid.ca, "allow_proxy_certs": True,
            "tokens_file": str(s.dir / "tokens"), "timeout": 3.0, "retry_after": 1,
        }],
        sinks=[{"type": "broker", "url": url}],
        pipeline={"batch_max_wait": 0.05, "retry_initial": 0.2, "retry_max": 1.0,
                  "enrich": False},
        collector={"shutdown_timeout": 5.0},
        http={"listen": f"127.0.0.1:{http_port}"},
    )  # fmt: skip
    ingest = CollectorProcess(config, http_port, s.dir / "ingest.log")
    s.collectors.append(ingest)
    ingest.wait_http(timeout=60)
    https = f"https://127.0.0.1:{port}/ingest?certfile={grid.proxy}&ca_certs={grid.ca}"
    app = s.app("app", {
        "logging": handler_logging([https], s.dir / "spool"),
        "first": 0, "count": n, "rate": n / 10 if lab.quick else 2000,
    })  # fmt: skip
    s.until(lambda: app.emitted() >= n * 0.4 or app.exited(), 300, "progress")
    at = app.emitted()
    rabbit.sync_definitions()  # a fresh queue's definition: see RabbitMQ.sync_definitions
    rabbit.kill()
    t = time.monotonic()
    rabbit.start()
    fault_end = time.monotonic()
    s.delivered(app, reader, row, n, fault_end=fault_end, brokers=[rabbit])
    answered_503 = ingest.log_path.read_text(errors="replace").count("answered 503")
    st = app.stats()
    row.note = (
        f"broker killed at {at} emitted, down {fault_end - t:.1f} s; the ingest answered 503 "
        f"{answered_503} times; {st['spooled']} records went through the pilot's spool"
    )


# -- the three-node RabbitMQ cluster (issue #14) -----------------------------------------------


def _quorum_queue(cluster: RabbitMQCluster, queue: str) -> tuple[str, int]:
    """Declare ``queue`` as a quorum queue; return its URL path and the leader's index."""
    with cluster.channel() as channel:
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    return f"/?exchange=&queue={queue}&queue_type=quorum", cluster.leader(queue)


def _cluster_url(cluster: RabbitMQCluster, path: str, first: int) -> str:
    """A multi-host URL with node ``first`` first (the node the handler connects to)."""
    order = [first] + [i for i in range(len(cluster.nodes)) if i != first]
    return cluster.amqp_url(path, order=order)


def s18_quorum_leader_kill(lab: Lab, s: Scenario, row: Row) -> None:
    """Two handlers and two competing collectors; the quorum queue's leader killed -9 at 40 %."""
    cluster = lab.cluster
    n = lab.scale(20_000)
    path, leader = _quorum_queue(cluster, s.queue)
    url = _cluster_url(cluster, path, leader)  # the handlers are connected to the leader
    reader = FileReader([s.dir / "a.jsonl", s.dir / "b.jsonl"])
    s.readers.append(reader)
    s.collector("a", [_cluster_url(cluster, path, (leader + 1) % 3)], [s.file_sink("a")])
    s.collector("b", [url], [s.file_sink("b")])
    half = n // 2
    rate = 1000 if lab.quick else 2000
    apps = []
    for k in range(2):
        spec = {"logging": handler_logging([url], s.dir / f"spool{k}"),
                "first": k * half, "count": half, "rate": rate}  # fmt: skip
        apps.append(s.app(f"app{k}", spec))
    s.until(lambda: sum(a.emitted() for a in apps) >= n * 0.4, 300, "40 % emitted")
    cluster.kill(leader)
    fault_end = time.monotonic()
    s.until(lambda: all(a.exited() for a in apps), 300, "the applications to deliver and exit")
    s.settle(reader.tally, n, 120, cluster.nodes)
    _fill_row(row, reader.tally, n, fault_end)
    new_leader = cluster.leader(s.queue)
    stranded = sum(a.stats()["spool"]["records"] for a in apps)
    row.note = (
        f"leader node {leader + 1} killed at 40 % emitted; new leader node {new_leader + 1}; "
        f"records left in the handlers' spools at exit: {stranded}"
    )


def s19_rolling_restart(lab: Lab, s: Scenario, row: Row) -> None:
    """Each node of the cluster stopped and started again in turn while the application logs."""
    cluster = lab.cluster
    n = lab.scale(30_000)
    path, leader = _quorum_queue(cluster, s.queue)
    url = _cluster_url(cluster, path, leader)
    reader = s.file_collector([_cluster_url(cluster, path, (leader + 1) % 3)])
    rate = 500 if lab.quick else 1000
    app = s.app("app", {
        "logging": handler_logging([url], s.dir / "spool"),
        "first": 0, "count": n, "rate": rate,
    })  # fmt: skip
    s.until(lambda: app.emitted() >= n * 0.1, 300, "10 % emitted")
    restarts = []
    for index in range(len(cluster.nodes)):
        began = time.monotonic()
        cluster.stop(index)
        cluster.restart(index)
        restarts.append(time.monotonic() - began)
    fault_end = time.monotonic()
    s.delivered(app, reader, row, n, fault_end=fault_end, brokers=cluster.nodes)
    row.note = (
        f"nodes stopped and restarted one after another (each took "
        f"{', '.join(f'{t:.0f}' for t in restarts)} s) while logging {rate} records/s"
    )


def s20_minority_node_stopped(lab: Lab, s: Scenario, row: Row) -> None:
    """The node the handler is connected to (not the leader) is stopped: a minority of one."""
    cluster = lab.cluster
    n = lab.scale(20_000)
    path, leader = _quorum_queue(cluster, s.queue)
    victim = (leader + 1) % 3
    url = _cluster_url(cluster, path, victim)
    reader = s.file_collector([_cluster_url(cluster, path, (leader + 2) % 3)])
    app = s.app("app", {
        "logging": handler_logging([url], s.dir / "spool"),
        "first": 0, "count": n, "rate": 1000 if lab.quick else 2000,
    })  # fmt: skip
    s.until(lambda: app.emitted() >= n * 0.4, 300, "40 % emitted")
    cluster.stop(victim)
    stopped = time.monotonic()
    before = reader.poll().distinct
    s.until(lambda: reader.tally.distinct > before + min(1000, n // 10) or app.exited(), 60,
            "records through the other nodes")  # fmt: skip
    gap = time.monotonic() - stopped
    s.until(app.done_emitting, 300, "the end of the emission")
    cluster.restart(victim)
    fault_end = time.monotonic()
    s.delivered(app, reader, row, n, fault_end=fault_end, brokers=cluster.nodes)
    row.note = (
        f"node {victim + 1} (the handler's, not the leader) stopped at 40 %; new records "
        f"reached the sink through the others {gap:.1f} s later; restarted after the emission"
    )


def _kafka_topic(lab: Lab, s: Scenario, **options: str) -> str:
    """A 3-partition topic named after the scenario's queue; its URL, the group named so too."""
    lab.kafka.create_topic(s.queue, partitions=3)
    return str(lab.kafka.url(s.queue, group=s.queue, **options))


def s21_kafka_killed(lab: Lab, s: Scenario, row: Row) -> None:
    """The Kafka stand-in (noida-db) SIGKILLed mid-stream and restarted 3 s later."""
    kafka = lab.kafka
    n = lab.scale(20_000)
    down_for = 1.0 if lab.quick else 3.0
    url = _kafka_topic(lab, s)
    reader = s.file_collector([url])
    app = s.app("app", {
        "logging": handler_logging([url], s.dir / "spool"),
        "first": 0, "count": n, "rate": 0 if lab.quick else 4000,
    })  # fmt: skip
    s.until(lambda: app.emitted() >= n * 0.4 or app.exited(), 300, "progress")
    at = app.emitted()
    kafka.kill()
    t = time.monotonic()
    s.until(lambda: time.monotonic() - t >= down_for, down_for + 5, "the outage")
    kafka.start()
    fault_end = time.monotonic()
    s.delivered(app, reader, row, n, fault_end=fault_end, brokers=[])
    st = app.stats()
    row.note = (
        f"killed at {at} emitted, down {fault_end - t:.1f} s (restart included); "
        f"{st['spooled']} records went through the spool; noida-db stand-in, not Kafka"
    )


def s22_kafka_collector_kill(lab: Lab, s: Scenario, row: Row) -> None:
    """A Kafka collector SIGKILLed mid-run and restarted; Elasticsearch (noida-db) as the sink.

    Both collectors use one ``group_instance`` (static membership): the stand-in never evicts
    a member that died without leaving the group, so only its restart takes the partitions back
    (a real cluster would also hand them to any other member after ``session.timeout.ms``).
    """
    es = lab.es
    n = lab.scale(20_000)
    url = _kafka_topic(lab, s, group_instance="collector-1")
    reader = FileReader([s.dir / "c1.jsonl", s.dir / "c2.jsonl"])
    s.readers.append(reader)
    first = s.collector("c1", [url], [s.es_sink(es.url), s.file_sink("c1")])
    app = s.app("app", {
        "logging": handler_logging([url], s.dir / "spool"),
        "first": 0, "count": n, "rate": 0 if lab.quick else 2000,
    })  # fmt: skip
    s.until(lambda: reader.tally.distinct >= n * 0.4, 300, "40 % in the sink")
    killed_at = reader.tally.distinct
    first.kill()
    s.collector("c2", [url], [s.es_sink(es.url), s.file_sink("c2")])
    fault_end = time.monotonic()
    s.until(app.exited, 300, "the application to deliver and exit")
    s.settle(reader.tally, n, 180, [])
    stored = es_readback(es.url, s.es_index)
    _fill_row(row, stored, n, fault_end)
    row.dup_deliveries = reader.tally.dup_deliveries
    row.recovery = _recovery(reader.tally, fault_end)
    row.note = (
        f"collector killed at {killed_at} records in the sink, restarted at once with the "
        f"same group_instance; {stored.deliveries} documents in the index; noida-db stand-in"
    )


SCENARIOS: list[tuple[int, str, str, Callable[[Lab, Scenario, Row], None]]] = [
    (1, "broker down for the first 30 s", "file", s1_broker_down_at_start),
    (2, "broker killed -9 twice", "file", s2_broker_kill_twice),
    (3, "primary of two endpoints killed (failover)", "file", s3_failover),
    (4, "black-holed broker (SIGSTOP 15 s)", "file", s4_blackhole),
    (5, "application killed -9, durability=spool, restarted", "file", s5_app_kill),
    (6, "collector killed -9, restarted", "noida-db ES", s6_collector_kill),
    (7, "sink answers 429/503 for 20 s", "ES _bulk stand-in", s7_sink_errors),
    (8, "two collectors competing, one killed", "noida-db ES", s8_competing_collectors),
    (9, "spool on a full filesystem", "file", s9_spool_full),
    (10, "forked workers (multiprocessing)", "file", s10_forked_workers),
    (11, "outage ends during retry backoff, then exit", "file", s11_close_in_backoff),
    (12, "two processes share a spool through an outage", "file", s12_shared_spool_order),
    (13, "multiprocessing Pool terminated by its with-block", "file", s13_pool_terminate),
    (14, "billiard (Celery prefork) workers recycled", "file", s14_recycled_workers),
    (15, "two applications, two destinations, one spool", "file", s15_spool_two_destinations),
    (
        16,
        "Elasticsearch stopped mid-stream, [elasticsearch, amqp] failover",
        "noida-db ES",
        s16_es_failover,
    ),
    (
        17,
        "broker behind HTTPS ingest restarted mid-stream",
        "file",
        s17_https_ingest_broker_restart,
    ),
    (18, "quorum queue leader killed -9 (3-node cluster)", "file", s18_quorum_leader_kill),
    (19, "rolling restart of a 3-node cluster", "file", s19_rolling_restart),
    (20, "minority node stopped under its handler", "file", s20_minority_node_stopped),
    (21, "Kafka stand-in killed -9 mid-stream, restarted", "file", s21_kafka_killed),
    (22, "Kafka collector killed -9, restarted", "noida-db ES", s22_kafka_collector_kill),
]


def run_scenario(lab: Lab, number: int) -> Row:
    _, name, sink, fn = next(x for x in SCENARIOS if x[0] == number)
    row = Row(number, name, sink)
    s = Scenario(lab, number)
    began = time.monotonic()
    try:
        fn(lab, s, row)
        row.audit = s.audit()
    except Exception as exc:  # report the row as failed, keep running the others
        row.error = f"{type(exc).__name__}: {exc}"
        for app in s.apps:
            row.error += f" | app stderr: {app.stderr()[-300:]}"
    finally:
        s.close()
        row.seconds = time.monotonic() - began
    return row


# =============================================================================================
# Output
# =============================================================================================


def table(rows: list[Row]) -> str:
    head = (
        "| # | scenario | sink | emitted | delivered | lost | dup. in sink | dup. deliveries "
        "| audit: gaps / dropped / dup. | recovery | goal |"
    )
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        rec = "—" if r.recovery is None else f"{r.recovery:.1f} s"
        lost = str(r.lost)
        if r.counted_drops is not None:
            lost += f" (counted {r.counted_drops})"
        if r.inversions is not None:
            lost += f"; {r.inversions} out of order"
        if r.misrouted is not None:
            lost += f"; {r.misrouted} misrouted"
        goal = "met" if r.ok else "**MISSED**"
        a = r.audit
        audit = "—" if a is None else f"{a['missing']} / {a['dropped']} / {a['duplicates']}"
        lines.append(
            f"| {r.number} | {r.name} | {r.sink} | {r.emitted} | {r.delivered} | {lost} "
            f"| {r.dup_sink} | {r.dup_deliveries} | {audit} | {rec} | {goal} |"
        )
    return "\n".join(lines)


HOW = {
    1: "The broker is SIGKILLed before the application starts; the application logs at a steady "
    "rate while the handler spools; at 30 s the broker is started again (its boot time is part "
    "of the outage). Recovery: from the broker accepting clients to the last record in the sink.",
    2: "The broker is SIGKILLed (whole process group) at 25 % and 60 % of the emission and started "
    "again each time (durable queue, persistent messages, publisher confirms). Recovery: from the "
    "second restart. Before each kill Mnesia's log is synced (`mnesia:sync_log()`, as it would "
    "long be in a deployment): RabbitMQ 3.10 can lose a queue declared seconds before a SIGKILL, "
    "with the messages it had confirmed.",
    3: "Handler with `strategy: failover` over two RabbitMQ nodes, one collector consuming both. "
    "The primary is SIGKILLed at 40 %; the stream continues through the secondary; the primary is "
    "started again after the emission (records it had confirmed are still in its queue). "
    "Mnesia's log is synced before the kill, as in 2. Recovery: from the primary's restart.",
    4: "The broker's process group is SIGSTOPped: TCP connections are still accepted by the "
    "kernel, nothing answers (confirm timeouts, heartbeats). Application and collector both "
    "see it. SIGCONT ends the fault. Recovery: from SIGCONT.",
    5: "`durability: spool` (write-ahead). The application is SIGKILLed at 50 %; the exact number "
    "of records whose `emit()` returned is read from a shared counter the application updates "
    "after each call. The restarted application (same spool directory) replays, then logs the "
    "rest. Recovery: from the restart.",
    6: "Collector with an Elasticsearch sink (noida-db) and a file sink (to count deliveries). "
    "SIGKILL at 40 % in the sink, a new collector started at once. Delivered/lost/dup. in sink "
    "are read back from the index (scan); dup. deliveries from the file sink (redelivered "
    "messages that were already written: Elasticsearch answered 409 for them).",
    7: "The fault-injecting `_bulk` stand-in of the collector tests (answers like Elasticsearch) "
    "refuses whole requests with 429 / 503 alternately for 20 s. Recovery: from the first "
    "healthy answer to the last record stored; dup. deliveries = 409 answers.",
    8: "Two collector processes (noida-db + file sinks) consume one queue; one is SIGKILLed at "
    "40 % and not restarted; its unacknowledged messages go to the other. Read back as in 6. "
    "Recovery: from the kill.",
    9: "The spool directory is a 2 MB tmpfs (or RLIMIT_FSIZE where mounting is not allowed). "
    "The broker is down while the application logs as fast as it can, so the spool fills up; "
    "then the broker comes back. Goal: records missing in the sink = the handler's `dropped` "
    "counters. Recovery: from the broker restart.",
    10: "The parent configures logging, logs, forks four `multiprocessing` workers (fork "
    "context) that log their share and return normally, logs its own share meanwhile, joins "
    "them and drains. No fault: recovery not applicable.",
    11: "The broker is SIGKILLed before the application starts (`retry_max: 30`, "
    "`close_timeout: 20`), so the endpoint's backoff has grown to seconds when the broker is "
    "started again; the application then calls `logging.shutdown()` at once, with no waiting "
    "loop of its own. Goal: `close()` uses its deadline to try again and delivers everything. "
    "Recovery: from the broker restart.",
    12: "Two instances of one application (same destination, same spool directory) log at a "
    "steady rate while the broker is down; it comes back while both still log. Besides lost and "
    "duplicated records, the sink order of each process's records is checked: every record "
    "arriving after a later one of the same process counts as an inversion (goal 0).",
    13: "The application maps 100-record tasks over `multiprocessing.Pool(4)` in a `with` block, "
    "whose exit calls `terminate()` (SIGTERM to each worker, whose exit finalizers never run); "
    "then drains. No fault beyond that: recovery not applicable.",
    14: "The application maps 10-record tasks over `billiard.Pool(2, maxtasksperchild=10)` "
    "(Celery's prefork pool): every worker is replaced after 10 tasks and ends with "
    "`os._exit`; then `close()` and `join()`. Recovery not applicable.",
    15: "Application B (queue b) runs while the broker is down and exits, leaving its records in "
    "a spool directory; application A (queue a) is then configured with the same directory. "
    "Goal: no record in the other's queue (`misrouted` 0); A either refuses the directory "
    "(then runs with its own, as the error says) or leaves B's records alone; B's next run "
    "ships them.",
    16: "The application logs to noida-db directly (`elasticsearch+http://` endpoint) with the "
    "broker as failover (`strategy: failover`); a collector drains the broker into the same "
    "data stream. Once 40 % of the records are emitted (1,000 a second), noida-db is stopped "
    "(SIGTERM: noida-db loses acknowledged documents on SIGKILL, real Elasticsearch does not) "
    "and started again 3 s after the application finished emitting. Goal: every record in the "
    "index exactly once (`_id` = record id). Recovery: from noida-db accepting clients to the "
    "last record in the index (the collector draining the broker at noida-db's ingest speed).",
    17: "A pilot logs through `MQHandler` over `https://` with an RFC 3820 proxy certificate to "
    "the collector's HTTPS ingest, whose `broker` sink publishes with confirms to RabbitMQ; a "
    "second collector drains the queue into a file. At 40 % of the emission the broker is "
    "SIGKILLed and started again: the ingest answers 503 (records not handed on) and the "
    "handler retries and spools. A batch the ingest had partly published when the broker died "
    "is sent again with the same ids: the ingest remembers the ids it handed on lately and "
    "does not publish those twice (duplicate deliveries), and past that window Elasticsearch "
    "would store them once by id (`dup` counts copies under another id).",
    18: "Three-node RabbitMQ cluster (harness.cluster), quorum queue. Two applications log "
    "through a multi-host URL listing the queue's leader first (so they are connected to it); "
    "two collectors consume the queue through different nodes. The leader node is SIGKILLed at "
    "40 % (not restarted during the run): publishes in flight are lost with the connection and "
    "the ones during the leader election are nacked; both are retried on a fresh connection. "
    "Recovery: from the kill.",
    19: "Three-node cluster, quorum queue, one application at a steady rate, one collector. "
    "Each node is stopped (SIGTERM) and started again in turn, the next only once the previous "
    "serves again. Recovery: from the last restart.",
    20: "Three-node cluster, quorum queue. The handler is connected to a node that is not the "
    "queue's leader; that node is stopped (a minority of one: the queue keeps its quorum) at "
    "40 %. The handler moves to the next host of its URL. Recovery: from the node's restart.",
    21: "Kafka through the noida-db stand-in (one broker, not Apache Kafka): a 3-partition topic, "
    "the application logs at 4,000/s; at 40 % of the emission the stand-in is SIGKILLed and "
    "started again 3 s later on the same data directory. The handler spools what the "
    "idempotent producer could not confirm and replays it; the collector (consumer group, "
    "offsets committed after the sink) reconnects. Recovery: from the restart.",
    22: "Kafka through the noida-db stand-in: a collector draining a 3-partition topic into "
    "Elasticsearch (noida-db) and a file is SIGKILLed at 40 % of the records in the sink and "
    "restarted at once with the same `group_instance` (static membership: the stand-in never "
    "evicts a member that died without leaving the group). Its uncommitted records are read "
    "again and stored once (`_id`).",
}


# Every loss path of issue #11, where it was fixed and the test (against real brokers, counting
# records end to end) that failed before the fix. Kept here so `make faults` writes it into
# docs/reliability.md next to the figures.
LOSS_PATHS = [
    ("1", "a user `event.id` (logstash, flat) became the Elasticsearch `_id`: 409, acked, lost",
     "one id reader per schema, `mqlogging.wire.read_meta`",
     "tests/collector/test_record_identity.py"),
    ("2", "`close()`/`flush()` gave up while the endpoint was in retry backoff",
     "flush/close retry at once, then every 0.5 s, until their deadline; scenario 11",
     "tests/handlers/test_lifecycle.py::TestCloseAfterOutage"),
    ("3", "processes sharing a spool reordered each other's records after an outage",
     "readers take one writer's segments only in order; scenario 12",
     "tests/handlers/test_shared_spool.py, tests/test_spool.py::TestWriterOrder"),
    ("4", "`with multiprocessing.Pool() as p:` lost its workers' records",
     "pool children write ahead and deliver on SIGTERM; scenario 13",
     "tests/handlers/test_pool_children.py"),
    ("5", "an unwritable spool threw the queue away although the broker was up",
     "a failing spool is bypassed; only what cannot be held is dropped, counted",
     "tests/handlers/test_spool_failure.py"),
    ("6", "two applications on one spool directory: A shipped B's records",
     "a spool directory is bound to its destination (`DESTINATION`); scenario 15",
     "tests/handlers/test_shared_spool.py::test_spool_directory_serves_one_destination"),
    ("7", "request-level Elasticsearch errors dead-lettered (or discarded) every record",
     "only document-level 400s are dead letters; a default dead-letter spool",
     "tests/collector/test_loss_paths.py::TestRequestLevelErrors, ::TestDefaultDeadLetters"),
    ("8", "collector memory bounded by prefetch x message size",
     "`max_inflight_bytes`, and the AMQP window follows it",
     "tests/collector/test_loss_paths.py::TestInFlightBytes, "
     "tests/collector/test_inflight_memory.py, tests/backends/test_amqp_window.py"),
    ("9", "`flush()` after `close()` waited its whole timeout", "returns at once when closed",
     "tests/handlers/test_lifecycle.py::TestShutdownTwice"),
    ("10", "`mqlogging tail` printed terminal control sequences", "every rendered field escaped",
     "tests/test_tail.py::TestControlCharacters"),
    ("11", "start-up failed when the default spool directory could not be created",
     "falls back to a private temp directory, said once; else a one-line error",
     "tests/handlers/test_lifecycle.py::TestDefaultSpoolDirectory"),
    ("12", "endpoints differing only in queue were 'listed twice' and shared a spool",
     "`Endpoint.destination_key()`", "tests/backends/test_destinations.py::TestDestinationKey"),
    ("13", "`exchange=&routing_key=jobs` published to queue `logs`",
     "an explicit routing key is honoured, contradictions refused",
     "tests/backends/test_destinations.py::TestDefaultExchange"),
    ("14", "STOMP to `/exchange/...` or `/topic/...` dropped records with no word",
     "one stderr line at configuration",
     "tests/backends/test_destinations.py::TestLossyDestinations"),
    ("15", "the index came from receive time (flat) or from any date in the record",
     "the record's own time, clamped to a window, counted",
     "tests/collector/test_loss_paths.py::TestIndexTime"),
    ("16", "Celery prefork (billiard) lost the records of recycled children",
     "write-ahead in pool children; scenario 14", "tests/handlers/test_pool_children.py"),
    ("17", "a second `dictConfig` stalled 5 s and sent a record twice",
     "the sender never takes logging's lock",
     "tests/handlers/test_lifecycle.py::TestReconfiguration"),
    ("18", "DIRAC-style AMQP topic subscribers competed for messages",
     "each subscriber has its own queue",
     "tests/backends/test_destinations.py::test_every_topic_subscriber_gets_every_message"),
    ("19", "the README's install line failed from a clone", "`pip install '.[...]'`",
     "tests/test_readme.py::test_install_lines_work_from_a_clone"),
    ("20", "undocumented differences from logstash-formatter V1", "each documented and shown",
     "tests/test_logstash_differences.py"),
    ("audit", "a gap nobody could see in production",
     "producer id + gap-free seq on every record, drop markers, `mqlogging audit`",
     "tests/handlers/test_markers.py, tests/collector/test_audit_es.py, tests/test_audit.py"),
]  # fmt: skip


def loss_paths() -> str:
    lines = [
        "## Every loss path found by the review of issue #11",
        "",
        "Each has a regression test (against real brokers wherever one is involved) that failed "
        "before its fix; 19 and 20 are documentation, checked against pip and the real package.",
        "",
        "| defect | what was lost, misrouted or hidden | fixed by | test |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {what} | {fix} | `{test}` |" for n, what, fix, test in LOSS_PATHS]
    return "\n".join(lines)


def document(rows: list[Row], quick: bool, elapsed: float) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    parts = [
        "# Reliability figures",
        "",
        "Generated by `make faults` — regenerate with:",
        "",
        "```sh",
        COMMAND.split("   ", maxsplit=1)[0] + (" --quick" if quick else ""),
        "```",
        "",
        f"- date: {now}; total run time {elapsed / 60:.1f} min",
        f"- machine: {os.cpu_count()} cores, {platform.machine()}, Linux "
        f"{platform.release()}, Python {platform.python_version()}; load average at the end "
        f"{load[0]:.1f} (other jobs share the machine)",
        "- pipeline: application subprocess (`logging.config.dictConfig` + `mqlogging.MQHandler`, "
        "AMQP, publisher confirms) → private RabbitMQ 3.10 → collector process "
        "(`python -m mqlogging.collector`) → sink.",
        "",
        'Every record carries `extra={"seq": i}`; the sink is read back and the set of `seq` '
        "compared with what was emitted. **lost** = emitted - distinct records in the sink. "
        "**dup. in sink** = records stored more than once under different ids (what "
        "Elasticsearch would keep twice — impossible by `_id` construction unless a record got two "
        "ids). **dup. deliveries** = deliveries of a record the sink already had (at-least-once "
        "redeliveries after a crash: extra lines in the file sink, 409 answers of "
        "Elasticsearch); expected, harmless in Elasticsearch. **recovery** = from the end of the "
        "fault to the last new record in the sink. **audit** = what `mqlogging audit` finds in "
        "the same sink (the index where there is one, else the file sinks), from the producer id "
        "and sequence number every record carries: unexplained gaps / records dropped by an "
        "announced policy / sequence numbers stored more than once (in a file sink redeliveries "
        "count there too). Goal: lost = 0, dup. in sink = 0, audit gaps = 0 and audit dropped = 0 "
        "(scenario 9: lost = audit dropped = the handler's drop counters); where order or "
        "destinations are checked (12, 15), no record out of order or in the wrong queue. The "
        "audit cannot see records lost after a producer's last record in the sink (nothing tells "
        "how many there were): the runner's own count by `seq` covers those.",
        "",
        table(rows),
        "",
        "## How each scenario is measured",
        "",
    ]
    for r in rows:
        parts.append(f"{r.number}. **{r.name}** ({r.seconds:.0f} s). {HOW[r.number]}")
        if r.note:
            parts.append(f"   Run: {r.note}.")
        if r.error:
            parts.append(f"   ERROR: `{r.error}`")
    parts += ["", loss_paths()]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["app"]:
        return app_main(argv[1])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="record counts / 10, short faults")
    parser.add_argument("--only", default="", help="comma-separated scenario numbers")
    parser.add_argument("--write", default="", help="write the Markdown report to this file")
    parser.add_argument("--keep", default="", help="work in this directory and keep it")
    args = parser.parse_args(argv)
    wanted = [int(x) for x in args.only.split(",") if x] or [x[0] for x in SCENARIOS]
    began = time.monotonic()
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = args.keep
            Path(tmp).mkdir(parents=True, exist_ok=True)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="mqlogging-faults-"))
        lab = Lab(Path(tmp), args.quick)
        try:
            for number in wanted:
                row = run_scenario(lab, number)
                rows.append(row)
                status = "ok" if row.ok else f"MISSED {row.error}"
                print(
                    f"[{time.monotonic() - began:5.0f} s] scenario {number}: {status}", flush=True
                )
        finally:
            lab.close()
    elapsed = time.monotonic() - began
    print()
    print(table(rows))
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(document(rows, args.quick, elapsed))
        print(f"\nwritten to {args.write}")
    return 0 if all(r.ok for r in rows) else 1


def run() -> list[dict[str, Any]]:
    """Rows in the shape of ``benchmarks/run.py``'s suites: lost records per scenario (goal 0)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="mqlogging-faults-") as tmp:
        lab = Lab(Path(tmp), quick=True)
        try:
            for number, *_ in SCENARIOS:
                r = run_scenario(lab, number)
                rows.append({
                    "name": f"faults {number}: {r.name} (lost)", "value": r.lost,
                    "unit": "records", "baseline_name": "", "baseline_value": 0.0,
                    "ratio": 0.0, "goal": "= counted drops" if number == 9 else "0",
                })  # fmt: skip
        finally:
            lab.close()
    return rows


if __name__ == "__main__":
    sys.exit(main())
