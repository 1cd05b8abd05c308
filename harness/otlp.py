"""A local OTLP/HTTP logs receiver: it stands in for an OpenTelemetry Collector in the tests.

It is *not* the OpenTelemetry Collector (a Go program this project cannot install); it speaks
the part of OTLP/HTTP the collector's ``otlp`` receiver speaks for logs: ``POST /v1/logs`` with
an ``ExportLogsServiceRequest`` as protobuf (``application/x-protobuf``) or OTLP/JSON
(``application/json``, hex trace/span ids), optionally gzip-encoded, parsed with the official
``opentelemetry-proto`` messages, answered with an ``ExportLogsServiceResponse`` in the same
encoding. A body that does not parse gets 400, as the real receiver answers.

For the tests it counts records (by their ``log.record.uid`` attribute, so duplicates show),
keeps what it received, and can be told to misbehave: answer the next N requests with a status
(503 with ``Retry-After``...), answer with a partial success, refuse (400) requests holding
given records, or go down and come back up on the same port. For a real collector, set
``MQLOGGING_OTLP_URL`` (see tests/collector/test_otlp.py).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from mqlogging.collector.sinks.otlp_records import UID_ATTRIBUTE, from_json

__all__ = ["OtlpReceiver", "ReceivedLog", "plain"]


def plain(value: AnyValue) -> Any:
    """An ``AnyValue`` as a plain Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


@dataclass
class ReceivedLog:
    """One log record as the receiver got it (values made plain for assertions)."""

    uid: str
    time_unix_nano: int
    severity_number: int
    severity_text: str
    body: Any
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    trace_id: str
    span_id: str
    flags: int


@dataclass
class _Script:
    """What the receiver answers next (all guarded by the receiver's lock)."""

    fail: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    partial: list[int] = field(default_factory=list)
    poison: set[str] = field(default_factory=set)  # uids whose request gets 400


class OtlpReceiver:
    """``with OtlpReceiver() as rx: ... rx.url`` (``http://127.0.0.1:PORT/v1/logs``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.logs: list[ReceivedLog] = []
        self.uids: Counter[str] = Counter()
        self.requests = 0
        self.statuses: Counter[int] = Counter()
        self.content_types: Counter[str] = Counter()
        self.encodings: Counter[str] = Counter()
        self.headers_seen: list[dict[str, str]] = []
        self.answered: list[tuple[float, int]] = []  # (time.monotonic(), status) per request
        self.script = _Script()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._start()
        self.url = f"http://127.0.0.1:{self.port}/v1/logs"

    def _start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.daemon_threads = True
        server.owner = self  # type: ignore[attr-defined]
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- control ------------------------------------------------------------------------------

    def down(self) -> None:
        """Stop listening (connections are refused until :meth:`up`)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def up(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            self._start()

    def fail_next(self, count: int, status: int = 503, retry_after: str | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (and ``Retry-After``), storing
        nothing."""
        self.answer_next(count, status, {"Retry-After": retry_after} if retry_after else {})

    def answer_next(
        self, count: int, status: int, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        """Answer the next ``count`` requests with this status, headers and body, storing
        nothing (e.g. a proxy's login page: 200, text/html)."""
        with self.lock:
            self.script.fail += [(status, headers or {}, body)] * count

    def partial_next(self, rejected: int) -> None:
        """Answer the next request with a partial success rejecting ``rejected`` records (the
        last ones of the request are not stored)."""
        with self.lock:
            self.script.partial.append(rejected)

    def refuse(self, uids: set[str]) -> None:
        """Answer 400 to every request holding a record with one of these ``log.record.uid``
        values (a receiver refusing those records), storing nothing of that request."""
        with self.lock:
            self.script.poison |= uids

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.logs)

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.uids.values() if n > 1)

    # -- serving ------------------------------------------------------------------------------

    def handle(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """One request: (status, extra headers, response body)."""
        content_type = headers.get("content-type", "")
        is_json = content_type.startswith("application/json")
        with self.lock:
            self.requests += 1
            self.content_types[content_type] += 1
            self.encodings[headers.get("content-encoding", "")] += 1
            self.headers_seen.append(headers)
            if self.script.fail:
                status, extra, answer = self.script.fail.pop(0)
                self.statuses[status] += 1
                self.answered.append((time.monotonic(), status))
                return status, extra, answer
            rejected = self.script.partial.pop(0) if self.script.partial else 0
        try:
            if headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            request = from_json(json.loads(body)) if is_json else _parse(body)
        except Exception as exc:
            with self.lock:
                self.statuses[400] += 1
            return 400, {}, f"cannot parse request: {exc}".encode()
        logs = list(_records(request))
        kept = logs[: len(logs) - rejected] if rejected else logs
        with self.lock:
            if any(r.uid in self.script.poison for r in logs):
                self.statuses[400] += 1
                self.answered.append((time.monotonic(), 400))
                return 400, {}, b"invalid record (test)"
            self.statuses[200] += 1
            self.answered.append((time.monotonic(), 200))
            self.logs += kept
            self.uids.update(r.uid for r in kept)
        answer = ExportLogsServiceResponse()
        if rejected:
            answer.partial_success.rejected_log_records = rejected
            answer.partial_success.error_message = f"{rejected} records refused (test)"
        if is_json:
            from google.protobuf.json_format import MessageToJson

            return 200, {"Content-Type": "application/json"}, MessageToJson(answer).encode()
        return 200, {"Content-Type": "application/x-protobuf"}, answer.SerializeToString()


def _parse(body: bytes) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    request.ParseFromString(body)
    return request


def _records(request: ExportLogsServiceRequest) -> Any:
    for resource_logs in request.resource_logs:
        resource = {kv.key: plain(kv.value) for kv in resource_logs.resource.attributes}
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attributes = {kv.key: plain(kv.value) for kv in record.attributes}
                yield ReceivedLog(
                    uid=str(attributes.get(UID_ATTRIBUTE, "")),
                    time_unix_nano=record.time_unix_nano,
                    severity_number=int(record.severity_number),
                    severity_text=record.severity_text,
                    body=plain(record.body),
                    attributes=attributes,
                    resource=resource,
                    scope=scope_logs.scope.name,
                    trace_id=record.trace_id.hex(),
                    span_id=record.span_id.hex(),
                    flags=record.flags,
                )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real receiver

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        owner: OtlpReceiver = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        extra: dict[str, str]
        if self.path.split("?")[0] != "/v1/logs":
            status, extra, answer = 404, {}, b"not found"
        else:
            status, extra, answer = owner.handle(body, headers)
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
