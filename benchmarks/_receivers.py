"""Destinations that count what they receive, for :mod:`benchmarks.bench_contenders`.

A record counts as delivered only when it is here: consumed from its broker queue, read off a
TCP socket, or decoded from an OTLP/HTTP request. Each counter keeps the count and the
``time.monotonic()`` of its last increase (the same clock in every process of the machine), so
the contender's delivered rate runs from its first call to its last record counted here.
"""

from __future__ import annotations

import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mqlogging.backends import open_consumer

COUNT_HEADER = "mqlogging-count"
"""Records in a packed message (issue #13); a message without it is one record."""


class Counter:
    """A thread-safe record count with the time of its last increase."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.last = time.monotonic()

    def add(self, n: int) -> None:
        if n:
            with self._lock:
                self.count += n
                self.last = time.monotonic()

    def wait(self, target: int, timeout: float, idle: float) -> bool:
        """Wait until ``target`` records arrived (True), or ``timeout`` passed, or nothing
        arrived for ``idle`` seconds (False: the rest is lost or still stuck upstream)."""
        start = time.monotonic()
        deadline = start + timeout
        while self.count < target:
            now = time.monotonic()
            # Idle since the last record, or since the wait began if that came later (a
            # counter made long before its contender ran has an old ``last``).
            if now > deadline or now - max(self.last, start) > idle:
                return False
            time.sleep(0.02)
        return True


def records_in(headers: Any) -> int:
    """How many records one broker message carries (a packed one says it in a header)."""
    value = (headers or {}).get(COUNT_HEADER)
    try:
        return int(value) if value is not None else 1
    except (TypeError, ValueError):
        return 1


class QueueCounter:
    """Consume a broker queue through mqlogging's consumer API and count its records.

    The consumer hands out single records where packed messages exist (the packed branch
    unpacks in the consumer wrapper); a raw packed delivery is counted by its header.
    """

    def __init__(self, url: str) -> None:
        self.counter = Counter()
        self._url = url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"count {url}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open_consumer(self._url) as consumer:
            while not self._stop.is_set():
                batch = consumer.fetch(2000, 0.1)
                if batch:
                    consumer.ack(batch)
                    self.counter.add(sum(records_in(d.headers) for d in batch))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


class _LineHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        counter: Counter = self.server.counter  # type: ignore[attr-defined]
        for _line in self.rfile:
            counter.add(1)


class TcpLineCounter:
    """A TCP server counting newline-terminated lines (Logstash's ``json_lines`` input)."""

    def __init__(self) -> None:
        self.counter = Counter()
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _LineHandler)
        self._server.daemon_threads = True
        self._server.counter = self.counter  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _OtlpHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest,
            ExportLogsServiceResponse,
        )

        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            import gzip

            body = gzip.decompress(body)
        request = ExportLogsServiceRequest.FromString(body)
        n = sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
        self.server.counter.add(n)  # type: ignore[attr-defined]
        reply = ExportLogsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


class OtlpCounter:
    """A minimal OTLP/HTTP logs receiver (``POST /v1/logs``, protobuf) counting log records,
    standing in for an OpenTelemetry Collector."""

    def __init__(self) -> None:
        self.counter = Counter()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpHandler)
        self._server.daemon_threads = True
        self._server.counter = self.counter  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1/logs"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
