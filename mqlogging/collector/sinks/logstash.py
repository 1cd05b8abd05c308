"""Logstash sinks: the ``http`` input (acknowledged) and the ``tcp`` input (``json_lines``).

HTTP (preferred). One ``POST`` per batch, ``Content-Type: application/json``, the body a JSON
*array* of events: the ``http`` input decodes ``application/json`` with its ``json`` codec, which
turns a top-level array into one event per element (no ``additional_codecs`` setting needed).
Logstash answers ``200 ok`` once the events are in its pipeline queue (with a persistent queue,
on disk), ``429`` when the queue is full (back off: we retry), ``401``/``403``/``404`` when
credentials or the URL are wrong (an outage, not a poison message: retried, ``check()`` false
until a write succeeds, the broker keeps the messages). ``413``/``400`` split the batch until the
offending event is alone, which is then dead-lettered — unless every event of the batch is
refused alike, which says the request, not one event, is the problem: that is an outage too.
Basic auth and TLS (CA, ``verify``, client certificate) are supported.

TCP (``tcp://host:port``, ``tcp+ssl://``). Events are written as JSON lines, which is what the
``tcp`` input with ``codec => json_lines`` reads. **TCP has no acknowledgement**: a record counts
as delivered once ``sendall`` returned, i.e. the kernel took it; if Logstash dies before
processing what it had buffered, those records are lost although the broker message was acked.
Use the HTTP input (with a persistent queue) when that matters.
"""

from __future__ import annotations

import base64
import http.client
import select
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from ...backends.endpoints import Secret
from ...errors import ConfigurationError
from .._table import FromTable, PemPath, PositiveFloat, Table, check_fields, read_table, shared_env
from ._urls import check_http_url, client_ssl_context, redact_http
from .base import DONE, Outcome, Record, Result, Sink

if TYPE_CHECKING:
    from ..metrics import CollectorMetrics

# Answers that would refuse any event: the configuration or the peer is wrong, not one record.
_OUTAGE_STATUSES = {401, 403, 404}

