"""OTLP sink: forward records to an OpenTelemetry Collector over OTLP/HTTP.

The OpenTelemetry Collector has no RabbitMQ receiver; this sink is the bridge. Each batch is one
``POST`` of an ``ExportLogsServiceRequest`` (the official ``opentelemetry-proto`` message,
mapped by :mod:`.otlp_records`) to ``/v1/logs``, as protobuf (``application/x-protobuf``, the
default) or OTLP/JSON (``application/json``), gzip-compressed unless ``compression = "none"``.
The HTTP client is httpx (a thread-safe connection pool, TLS verification on by default).

What each answer means, following the OTLP/HTTP specification:

- **2xx**: the receiver has the records -> ``DONE`` (the broker message is acked), provided
  the body is an ``ExportLogsServiceResponse`` (or empty): a 2xx with another body (a proxy's
  login page, another service at the URL) says nothing about the records: an outage, retried.
- **2xx with partial success** (``partial_success.rejected_log_records = N > 0``): the receiver
  took some records and refused N, *without saying which*; the specification forbids retrying
  such a request. With ``partial_success = "dead_letter"`` (the default, the safe choice) every
  record of the request is dead-lettered with the reason (N of M rejected, the receiver's
  message), so each refused record is kept somewhere and counted; the price is that up to M-N
  records that the receiver did keep are also in the dead letters — replaying them creates
  duplicates that carry the same ``log.record.uid`` attribute, so they can be told apart. With
  ``"accept"`` the batch counts as done and only the N is counted and logged (for receivers that
  refuse records on purpose, e.g. by a filter). Either way the N is counted in the
  ``sink_rejected_records`` metric and logged. A partial success with N = 0 is a warning: done.
- **429, 502, 503, 504**: retried (only those records), never sooner than the ``Retry-After``
  the receiver sent (seconds or an HTTP date, capped at :data:`MAX_RETRY_AFTER`).
- **401, 403, 404, 407** and **3xx** (redirects are not followed): the configuration is wrong
  (credentials, URL), not a record: an outage, retried, ``/readyz`` not ready until a write
  succeeds; the broker keeps the messages.
- **400, 413** for several records: the batch is split in halves, depth first, to find the
  refused record(s), which are dead-lettered. A 400 is only blamed on a record once the
  receiver has accepted some other request of the same write; if it accepted none before
  :data:`_BLIND_REFUSALS` single records were refused, it refuses everything: the request is
  the problem (an outage, retried), not the records. Any other 4xx: dead-lettered. Other 5xx
  and network errors or timeouts: retried.
- A record that cannot be expressed in OTLP at all (protobuf refuses one of its values) is
  dead-lettered alone; it never fails the request of the others.

Headers (e.g. ``Authorization``) come from ``headers = "k1=v1,k2=v2"`` (the format of
``OTEL_EXPORTER_OTLP_HEADERS``; values may be percent-encoded) or ``MQLOGGING_OTLP_HEADERS`` in
the environment; they are a :class:`~mqlogging.backends.endpoints.Secret`, never printed.
"""

from __future__ import annotations

import email.utils
import gzip
import logging
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

from ..._json import dumps
from ...backends.endpoints import Secret
from ...errors import ConfigurationError, MissingDependencyError
from .._table import (
    FromTable,
    PemPath,
    PositiveFloat,
    PositiveInt,
    Table,
    check_fields,
    read_table,
    shared_env,
)
from ._urls import check_http_url, client_ssl_context, redact_http
from .base import DONE, Outcome, Record, Result, Sink

if TYPE_CHECKING:
    import httpx

    from ..metrics import CollectorMetrics

__all__ = ["MAX_RETRY_AFTER", "OtlpSink", "OtlpSinkConfig", "parse_headers", "parse_retry_after"]

log = logging.getLogger("mqlogging.collector")

MAX_RETRY_AFTER: Final = 300.0
"""Longest ``Retry-After`` honoured (seconds): a receiver cannot park the collector for a day."""

_RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
_OUTAGE_STATUSES: Final = frozenset({401, 403, 404, 407})
_DEFAULT_PATH: Final = "/v1/logs"
_CONTENT_TYPES: Final = {"protobuf": "application/x-protobuf", "json": "application/json"}
_REFUSED_ALONE: Final = "400-alone"  # provisional status, settled by OtlpSink._settled
_BLIND_REFUSALS: Final = 3
"""Single records refused with 400 before the receiver accepted anything in a write: it is
refusing every request (an outage), not these records. Splitting depth first reaches them after
about log2(batch) requests, so a receiver refusing everything costs about 2 x log2(batch)
requests per attempt (14 for 64 records, about 25 for 1,000); poison records anywhere in a
batch with good ones are found, not taken for an outage."""


