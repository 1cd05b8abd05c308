"""Collector peers and helpers for the tests and ``make faults``.

- :class:`BulkStandIn`: a small HTTP server that answers like Elasticsearch's ``_bulk`` API
  (``X-Elastic-Product: Elasticsearch`` header, per-item ``create`` statuses, 409 for an id it
  already stores, 400 ``document_parsing_exception`` for a field whose type conflicts with the
  first-seen type) and can inject faults: any whole-request or per-item status for a while, with
  the error type Elasticsearch gives it (``INJECTED_TYPES``: 400 ``index_closed_exception``,
  401 ``security_exception``, 403 ``cluster_block_exception``, 404 ``index_not_found_exception``).
  noida-db cannot inject faults, hence this stand-in; it is *not* Elasticsearch.
- :class:`LogstashHttpStandIn`: checks what Logstash's ``http`` input would accept — a POST with
  ``Content-Type: application/json`` whose body is a JSON object or an array of objects (the
  ``json`` codec makes one event per element); answers ``200 ok`` like the input does, or 429
  ("busy") for the first N requests.
- :class:`LogstashTcpStandIn`: checks what the ``tcp`` input with ``codec => json_lines`` reads —
  newline-terminated JSON objects.
- :class:`CollectorProcess`: runs ``python -m mqlogging.collector --config FILE`` as a child.
- :func:`publish`: puts records on a queue through the package's producers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from harness.helpers import die_with_parent, wait_until
from mqlogging._ids import new_id
from mqlogging._types import Message
from mqlogging.backends import open_producer

#: The repository root: the collector child runs there, importing this checkout's mqlogging.
REPO = Path(__file__).resolve().parents[1]


# -- publishing -------------------------------------------------------------------------------


def ecs_record(i: int, **extra: Any) -> dict[str, Any]:
    rid = new_id()
    doc = {
        "@timestamp": "2024-05-01T12:00:00.000000Z",
        "ecs": {"version": "8.11.0"},
        "event": {"id": rid, "dataset": "mqlogging"},
        "log": {"level": "info", "logger": "tests.collector"},
        "message": f"record number {i}",
        "seq": i,
        "host": {"name": "testhost"},
        "mqlogging": {"schema": "ecs"},  # one of ours: its id is event.id (mqlogging.wire)
    }
    doc.update(extra)
    return doc


def publish(url: str, docs: Iterable[dict[str, Any] | bytes], batch: int = 500) -> int:
    """Publish docs (dicts are JSON-encoded, bytes sent as they are); returns the count."""
    n = 0
    with open_producer(url) as producer:
        chunk: list[Message] = []
        for doc in docs:
            if isinstance(doc, bytes):
                chunk.append(Message(new_id(), doc))
            else:
                rid = doc.get("event", {}).get("id") or new_id()
                chunk.append(Message(rid, json.dumps(doc).encode()))
            if len(chunk) >= batch:
                producer.publish_batch(chunk)
                n += len(chunk)
                chunk = []
        if chunk:
            producer.publish_batch(chunk)
            n += len(chunk)
    return n


def log_through_handler(url: str, count: int, logger_name: str) -> None:
    """Log ``count`` records through :class:`mqlogging.MQHandler` (ECS schema) to ``url``, with
    ``extra={"seq": i}``; returns once the handler flushed them all (close)."""
    import logging

    from mqlogging.handlers import MQHandler

    handler = MQHandler(
        url,
        spool=False,
        static_fields={"service": "collector-tests"},
        queue_size=count + 10,
        close_timeout=60.0,
    )
    logger = logging.getLogger(logger_name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        for i in range(count):
            logger.info("record number %d", i, extra={"seq": i})
    finally:
        logger.removeHandler(handler)
        handler.close()


def amqp_queue_url(rabbitmq: Any, queue: str) -> str:
    """Default exchange, routing key = queue: no other test's records can reach this queue."""
    return f"{rabbitmq.amqp_url}?exchange=&queue={queue}"