__all__ = ["LogstashHttpSink", "LogstashSinkConfig", "LogstashTcpSink", "make_logstash_sink"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LogstashSinkConfig(FromTable):
    """Logstash ``http`` input (``http://`` / ``https://``; acknowledged) or ``tcp`` input with
    the ``json_lines`` codec (``tcp://`` / ``tcp+ssl://``; no acknowledgement: a record counts as
    delivered once the kernel took it, so a Logstash crash can lose what it had not processed).

    ``MQLOGGING_LOGSTASH_USERNAME`` and ``MQLOGGING_LOGSTASH_PASSWORD`` set the credentials of
    every ``logstash`` sink (:meth:`from_table`).
    """

    type: Literal["logstash"] = "logstash"
    name: str = ""
    url: str = "http://127.0.0.1:8080/"
    username: str | None = None
    password: Secret | None = None
    ca_certs: PemPath | None = None
    verify: bool = True
    certfile: PemPath | None = None
    keyfile: PemPath | None = None
    timeout: PositiveFloat = 30.0
    max_request_bytes: int = 10 * 1024 * 1024

    def __post_init__(self) -> None:
        check_fields(self)
        scheme = urlsplit(self.url).scheme
        if scheme not in ("http", "https", "tcp", "tcp+ssl"):
            msg = (
                f"url={redact_http(self.url)!r}: use http(s)://host:port/ for the http input "
                "or tcp://host:port (tcp+ssl://) for the tcp input"
            )
            raise ConfigurationError(msg)
        check_http_url(self.url, "url", require_port=scheme.startswith("tcp"))
        if self.keyfile and not self.certfile:
            msg = "keyfile is set without certfile"
            raise ConfigurationError(msg)

    @classmethod
    def from_table(cls, table: Table) -> LogstashSinkConfig:
        """Read one ``[[sinks]]`` table; ``MQLOGGING_LOGSTASH_*`` credentials apply to it (to
        every logstash sink), ``MQLOGGING_SINKS_<N>_*`` still win over them."""
        shared = shared_env(table.env, "LOGSTASH", ("username", "password"))
        return read_table(cls, table.merged(shared))

    @property
    def protocol(self) -> Literal["http", "tcp"]:
        return "tcp" if urlsplit(self.url).scheme.startswith("tcp") else "http"

    @property
    def label(self) -> str:
        return self.name or f"logstash:{redact_http(self.url)}"

    def build(self, metrics: CollectorMetrics | None = None) -> Sink:
        """The ``tcp`` or the ``http`` sink, by the URL's scheme."""
        return make_logstash_sink(self)


def make_logstash_sink(config: LogstashSinkConfig) -> Sink:
    return LogstashTcpSink(config) if config.protocol == "tcp" else LogstashHttpSink(config)


def _ssl_context(config: LogstashSinkConfig) -> ssl.SSLContext:
    return client_ssl_context(
        config.ca_certs, verify=config.verify, certfile=config.certfile, keyfile=config.keyfile
    )


def _reachable(host: str, port: int) -> bool:
    """Readiness: Logstash accepts a TCP connection (what both inputs need first)."""
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


class LogstashHttpSink(Sink):
    """POSTs each batch as a JSON array. Thread-safe: one keep-alive connection per thread."""

    def __init__(self, config: LogstashSinkConfig) -> None:
        self.config = config
        self.name = config.label
        parts = urlsplit(config.url)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._tls else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
        user = config.username if config.username is not None else parts.username
        password = config.password.reveal() if config.password else (parts.password or "")
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._context = _ssl_context(config) if self._tls else None
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._outage = ""  # why the last write met a request-level refusal ("" when it did not)

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._tls:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.config.timeout, context=self._context
                )
            else:
                conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self.config.timeout
                )
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def write(self, records: Sequence[Record]) -> list[Result]:
        if not records:
            return []
        limit = self.config.max_request_bytes
        results: list[Result] = []
        chunk: list[Record] = []
        size = 0
        for record in records:
            n = len(record.encoded()) + 1
            if chunk and size + n > limit:
                results += self._post(chunk)
                chunk, size = [], 0
            chunk.append(record)
            size += n
        results += self._post(chunk)
        self._outage = next((r.reason for r in results if r.reason.startswith("outage: ")), "")
        return results

    def _post(self, records: Sequence[Record]) -> list[Result]:
        body = b"[" + b",".join(r.encoded() for r in records) + b"]"
        try:
            status, text = self._request(body)
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            kind = "timeout" if isinstance(exc, TimeoutError | socket.timeout) else "unavailable"
            return [Result(Outcome.RETRY, kind, f"{kind}: {exc}")] * len(records)
        if 200 <= status < 300:
            return [DONE] * len(records)
        return self._not_taken(records, status, text)

    def _not_taken(self, records: Sequence[Record], status: int, text: str) -> list[Result]:
        """What to do with ``records`` that one request of all of them got ``status`` for."""
        if status == 400:
            return self._split_400(records, text) if len(records) > 1 else [self._lone_400(text)]
        if status == 413 and len(records) > 1:
            half = len(records) // 2
            return self._post(records[:half]) + self._post(records[half:])
        if status == 413:
            return [Result(Outcome.REJECT, "413", f"413 {text[:300]}".strip())]
        return self._refused(records, status, text)

    def _lone_400(self, text: str) -> Result:
        """A 400 for a request of one event: the event is the problem only if Logstash takes
        a request without it (an empty array, no event); else it refuses every request, an
        outage (a batch of one happens whenever one record is pending: it was dead-lettered
        while Logstash refused everything)."""
        status, _ = self._try([])
        if 200 <= status < 300:
            return Result(Outcome.REJECT, "400", f"400 {text[:300]}".strip())
        return Result(Outcome.RETRY, "400", f"outage: 400 for one event and for none: {text[:200]}")

    def _split_400(self, records: Sequence[Record], text: str) -> list[Result]:
        """A 400 for a batch: try each half once. If both are refused too, the request is the
        problem (an outage: retry), not one event; otherwise look for the culprit in the
        refused half only (issue #11: a blanket 400 must not dead-letter every record)."""
        half = len(records) // 2
        halves = (records[:half], records[half:])
        answers = [self._try(part) for part in halves]
        if all(status == 400 for status, _ in answers):
            reason = f"outage: 400 for both halves of {len(records)} events: {text[:200]}"
            return [Result(Outcome.RETRY, "400", reason)] * len(records)
        results: list[Result] = []
        for part, (status, reason) in zip(halves, answers, strict=True):
            if 200 <= status < 300:
                results += [DONE] * len(part)
            elif status == 400 and len(part) > 1:
                results += self._split_400(part, reason)
            elif status in (400, 413) and len(part) == 1:
                # The other half was not refused alike: this event is the problem.
                results.append(Result(Outcome.REJECT, str(status), f"{status} {reason[:300]}"))
            elif status == 413:
                results += self._post(part)
            else:
                results += self._refused(part, status, reason)
        return results

    def _try(self, records: Sequence[Record]) -> tuple[int, str]:
        """One POST of ``records``: (status, text); status 0 when the request failed."""
        body = b"[" + b",".join(r.encoded() for r in records) + b"]"
        try:
            return self._request(body)
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            return 0, f"unavailable: {exc}"

    def _refused(self, records: Sequence[Record], status: int, text: str) -> list[Result]:
        """``RETRY`` for a refusal that is not about one event (``outage:`` when it is the
        configuration's fault, so ``check()`` reports it)."""
        reason = f"{status} {text[:300]}".strip() if status else text
        if status in _OUTAGE_STATUSES:
            reason = f"outage: {reason}"
        return [Result(Outcome.RETRY, str(status or "unavailable"), reason)] * len(records)

    def _request(self, body: bytes) -> tuple[int, str]:
        # One retry on a stale keep-alive connection closed by the server between batches.
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request("POST", self._path, body=body, headers=self._headers)
                response = conn.getresponse()
                text = response.read().decode("utf-8", "replace")
                if response.will_close:
                    self._drop_connection()
                return response.status, text
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop_connection()
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def check(self) -> bool:
        """Reachable, and the last write was not refused as a whole (auth, URL, ...)."""
        return not self._outage and _reachable(self._host, self._port)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def _peer_closed(sock: socket.socket) -> bool:
    """True when the peer has closed (EOF or error pending); Logstash never talks on tcp."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        if isinstance(sock, ssl.SSLSocket):
            return True  # readable TLS socket: close_notify or EOF (the input never writes)
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class LogstashTcpSink(Sink):
    """Writes JSON lines on one TCP (optionally TLS) connection, reconnecting after errors.

    Delivery: "done" means the kernel accepted the bytes — see the module docstring.
    """

    def __init__(self, config: LogstashSinkConfig) -> None:
        self.config = config
        self.name = config.label
        parts = urlsplit(config.url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 5000
        self._context = _ssl_context(config) if parts.scheme == "tcp+ssl" else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self._host, self._port), timeout=self.config.timeout)
        if self._context is not None:
            sock = self._context.wrap_socket(sock, server_hostname=self._host)
        return sock

    def write(self, records: Sequence[Record]) -> list[Result]:
        if not records:
            return []
        payload = b"".join(r.encoded() + b"\n" for r in records)
        with self._lock:
            try:
                if self._sock is not None and _peer_closed(self._sock):
                    self._close_socket()  # don't write into a connection Logstash closed
                if self._sock is None:
                    self._sock = self._connect()
                self._sock.sendall(payload)
            except OSError as exc:
                self._close_socket()
                kind = (
                    "timeout" if isinstance(exc, TimeoutError | socket.timeout) else "unavailable"
                )
                return [Result(Outcome.RETRY, kind, f"{kind}: {exc}")] * len(records)
        return [DONE] * len(records)

    def _close_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def check(self) -> bool:
        return _reachable(self._host, self._port)

    def close(self) -> None:
        with self._lock:
            self._close_socket()