def parse_headers(text: str) -> dict[str, str]:
    """``"k1=v1,k2=v2"`` (``OTEL_EXPORTER_OTLP_HEADERS``' format, values percent-decoded) as a
    dict. A malformed entry is refused without showing its value (it may be a token)."""
    headers: dict[str, str] = {}
    for number, entry in enumerate(text.split(","), 1):
        if not entry.strip():
            continue
        name, sep, value = entry.partition("=")
        if not sep or not name.strip():
            msg = f'headers: entry {number} is not "name=value" (value not shown: it may be secret)'
            raise ConfigurationError(msg)
        headers[unquote(name.strip())] = unquote(value.strip())
    return headers


def parse_retry_after(value: str | None, now: float | None = None) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), between 0
    and :data:`MAX_RETRY_AFTER`; 0 when absent or unreadable."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is true, float("²") raises
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    now = time.time() if now is None else now
    return max(0.0, min(when.timestamp() - now, MAX_RETRY_AFTER))


@dataclass(frozen=True, slots=True, kw_only=True)
class OtlpSinkConfig(FromTable):
    """An OpenTelemetry Collector's OTLP/HTTP logs endpoint (see the module docstring).

    ``url``: ``http(s)://host:4318`` (``/v1/logs`` is added when the path is empty) or the full
    URL of the logs endpoint. ``MQLOGGING_OTLP_HEADERS`` sets the headers of every otlp sink.
    """

    type: Literal["otlp"] = "otlp"
    name: str = ""
    url: str = "http://127.0.0.1:4318/v1/logs"
    encoding: Literal["protobuf", "json"] = "protobuf"
    compression: Literal["gzip", "none"] = "gzip"
    headers: Secret | None = None
    ca_certs: PemPath | None = None
    verify: bool = True
    certfile: PemPath | None = None
    keyfile: PemPath | None = None
    timeout: PositiveFloat = 10.0
    max_request_bytes: PositiveInt = 4 * 1024 * 1024
    partial_success: Literal["dead_letter", "accept"] = "dead_letter"

    def __post_init__(self) -> None:
        check_fields(self)
        check_http_url(self.url, "url")
        if urlsplit(self.url).scheme not in ("http", "https"):
            msg = f"url={redact_http(self.url)!r}: use http(s)://host:4318/v1/logs"
            raise ConfigurationError(msg)
        if self.keyfile and not self.certfile:
            msg = "keyfile is set without certfile"
            raise ConfigurationError(msg)
        if self.headers is not None:
            parse_headers(self.headers.reveal())

    @classmethod
    def from_table(cls, table: Table) -> OtlpSinkConfig:
        """Read one ``[[sinks]]`` table; ``MQLOGGING_OTLP_HEADERS`` applies to every otlp sink,
        ``MQLOGGING_SINKS_<N>_HEADERS`` still wins over it."""
        return read_table(cls, table.merged(shared_env(table.env, "OTLP", ("headers",))))

    @property
    def endpoint(self) -> str:
        """The logs endpoint: ``url``, with ``/v1/logs`` when its path is empty."""
        parts = urlsplit(self.url)
        if parts.path in ("", "/"):
            parts = parts._replace(path=_DEFAULT_PATH)
        return urlunsplit(parts)

    @property
    def label(self) -> str:
        return self.name or f"otlp:{redact_http(self.endpoint)}"

    def build(self, metrics: CollectorMetrics | None = None) -> Sink:
        """The sink (imports httpx and opentelemetry-proto now)."""
        counter = None if metrics is None else metrics.sink_rejected_records.labels(self.label)
        return OtlpSink(self, rejected_counter=counter)


def _ssl_context(config: OtlpSinkConfig) -> ssl.SSLContext:
    return client_ssl_context(
        config.ca_certs, verify=config.verify, certfile=config.certfile, keyfile=config.keyfile
    )


class _Mapped(NamedTuple):
    """A record with its OTLP mapping, made once per write (requests may be split)."""

    record: Record
    log: Any  # otlp_records.MappedRecord (the module is imported lazily)