# -- config + process -------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(
    path: Path,
    *,
    sources: Sequence[dict[str, Any]],
    sinks: Sequence[dict[str, Any]],
    pipeline: dict[str, Any] | None = None,
    collector: dict[str, Any] | None = None,
    dead_letter: dict[str, Any] | None = None,
    http: dict[str, Any] | None = None,
) -> Path:
    # The default dead-letter spool goes under state_dir: keep it beside the config file.
    collector = {"state_dir": str(path.parent / "state"), **(collector or {})}
    lines: list[str] = []
    for name, table in (
        ("collector", collector),
        ("pipeline", pipeline),
        ("dead_letter", dead_letter),
        ("http", http),
    ):
        if table is not None:
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    for array, items in (("sources", sources), ("sinks", sinks)):
        for table in items:
            lines.append(f"[[{array}]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class CollectorProcess:
    """``python -m mqlogging.collector --config FILE`` as a child process with an HTTP port."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mqlogging.collector", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(REPO),
            preexec_fn=die_with_parent,  # noqa: PLW1509 (one prctl call, no lock)
        )

    def wait_http(self, timeout: float = 15.0) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited {self.proc.returncode}: {self.log()}")
            try:
                return self.get("/healthz")[0] == 200
            except OSError:
                return False

        wait_until(up, timeout=timeout, message="collector /healthz")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of ``mqlogging_collector_<name>[_total]`` samples matching ``labels``."""
        _, text = self.get("/metrics")
        return metric_sum(text, name, **labels)

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    wanted = {f"mqlogging_collector_{name}", f"mqlogging_collector_{name}_total"}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric not in wanted:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


# -- HTTP stand-ins ---------------------------------------------------------------------------


class _Server:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.server.owner = self  # type: ignore[attr-defined]
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# The error type Elasticsearch answers with for an injected status (request-level ones for the
# 4xx: the per-item 400 of a real mapping conflict comes from _store, not from injection).
INJECTED_TYPES = {
    400: "index_closed_exception",
    401: "security_exception",
    403: "cluster_block_exception",
    404: "index_not_found_exception",
    429: "es_rejected_execution_exception",
}


class BulkStandIn(_Server):
    """Answers ``GET /`` and ``POST /_bulk`` like Elasticsearch (see the module docstring).

    ``fault(request_number, item_index) -> status | None``: a whole-request status when
    ``item_index`` is -1, else a per-item status; ``None`` means behave normally.
    """

    def __init__(
        self, fault: Callable[[int, int], int | None] | None = None, max_items: int = 0
    ) -> None:
        super().__init__(_BulkHandler)
        self.max_items = max_items  # > 0: larger requests get 413 like http.max_content_length
        self.fault = fault or (lambda req, item: None)
        self.docs: dict[str, dict[str, Any]] = {}
        self.field_types: dict[str, type] = {}
        self.requests = 0
        self.statuses: dict[int, int] = {}


class _BulkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._reply(200, {})

    def do_GET(self) -> None:
        self._reply(
            200,
            {
                "name": "bulk-stand-in",
                "cluster_name": "stand-in",
                "version": {"number": "8.15.0", "build_flavor": "default"},
                "tagline": "You Know, for Search",
            },
        )

    def do_PUT(self) -> None:
        if self.path.split("?")[0].endswith("/_bulk"):
            self.do_POST()  # the 9.x client sends _bulk as PUT
            return
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._reply(200, {"acknowledged": True})

    def do_POST(self) -> None:
        owner: BulkStandIn = self.server.owner  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self.path.split("?")[0].endswith("/_bulk"):
            self._reply(404, {"error": "not found"})
            return
        with owner.lock:
            owner.requests += 1
            number = owner.requests
        whole = owner.fault(number, -1)
        if whole is not None:
            err = {
                "type": INJECTED_TYPES.get(whole, "unavailable_shards_exception"),
                "reason": "injected",
            }
            self._reply(whole, {"error": err, "status": whole})
            return
        lines = [ln for ln in body.split(b"\n") if ln.strip()]
        if owner.max_items and len(lines) // 2 > owner.max_items:
            self._reply(413, {"error": {"type": "content_too_long", "reason": "too large"}})
            return
        items = []
        errors = False
        for n in range(0, len(lines), 2):
            action = json.loads(lines[n])["create"]
            doc = json.loads(lines[n + 1])
            status = owner.fault(number, n // 2)
            injected = status is not None
            if status is None:
                status = self._store(owner, action["_id"], doc)
            owner.statuses[status] = owner.statuses.get(status, 0) + 1
            item: dict[str, Any] = {
                "_index": action["_index"],
                "_id": action["_id"],
                "status": status,
            }
            if status >= 300:
                errors = True
                kind = {
                    409: "version_conflict_engine_exception",
                    400: "document_parsing_exception",
                }.get(status, "injected_failure")
                if injected and status != 400:
                    kind = INJECTED_TYPES.get(status, kind)
                item["error"] = {"type": kind, "reason": f"injected or detected status {status}"}
            else:
                item["result"] = "created"
            items.append({"create": item})
        self._reply(200, {"took": 1, "errors": errors, "items": items})

    @staticmethod
    def _store(owner: BulkStandIn, doc_id: str, doc: dict[str, Any]) -> int:
        with owner.lock:
            if doc_id in owner.docs:
                return 409
            for key, value in doc.items():
                seen = owner.field_types.setdefault(key, type(value))
                if seen is not type(value) and not ({seen, type(value)} <= {int, float}):
                    return 400
            owner.docs[doc_id] = doc
            return 201


class LogstashHttpStandIn(_Server):
    """What Logstash's ``http`` input accepts (see the module docstring)."""

    def __init__(
        self, busy_requests: int = 0, refuse: int | None = None, poison: str | None = None
    ) -> None:
        """``busy_requests``: answer 429 to the first N requests; ``refuse``: answer this
        status to every request while it is not None (settable, e.g. 401 then 400);
        ``poison``: answer 400 to a request holding an event whose ``message`` contains it
        (an event Logstash's codec or filters cannot take)."""
        super().__init__(_LogstashHandler)
        self.poison = poison
        self.events: list[dict[str, Any]] = []
        self.busy_left = busy_requests
        self.busy_answers = 0
        self.refuse = refuse
        self.refused = 0
        self.problems: list[str] = []


class _LogstashHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        owner: LogstashHttpStandIn = self.server.owner  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with owner.lock:
            if owner.refuse is not None:
                owner.refused += 1
                self._reply(owner.refuse, "refused (injected)")
                return
            if owner.busy_left > 0:
                owner.busy_left -= 1
                owner.busy_answers += 1
                self._reply(429, "Too Many Requests")
                return
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype != "application/json":
            owner.problems.append(f"content type {ctype!r}: the json codec would not be used")
            self._reply(400, "unsupported")
            return
        try:
            data = json.loads(body)
        except ValueError as exc:
            owner.problems.append(f"body is not JSON: {exc}")
            self._reply(400, "bad json")
            return
        events = data if isinstance(data, list) else [data]
        if not all(isinstance(e, dict) for e in events):
            owner.problems.append("array element that is not an object")
            self._reply(400, "bad event")
            return
        if owner.poison and any(owner.poison in str(e.get("message", "")) for e in events):
            self._reply(400, "bad event (injected)")
            return
        with owner.lock:
            owner.events.extend(events)
        self._reply(200, "ok")


class LogstashTcpStandIn:
    """What the ``tcp`` input with ``codec => json_lines`` reads (see the module docstring)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.events: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._closed = False

    def __enter__(self) -> LogstashTcpStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self.sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    try:
                        event = json.loads(line)
                    except ValueError as exc:
                        self.problems.append(f"not a JSON line: {exc}")
                        continue
                    if not isinstance(event, dict):
                        self.problems.append("JSON line is not an object")
                        continue
                    with self.lock:
                        self.events.append(event)
        if buf.strip():
            self.problems.append("unterminated last line (json_lines waits for the newline)")


def es_count(url: str, index: str) -> int:
    """Documents in ``index`` after a refresh (0 while it does not exist)."""
    from elasticsearch import Elasticsearch, NotFoundError

    es = Elasticsearch(url, request_timeout=10)
    try:
        es.indices.refresh(index=index)
        return int(es.count(index=index)["count"])
    except NotFoundError:
        return 0
    finally:
        es.close()


def es_search(url: str, index: str, query: dict[str, Any], size: int = 10) -> list[dict[str, Any]]:
    from elasticsearch import Elasticsearch

    with Elasticsearch(url, request_timeout=10) as es:
        es.indices.refresh(index=index)
        hits = es.search(index=index, query=query, size=size)["hits"]["hits"]
        return [h["_source"] | {"_id": h["_id"]} for h in hits]


def dataset_for(queue: str) -> str:
    """A data-stream dataset name from a queue name (no '-' allowed)."""
    return queue.replace("-", "_")


__all__ = [
    "INJECTED_TYPES",
    "REPO",
    "BulkStandIn",
    "CollectorProcess",
    "LogstashHttpStandIn",
    "LogstashTcpStandIn",
    "amqp_queue_url",
    "dataset_for",
    "ecs_record",
    "es_count",
    "es_search",
    "log_through_handler",
    "metric_sum",
    "publish",
    "write_config",
]
