"""Log shippers side by side: one table, each contender in a fresh process (issue #13).

Every contender runs the same ``logger.info("job %d done in %.3f ms", i, 12.5, extra=...)``
call in its own new Python process, in the same run, against loopback brokers started here,
and its records are counted **at the destination** (consumed from the queue, read off the
socket, decoded by an OTLP receiver), never at emit. Columns:

- caller µs per call in a tight loop (x NullHandler; the median of ten stretches, so that one
  preempted stretch on a shared machine does not make the figure);
- caller latency p50/p99 at a paced 2,000 records/s with the sender working (what an
  application feels), x NullHandler's p50;
- process CPU µs per delivered record, from the first call to the last record counted at the
  destination (user + system time of the contender's whole process: caller, sender threads,
  client libraries), x NullHandler;
- delivered records/s (first call to last record counted) and delivered / emitted.

Protocol: the parent starts the child, waits for its warm-up record at the destination (the
connection is up), tells it to go, waits until every record is counted (or nothing arrives
for a while: the rest is lost), then asks for the child's CPU time, runs the paced phase the
same way and closes the child. Records that only an in-process destination sees (NullHandler,
the stdlib ``QueueHandler`` into a counting handler, a ``StreamHandler`` on ``/dev/null``) are
counted by the child itself.

Run: ``.venv/bin/python -m benchmarks.bench_contenders [--n 20000] [--only name,...]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from benchmarks._receivers import Counter, OtlpCounter, QueueCounter, TcpLineCounter
from harness.brokers import ActiveMQ, RabbitMQ
from harness.drain import amqp_url, stomp_url
from harness.helpers import unique_name

Row = dict[str, Any]

NOTES = """ Each contender runs the same `logger.info("job %d done in %.3f ms", i, 12.5,
extra={...})` in a fresh Python process, one after the other in this run, against loopback
brokers; records are counted **at the destination** (consumed from the queue, read off the TCP
socket, decoded by a local OTLP/HTTP receiver; NullHandler, QueueHandler and /dev/null count
in-process). CPU is the contender's whole process (user + system, all threads) from its first
call to its last record counted at the destination, divided by the records delivered. The
tight-loop figure is the median of ten equal stretches of the loop. The
paced columns time each call while emitting at 2,000 records/s with the sender working (what an
application feels); x is against NullHandler in the same run. A packed row appears when
endpoints take `pack=` (issue #13)."""

PACED_RATE = 2_000  # records/s for the latency phase
PACED_N = 2_000
EXTRA = {"job": 7, "queue": "default"}


# --------------------------------------------------------------------------- the child


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _CountingHandler(logging.NullHandler):
    """The in-process destination: counts what reaches it (lock-free: one thread calls it)."""

    def __init__(self) -> None:
        super().__init__()
        self.counter = Counter()

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        self.counter.add(1)
        return True


class _DevNull:
    """A text stream on ``/dev/null`` that counts the lines written (the destination)."""

    def __init__(self) -> None:
        self._file = open(os.devnull, "w")  # noqa: SIM115 - closed with the child
        self.counter = Counter()

    def write(self, text: str) -> int:
        n = self._file.write(text)
        self.counter.add(text.count("\n"))
        return n

    def flush(self) -> None:
        self._file.flush()


@dataclass
class _Built:
    handler: logging.Handler
    local: Counter | None = None  # the in-process destination, if any
    close: list[Callable[[], None]] = field(default_factory=list)


def _build(spec: dict[str, Any]) -> _Built:
    kind = spec["kind"]
    if kind == "null":
        counting = _CountingHandler()
        return _Built(counting, counting.counter)
    if kind == "pjl":
        from pythonjsonlogger.json import JsonFormatter

        stream = _DevNull()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        return _Built(handler, stream.counter)
    if kind == "queue":
        q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        counting = _CountingHandler()
        listener = logging.handlers.QueueListener(q, counting)
        listener.start()
        return _Built(logging.handlers.QueueHandler(q), counting.counter, [listener.stop])
    return _build_remote(kind, spec)


def _build_remote(kind: str, spec: dict[str, Any]) -> _Built:
    if kind == "mq":
        from mqlogging.handlers import MQHandler

        return _Built(MQHandler(spec["url"], **spec.get("options", {})))
    if kind == "plr":
        from python_logging_rabbitmq import RabbitMQHandlerOneWay

        return _Built(RabbitMQHandlerOneWay(**spec["options"]))
    if kind == "lsa":
        from logstash_async.handler import AsynchronousLogstashHandler

        return _Built(AsynchronousLogstashHandler("127.0.0.1", spec["port"], database_path=None))
    if kind == "otel":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        provider = LoggerProvider()
        provider.add_log_record_processor(
            BatchLogRecordProcessor(OTLPLogExporter(endpoint=spec["url"]))
        )
        return _Built(LoggingHandler(logger_provider=provider), None, [provider.shutdown])
    msg = f"unknown contender kind {kind!r}"
    raise ValueError(msg)


def _say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def _wait_local(counter: Counter | None, target: int) -> float | None:
    """For an in-process destination: the time its last expected record arrived."""
    if counter is None:
        return None
    counter.wait(target, 60.0, 10.0)
    return counter.last


def _tight_loop(logger: logging.Logger, n: int, chunks: int = 10) -> float:
    """Emit ``n`` records back to back; µs per call, the median over ``chunks`` equal parts
    (the machine is shared: one preempted stretch must not make the figure)."""
    size = max(1, n // chunks)
    per_call = []
    for start in range(0, n, size):
        stop = min(n, start + size)
        t0 = time.perf_counter()
        for i in range(start, stop):
            logger.info("job %d done in %.3f ms", i, 12.5, extra=EXTRA)
        per_call.append((time.perf_counter() - t0) / (stop - start) * 1e6)
    return _percentile(per_call, 0.5)


def _paced(logger: logging.Logger, n: int, rate: float) -> list[float]:
    """Emit ``n`` records at ``rate``/s; each call's latency in µs (sleeps between calls)."""
    latencies = []
    period = 1.0 / rate
    start = time.perf_counter()
    for i in range(n):
        due = start + i * period
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        t0 = time.perf_counter_ns()
        logger.info("job %d done in %.3f ms", i, 12.5, extra=EXTRA)
        latencies.append((time.perf_counter_ns() - t0) / 1000)
    return latencies


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def child(spec: dict[str, Any]) -> None:
    """One contender: warm up, tight loop, report CPU when told, paced phase, close."""
    n = spec["n"]
    built = _build(spec)
    logger = logging.getLogger("bench.contender")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(built.handler)
    logger.info("warm up")
    flush = getattr(built.handler, "flush", None)
    if spec["kind"] == "mq" and flush is not None:
        flush(30)  # connected, queue declared: the parent can start counting
    _say(event="warm")
    sys.stdin.readline()  # "go": the parent saw the warm-up record arrive
    cpu0, t0 = _cpu(), time.monotonic()
    caller_us = _tight_loop(logger, n)
    last = _wait_local(built.local, 1 + n)
    _say(event="emitted", t0=t0, caller_us=caller_us, last=last)
    sys.stdin.readline()  # "cpu": the parent counted the records (or gave up)
    _say(event="cpu", cpu=_cpu() - cpu0)
    sys.stdin.readline()  # "paced"
    latencies = _paced(logger, PACED_N, PACED_RATE)
    _wait_local(built.local, 1 + n + PACED_N)
    _say(event="paced", p50=_percentile(latencies, 0.5), p99=_percentile(latencies, 0.99))
    sys.stdin.readline()  # "close"
    logger.removeHandler(built.handler)
    built.handler.close()
    for close in built.close:
        close()
    _say(event="closed")


# --------------------------------------------------------------------------- the parent


@dataclass
class Contender:
    """One row: its name, the child's spec, and where the parent counts its records."""

    name: str
    spec: dict[str, Any]
    counter: Any = None  # a Counter or _LazyQueue; None: the child counts (in-process destination)
    idle: float = 5.0  # seconds without progress after which the rest counts as lost


@dataclass
class Result:
    name: str
    emitted: int
    delivered: int
    caller_us: float
    cpu_us: float
    rate: float
    p50: float
    p99: float


class _Child:
    def __init__(self, spec: dict[str, Any]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_contenders", "--child", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def expect(self, event: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                message: dict[str, Any] = json.loads(line)
                if message.get("event") == event:
                    return message
        msg = f"contender exited before {event!r} (exit code {self.proc.wait()})"
        raise RuntimeError(msg)

    def tell(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def measure(contender: Contender, n: int) -> Result:
    """Run one contender in a fresh process; see the module docstring for the protocol."""
    child_proc = _Child({**contender.spec, "n": n})
    try:
        counter = contender.counter
        child_proc.expect("warm")
        if counter is not None and not counter.wait(1, 60.0, 60.0):
            msg = f"{contender.name}: the warm-up record never arrived"
            raise RuntimeError(msg)
        base = counter.count if counter is not None else 1  # the warm-up record
        child_proc.tell("go")
        emitted = child_proc.expect("emitted")
        if counter is not None:
            counter.wait(base + n, 120.0, contender.idle)
            delivered, last = counter.count - base, counter.last
        else:
            delivered, last = n, emitted["last"]
        child_proc.tell("cpu")
        cpu = child_proc.expect("cpu")["cpu"]
        child_proc.tell("paced")
        paced = child_proc.expect("paced")
        if counter is not None:
            counter.wait(base + n + PACED_N, 60.0, contender.idle)
        child_proc.tell("close")
        child_proc.expect("closed")
    finally:
        child_proc.close()
    took = max(last - emitted["t0"], 1e-9)
    return Result(
        contender.name,
        n,
        delivered,
        emitted["caller_us"],
        cpu / max(delivered, 1) * 1e6,
        delivered / took,
        paced["p50"],
        paced["p99"],
    )


def has_packing() -> bool:
    """True when endpoints take ``pack=`` (packed messages, issue #13)."""
    from mqlogging.backends.endpoints import Endpoint

    try:
        Endpoint.from_url("amqp://h/?queue=q&pack=200")
    except Exception:
        return False
    return True


@contextmanager
def _brokers() -> Iterator[tuple[RabbitMQ, ActiveMQ]]:
    with RabbitMQ() as rabbit, ActiveMQ() as active:
        rabbit.start()
        active.start()
        yield rabbit, active


def _mq_rows(stack: ExitStack, rabbit: RabbitMQ, active: ActiveMQ, packed: bool) -> list[Contender]:
    """MQHandler over AMQP and STOMP, single and (when it exists) packed, and durability=spool."""
    rows = []
    pack = {"": {}, " packed": {"pack": 200}} if packed else {"": {}}
    for suffix, extra in pack.items():
        for label, make_url in (
            ("AMQP -> RabbitMQ", lambda q, e: amqp_url(rabbit, q, **e)),
            ("STOMP -> RabbitMQ", lambda q, e: _with(stomp_url(rabbit, q), e)),
            ("STOMP -> ActiveMQ", lambda q, e: _with(stomp_url(active, q), e)),
        ):
            name = unique_name("bench-c")
            url, count_url = make_url(name, extra), make_url(name, {})
            rows.append(_mq(stack, f"MQHandler {label}{suffix}", url, count_url))
    name = unique_name("bench-c")
    rows.append(
        _mq(
            stack,
            "MQHandler AMQP -> RabbitMQ durability=spool",
            amqp_url(rabbit, name),
            amqp_url(rabbit, name),
            {"durability": "spool"},
        )
    )
    return rows


def _with(url: str, query: dict[str, Any]) -> str:
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def _mq(
    stack: ExitStack, name: str, url: str, count_url: str, options: dict[str, Any] | None = None
) -> Contender:
    spool = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-c-"))
    opts = {"spool": spool, "queue_size": 200_000, **(options or {})}
    return Contender(name, {"kind": "mq", "url": url, "options": opts}, _LazyQueue(count_url))


class _LazyQueue:
    """A :class:`QueueCounter` started on first use (the queue exists once the child
    published its warm-up record)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._inner: QueueCounter | None = None

    def _get(self) -> Counter:
        if self._inner is None:
            self._inner = QueueCounter(self._url)
        return self._inner.counter

    @property
    def count(self) -> int:
        return self._get().count

    @property
    def last(self) -> float:
        return self._get().last

    def wait(self, target: int, timeout: float, idle: float) -> bool:
        return self._get().wait(target, timeout, idle)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


def _peer_rows(stack: ExitStack, rabbit: RabbitMQ) -> list[Contender]:
    """python-logging-rabbitmq, python-logstash-async and the OpenTelemetry SDK handler."""
    exchange, name = unique_name("bench-x"), unique_name("bench-plr")
    with rabbit.amqp_channel() as ch:
        ch.exchange_declare(exchange, exchange_type="topic", durable=True)
        ch.queue_declare(name, durable=True)
        ch.queue_bind(name, exchange, routing_key="#")
    plr = {
        "host": "127.0.0.1",
        "port": rabbit.amqp_port,
        "username": "guest",
        "password": "guest",
        "exchange": exchange,
    }
    queue_counter = QueueCounter(amqp_url(rabbit, name))
    stack.callback(queue_counter.close)
    tcp = TcpLineCounter()
    stack.callback(tcp.close)
    otlp = OtlpCounter()
    stack.callback(otlp.close)
    return [
        Contender(
            "python-logging-rabbitmq (no confirms)",
            {"kind": "plr", "options": plr},
            queue_counter.counter,
        ),
        # Its worker flushes every 10 s (QUEUED_EVENTS_FLUSH_INTERVAL) or 50 events.
        Contender(
            "python-logstash-async -> TCP", {"kind": "lsa", "port": tcp.port}, tcp.counter, 15.0
        ),
        Contender(
            "OTel SDK LoggingHandler, batch + OTLP/HTTP",
            {"kind": "otel", "url": otlp.url},
            otlp.counter,
        ),
    ]


def contenders(stack: ExitStack, rabbit: RabbitMQ, active: ActiveMQ) -> list[Contender]:
    """Every row of the table, in order."""
    local = [
        Contender("NullHandler", {"kind": "null"}),
        Contender("python-json-logger StreamHandler -> /dev/null", {"kind": "pjl"}),
        Contender("stdlib QueueHandler -> QueueListener", {"kind": "queue"}),
    ]
    return [
        *local,
        *_mq_rows(stack, rabbit, active, has_packing()),
        *_peer_rows(stack, rabbit),
    ]


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def render(rows: list[Row]) -> str:
    """The markdown table (``benchmarks.run`` uses it instead of its generic one)."""
    null = next((r for r in rows if r["name"] == "NullHandler"), rows[0])
    lines = [
        "| contender | caller µs/call, tight loop | caller p50 / p99 µs at "
        f"{PACED_RATE:,}/s | CPU µs per delivered record | delivered records/s | "
        "delivered / emitted |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['caller_us']:.2f} ({_ratio(r['caller_us'], null['caller_us'])}) "
            f"| {r['p50']:.1f} ({_ratio(r['p50'], null['p50'])}) / {r['p99']:.1f} "
            f"| {r['cpu_us']:.2f} ({_ratio(r['cpu_us'], null['cpu_us'])}) "
            f"| {r['rate']:,.0f} | {r['delivered']:,} / {r['emitted']:,} |"
        )
    return "\n".join(lines)


def run(n: int = 20_000, only: tuple[str, ...] = ()) -> list[Row]:
    """Start the brokers and receivers, measure every contender, return the rows."""
    rows: list[Row] = []
    with _brokers() as (rabbit, active), ExitStack() as stack:
        for contender in contenders(stack, rabbit, active):
            if only and contender.name != "NullHandler" and not _picked(contender.name, only):
                continue
            print(f"  {contender.name} ...", flush=True)
            try:
                result = measure(contender, n)
            except Exception as exc:  # one broken contender must not lose the table
                print(f"  {contender.name}: FAILED: {exc}", flush=True)
                continue
            rows.append(result.__dict__)
            if isinstance(contender.counter, _LazyQueue):
                contender.counter.close()
    return rows


def _picked(name: str, only: tuple[str, ...]) -> bool:
    return any(word.lower() in name.lower() for word in only)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--only", default="", help="comma-separated name parts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    only = tuple(p for p in args.only.split(",") if p)
    print(render(run(args.n, only)))
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "MainThread"
    sys.exit(main())
