"""Prometheus metrics and the ``/metrics`` ``/healthz`` ``/readyz`` HTTP endpoint.

Each :class:`CollectorMetrics` owns its own ``CollectorRegistry`` (never the process-global
default one), so two services in one process — tests, embedding — do not collide. Labels are
source and sink *names* (configured name or redacted URL): never a secret.

``/healthz`` answers 200 while the process serves HTTP (liveness). ``/readyz`` answers 200 when
every source is connected and every sink answers its cheap reachability check, else 503; the
JSON body says which part is not ready.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import MissingDependencyError

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
except ImportError as exc:  # pragma: no cover - installed in the dev environment
    raise MissingDependencyError("prometheus-client", "collector") from exc

__all__ = ["CollectorMetrics", "HttpServer"]

log = logging.getLogger("mqlogging.collector")

_PREFIX = "mqlogging_collector"


class CollectorMetrics:
    """The collector's counters; thread-safe (prometheus-client metrics are)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.consumed = Counter(
            f"{_PREFIX}_consumed", "Messages received from a source.", ["source"], registry=r
        )
        self.acked = Counter(
            f"{_PREFIX}_acked",
            "Messages acknowledged (every sink has them or their dead letter is confirmed).",
            ["source"],
            registry=r,
        )
        self.requeued = Counter(
            f"{_PREFIX}_requeued",
            "Messages given back to the broker unfinished (shutdown, errors).",
            ["source"],
            registry=r,
        )
        self.dead_lettered = Counter(
            f"{_PREFIX}_dead_lettered",
            "Messages sent to the dead letters, by reason class.",
            ["source", "reason"],
            registry=r,
        )
        self.dead_letter_failures = Counter(
            f"{_PREFIX}_dead_letter_failures",
            "Dead-letter writes that failed (retried).",
            ["source"],
            registry=r,
        )
        self.retried = Counter(
            f"{_PREFIX}_retried", "Record writes retried, per sink.", ["sink"], registry=r
        )
        self.sink_items = Counter(
            f"{_PREFIX}_sink_items",
            "Per-record sink answers by status (ok, conflict, 429, 503, timeout, ...).",
            ["sink", "status"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            f"{_PREFIX}_batch_seconds",
            "Time from a batch's first write attempt until all its messages are settled.",
            ["source"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.reconnects = Counter(
            f"{_PREFIX}_reconnects",
            "Source connection failures (each one followed by a reconnect attempt).",
            ["source"],
            registry=r,
        )
        self.in_flight = Gauge(
            f"{_PREFIX}_in_flight", "Messages received and not yet settled.", ["source"], registry=r
        )
        self.in_flight_bytes = Gauge(
            f"{_PREFIX}_in_flight_bytes",
            "Message bytes received and not yet settled (bounded by max_inflight_bytes).",
            ["source"],
            registry=r,
        )
        self.index_time_out_of_window = Counter(
            f"{_PREFIX}_index_time_out_of_window",
            "Records whose own time was outside the index window (or missing) and that went "
            "to the current index instead (per write attempt: a retried record counts again).",
            ["sink"],
            registry=r,
        )
        self.ingest_requests = Counter(
            f"{_PREFIX}_ingest_requests",
            "HTTPS ingest requests by the status answered (200, 400, 401, 413, 429, 503...).",
            ["source", "status"],
            registry=r,
        )
        self.sink_rejected_records = Counter(
            f"{_PREFIX}_sink_rejected_records",
            "Records a sink's peer said it refused without saying which (OTLP partial "
            "success); how they were handled is the sink's partial_success policy.",
            ["sink"],
            registry=r,
        )
        self.connected = Gauge(
            f"{_PREFIX}_source_connected",
            "1 while the source's last fetch succeeded.",
            ["source"],
            registry=r,
        )

    def value(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples matching ``labels`` (for tests and the CLI)."""
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name in (f"{_PREFIX}_{name}", f"{_PREFIX}_{name}_total") and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HttpServer:
    """A tiny threaded HTTP server for ``/metrics``, ``/healthz`` and ``/readyz``.

    ``readiness`` returns ``(ready, details)``; it is called per ``/readyz`` request.
    """

    def __init__(
        self,
        address: tuple[str, int],
        metrics: CollectorMetrics,
        readiness: Callable[[], tuple[bool, dict[str, Any]]],
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, outer.metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n", "text/plain; charset=utf-8")
                elif path == "/readyz":
                    ready, details = outer.readiness()
                    body = json.dumps({"ready": ready, **details}, sort_keys=True).encode()
                    self._send(200 if ready else 503, body + b"\n", "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

        self.metrics = metrics
        self.readiness = readiness
        self.server = ThreadingHTTPServer(address, Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="mqlogging-collector-http", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