@dataclass(slots=True)
class _Probe:
    """What one write learnt about the receiver while splitting refused requests."""

    accepted: bool = False  # some request of this write got a 2xx
    refused_alone: int = 0  # single records refused with 400 so far


class OtlpSink(Sink):
    """POSTs each batch as one ``ExportLogsServiceRequest``. Thread-safe (httpx's pool)."""

    def __init__(self, config: OtlpSinkConfig, *, rejected_counter: Any = None) -> None:
        try:
            import httpx

            from . import otlp_records
        except ImportError as exc:
            raise MissingDependencyError(exc.name or "opentelemetry-proto", "otlp") from exc
        self._httpx = httpx
        self._records = otlp_records
        self.config = config
        self.name = config.label
        self._url = config.endpoint
        parts = urlsplit(self._url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        headers = {"Content-Type": _CONTENT_TYPES[config.encoding]}
        if config.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        if config.headers is not None:
            headers.update(parse_headers(config.headers.reveal()))
        verify: ssl.SSLContext | bool = _ssl_context(config) if parts.scheme == "https" else True
        self._client = httpx.Client(headers=headers, timeout=config.timeout, verify=verify)
        self._rejected = rejected_counter
        self._outage = ""  # why the last write met a request-level refusal ("" when it did not)

    # -- encoding -----------------------------------------------------------------------------

    def _body(self, records: Sequence[_Mapped]) -> bytes:
        request = self._records.assemble(m.log for m in records)
        if self.config.encoding == "json":
            raw = dumps(self._records.to_json(request))
        else:
            raw = request.SerializeToString()
        return gzip.compress(raw, compresslevel=5) if self.config.compression == "gzip" else raw

    def _rejected_count(self, response: httpx.Response) -> tuple[int, str] | None:
        """(rejected_log_records, error_message) of an ``ExportLogsServiceResponse``; (0, "")
        for an empty body. ``None`` for a body that is not such an answer (an HTML login page
        of a proxy, another service at the URL): its 2xx does not say the records are stored,
        and acking them would lose them."""
        from google.protobuf.json_format import Parse, ParseError
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceResponse,
        )

        content = response.content
        if not content:
            return 0, ""
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        answer = ExportLogsServiceResponse()
        try:
            if content_type == "application/json":
                Parse(content.decode("utf-8", "replace"), answer, ignore_unknown_fields=True)
            elif content_type in ("", "application/x-protobuf", "application/protobuf"):
                answer.ParseFromString(content)
            else:
                return None
        except (DecodeError, ParseError, ValueError):
            return None
        partial = answer.partial_success
        return int(partial.rejected_log_records), partial.error_message

    # -- writing ------------------------------------------------------------------------------

    def write(self, records: Sequence[Record]) -> list[Result]:
        if not records:
            return []
        results: dict[int, Result] = {}
        mapped: list[tuple[int, _Mapped]] = []
        for index, record in enumerate(records):
            try:
                mapped.append(
                    (index, _Mapped(record, self._records.to_log_record(record.doc, record.id)))
                )
            except (ValueError, TypeError, OverflowError) as exc:
                reason = f"cannot be expressed in OTLP: {type(exc).__name__}: {exc}"
                results[index] = Result(Outcome.REJECT, "unmappable", reason[:500])
        probe = _Probe()
        for chunk in self._chunks(mapped):
            answers = self._post([m for _, m in chunk], probe)
            results.update(zip((i for i, _ in chunk), answers, strict=True))
        ordered = [self._settled(results[i], probe) for i in range(len(records))]
        self._outage = next((r.reason for r in ordered if r.reason.startswith("outage: ")), "")
        return ordered

    def _chunks(self, mapped: list[tuple[int, _Mapped]]) -> list[list[tuple[int, _Mapped]]]:
        """``mapped`` in requests of at most ``max_request_bytes`` (one record at least)."""
        chunks: list[list[tuple[int, _Mapped]]] = []
        size = 0
        for item in mapped:
            if not chunks or size + item[1].record.size > self.config.max_request_bytes:
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += item[1].record.size
        return chunks

    @staticmethod
    def _settled(result: Result, probe: _Probe) -> Result:
        """A record refused alone with 400 is dead-lettered only if the receiver accepted
        something else in this write; otherwise it refuses everything: an outage."""
        if result.status != _REFUSED_ALONE:
            return result
        if probe.accepted:
            return Result(Outcome.REJECT, "400", result.reason)
        return Result(Outcome.RETRY, "400", "outage: 400 for every request, none accepted")

    def _send(self, records: Sequence[_Mapped]) -> httpx.Response | Result:
        """One POST: the response, or the ``RETRY`` result of a request that got none."""
        try:
            return self._client.post(self._url, content=self._body(records))
        except self._httpx.TimeoutException as exc:
            return Result(Outcome.RETRY, "timeout", f"timeout: {exc}")
        except self._httpx.HTTPError as exc:
            return Result(Outcome.RETRY, "unavailable", f"unavailable: {exc}")

    def _post(
        self, records: Sequence[_Mapped], probe: _Probe, *, split: bool = False
    ) -> list[Result]:
        """One request for ``records``; a 400/413 for several is split in halves, depth first
        (see the module docstring). ``split``: ``records`` is half of a refused request."""
        response = self._send(records)
        if isinstance(response, Result):
            return [response] * len(records)
        status = response.status_code
        if 200 <= status < 300:
            results = self._accepted(records, response)
            probe.accepted = probe.accepted or results[0].outcome is not Outcome.RETRY
            return results
        if status in (400, 413) and len(records) > 1:
            if status == 400 and probe.refused_alone >= _BLIND_REFUSALS and not probe.accepted:
                reason = f"outage: 400 for every request, none accepted: {response.text[:200]}"
                return [Result(Outcome.RETRY, "400", reason)] * len(records)
            half = len(records) // 2
            first = self._post(records[:half], probe, split=True)
            return first + self._post(records[half:], probe, split=True)
        if status == 400 and split:  # blamed on the record only if another was accepted
            probe.refused_alone += 1
            return [Result(Outcome.REJECT, _REFUSED_ALONE, f"400 {response.text[:300]}".strip())]
        return [self._refused(status, response)] * len(records)

    def _accepted(self, records: Sequence[_Mapped], response: httpx.Response) -> list[Result]:
        """A 2xx: done, unless it is a partial success (see the module docstring) or not an
        OTLP answer at all (an outage: retried, not ready)."""
        counted = self._rejected_count(response)
        if counted is None:
            content_type = response.headers.get("content-type", "none")
            reason = (
                f"outage: {response.status_code} with a body that is not an OTLP answer "
                f"(content-type {content_type}): is the URL an OTLP/HTTP logs endpoint? "
                f"{response.text[:100]!r}"
            )
            return [Result(Outcome.RETRY, "not_otlp", reason)] * len(records)
        rejected, message = counted
        if rejected <= 0:
            if message:
                log.warning("sink %s: receiver warning: %s", self.name, message[:300])
            return [DONE] * len(records)
        if self._rejected is not None:
            self._rejected.inc(rejected)
        reason = (
            f"partial success: the receiver rejected {rejected} of {len(records)} records "
            f"without saying which: {message[:300]}"
        )
        log.warning("sink %s: %s (policy: %s)", self.name, reason, self.config.partial_success)
        if self.config.partial_success == "accept":
            return [Result(Outcome.DONE, "partial_accepted", reason)] * len(records)
        return [Result(Outcome.REJECT, "partial", reason)] * len(records)

    def _refused(self, status: int, response: httpx.Response) -> Result:
        """The result for a non-2xx answer that is not split further."""
        text = f"{status} {response.text[:300]}".strip()
        if status in _RETRY_STATUSES:
            wait = parse_retry_after(response.headers.get("retry-after"))
            return Result(Outcome.RETRY, str(status), text, retry_after=wait)
        if status in _OUTAGE_STATUSES:
            return Result(Outcome.RETRY, str(status), f"outage: {text}")
        if 300 <= status < 400:  # not followed: set url to where the receiver points
            where = redact_http(response.headers.get("location", "?"))
            return Result(Outcome.RETRY, str(status), f"outage: {status} redirect to {where}")
        if 400 <= status < 500:
            return Result(Outcome.REJECT, str(status), text)
        return Result(Outcome.RETRY, str(status), text)

    def check(self) -> bool:
        """Reachable, and the last write was not refused as a whole (auth, URL, ...)."""
        if self._outage:
            return False
        try:
            with socket.create_connection((self._host, self._port), timeout=2.0):
                return True
        except OSError:
            return False

    def close(self) -> None:
        self._client.close()
