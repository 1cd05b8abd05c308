"""Elasticsearch sink: ``_bulk`` with ``op_type=create`` and ``_id`` = record id.

Why ``create`` with our own id: a message redelivered after a collector crash (or consumed by
two competing collectors after a requeue) comes back as ``409 version_conflict``, which means
"already stored" — so the index can never hold a record twice, whatever the broker does.

Per-item classification (we own it; ``helpers.streaming_bulk`` only retries 429, sleeps in the
caller and reorders). Only an error about the document itself may dead-letter it; an error
about the index, the cluster or our credentials is an outage that every document would hit, so
dead-lettering would empty the queue into the dead letters (issue #11, defect 7):

- 2xx, 409 → ``DONE`` (409 reported with status ``conflict``);
- 400 whose error is about the document (mapping / parse errors) → ``REJECT`` (dead letter);
- everything else → ``RETRY``: 429, 5xx, 408, and the request-level errors — 401/403 (auth,
  forbidden, cluster blocks), 404 (index missing) and the 400s that name the index
  (``index_closed_exception``, ``invalid_index_name_exception``, ...). Request-level errors
  also make :meth:`ElasticsearchSink.check` false, so ``/readyz`` reports the outage;
- whole-request 413, or a whole-request 400 naming a document parse error → the batch is split
  in halves until the culprit is alone (then ``REJECT``); any other whole-request error →
  ``RETRY`` for every record;
- connection errors and timeouts → ``RETRY`` for every record of the request.

Index choice (``mode = "index"``): the record's own time (:func:`record_time`), clamped to a
window around now, so a redelivery across midnight lands in the same index and an arbitrary
date cannot create an arbitrary index. Data streams route by ``@timestamp`` on the server side;
a record without one (the ``flat`` schema) gets its own ``timestamp`` as ``@timestamp``, the
receive time only when it has none.

Works with the 8.x and 9.x clients (use the client major that matches the cluster). Against the
``noida-db`` stand-in, ``_bulk`` into a ``logs-*-*`` name creates a plain index (it has no
``_data_stream`` API and no ILM) and index templates are stored and applied; everything the sink
needs (bulk create, per-item 409/400, templates) works there.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from ...backends.endpoints import Secret
from ...errors import ConfigurationError, MissingDependencyError
from ...wire import read_meta
from .._table import FromTable, PemPath, PositiveFloat, Table, check_fields, read_table, shared_env
from ._urls import check_http_url, redact_http
from .base import DONE, Outcome, Record, Result, Sink, dumps

if TYPE_CHECKING:
    from ..metrics import CollectorMetrics

__all__ = ["ElasticsearchSink", "ElasticsearchSinkConfig", "record_time"]

log = logging.getLogger("mqlogging.collector")

_CONFLICT = Result(Outcome.DONE, "conflict")
# Statuses that mean "the request could not be served as configured" (not "this document").
_OUTAGE_STATUSES = {401, 403, 404}
# 400s about the index or cluster rather than the document: retried, reported as not ready.
_REQUEST_LEVEL_TYPES = {
    "index_closed_exception",
    "index_not_found_exception",
    "invalid_index_name_exception",
    "cluster_block_exception",
    "security_exception",
    "action_request_validation_exception",
}
# Words of an illegal_argument_exception's reason that name the cluster's configuration.
_CONFIGURATION_WORDS = ("write index", "pipeline", "data stream", "alias", "op_type")
# Whole-request 400s that can only come from one document: worth bisecting to find it.
_DOCUMENT_TYPES = {"document_parsing_exception", "mapper_parsing_exception"}


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ElasticsearchSinkConfig(FromTable):
    """Elasticsearch through the official client, ``_bulk`` with ``op_type=create``.

    ``mode = "data_stream"`` writes to ``logs-<dataset>-<namespace>`` (documents need
    ``@timestamp``; one is added from the receive time when missing); ``mode = "index"`` writes
    to ``index`` expanded with ``strftime`` on the record's own time (UTC; ``@timestamp``, or
    ``timestamp`` for the ``flat`` schema), e.g. ``mqlogging-%Y.%m.%d``, so a redelivery always
    lands in the same index. A record time more than ``index_window_days_back`` days before now
    or ``index_window_days_ahead`` days after it is not trusted to pick an index (arbitrary
    dates would create arbitrary indices): such a record goes to today's index and is counted
    (``index_time_out_of_window``). The default reaches back 30 days for spools shipped after
    a long time offline. ``install_template`` puts an index template at start.

    ``MQLOGGING_ES_API_KEY``, ``MQLOGGING_ES_USERNAME`` and ``MQLOGGING_ES_PASSWORD`` set the
    credentials of every ``elasticsearch`` sink (:meth:`from_table`).
    """

    type: Literal["elasticsearch"] = "elasticsearch"
    name: str = ""
    hosts: tuple[str, ...] = ("http://127.0.0.1:9200",)
    mode: Literal["data_stream", "index"] = "data_stream"
    dataset: str = "mqlogging"
    namespace: str = "default"
    index: str = "mqlogging-%Y.%m.%d"
    install_template: bool = False
    template_name: str = ""
    api_key: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    ca_certs: PemPath | None = None
    verify: bool = True
    client_cert: PemPath | None = None
    client_key: PemPath | None = None
    request_timeout: PositiveFloat = 30.0
    max_bulk_bytes: int = 10 * 1024 * 1024
    index_window_days_back: PositiveFloat = 30.0
    index_window_days_ahead: PositiveFloat = 1.0

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.hosts:
            msg = "hosts is empty; give at least one URL such as https://es1:9200"
            raise ConfigurationError(msg)
        for url in self.hosts:
            check_http_url(url, "hosts")
        self._check_names()
        self._check_credentials()
        if self.max_bulk_bytes < 1024:
            msg = "max_bulk_bytes must be at least 1024"
            raise ConfigurationError(msg)

    def _check_names(self) -> None:
        """Elasticsearch refuses upper case and these characters in index and stream names."""
        for part in ("dataset", "namespace"):
            value = getattr(self, part)
            if not value or any(c in value for c in '-\\/*?"<>| ,#:') or value != value.lower():
                msg = f"{part}={value!r}: use lower-case letters, digits, '_' and '.' only"
                raise ConfigurationError(msg)
        literal = re.sub(r"%.", "", self.index)
        if self.mode == "index" and (not self.index or literal != literal.lower()):
            msg = f"index={self.index!r}: Elasticsearch index names must be lower-case"
            raise ConfigurationError(msg)

    def _check_credentials(self) -> None:
        if self.api_key and (self.username or self.password):
            msg = "give either api_key or username/password, not both"
            raise ConfigurationError(msg)
        if (self.username is None) != (self.password is None):
            msg = "username and password go together; set both (password via MQLOGGING_ES_PASSWORD)"
            raise ConfigurationError(msg)
        if self.client_key and not self.client_cert:
            msg = "client_key is set without client_cert"
            raise ConfigurationError(msg)

    @classmethod
    def from_table(cls, table: Table) -> ElasticsearchSinkConfig:
        """Read one ``[[sinks]]`` table; ``MQLOGGING_ES_*`` credentials apply to it (to every
        elasticsearch sink), ``MQLOGGING_SINKS_<N>_*`` still win over them."""
        shared = shared_env(table.env, "ES", ("api_key", "username", "password"))
        return read_table(cls, table.merged(shared))

    @property
    def label(self) -> str:
        return self.name or f"elasticsearch:{redact_http(self.hosts[0])}"

    def build(self, metrics: CollectorMetrics | None = None) -> Sink:
        """The sink, counting records whose own time could not pick their index."""
        counter = None if metrics is None else metrics.index_time_out_of_window.labels(self.label)
        return ElasticsearchSink(self, out_of_window=None if counter is None else counter.inc)


# -- the sink ---------------------------------------------------------------------------------


def _utcnow_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def record_time(doc: dict[str, Any]) -> datetime | None:
    """The record's own time (UTC), or None when it has none that parses.

    The time is where the record's schema keeps it (:func:`mqlogging.wire.read_meta`:
    ``@timestamp`` for ecs and logstash, ``timestamp`` for flat), the same rule every
    reader uses.
    """
    return _parse_time(read_meta(doc).timestamp)


def _parse_time(value: str | None) -> datetime | None:
    """ISO-8601 text (``Z`` or an offset; naive means UTC) as a UTC datetime, else None.

    A time that exists in its own offset but not in UTC (``0001-01-01T00:00:00+05:00``) is
    None too: converting it later would raise on every attempt and stall the source.
    """
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if when.tzinfo is None:
            return when.replace(tzinfo=timezone.utc)
        return when.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


class ElasticsearchSink(Sink):
    """Writes records with the official client; thread-safe (the client is a connection pool)."""

    def __init__(
        self,
        config: ElasticsearchSinkConfig,
        *,
        out_of_window: Callable[[float], None] | None = None,
    ) -> None:
        """``out_of_window(n)`` counts records whose own time could not pick their index."""
        try:
            import elasticsearch
        except ImportError as exc:  # pragma: no cover - installed in the dev environment
            raise MissingDependencyError("elasticsearch", "elasticsearch") from exc
        self.config = config
        self.name = config.label
        self._es = elasticsearch
        kwargs: dict[str, Any] = {
            "request_timeout": config.request_timeout,
            "max_retries": 0,  # retries are ours, per item, with backoff
            "retry_on_timeout": False,
        }
        if config.api_key is not None:
            kwargs["api_key"] = config.api_key.reveal()
        if config.username is not None and config.password is not None:
            kwargs["basic_auth"] = (config.username, config.password.reveal())
        if config.ca_certs:
            kwargs["ca_certs"] = config.ca_certs
        if any(h.startswith("https") for h in config.hosts):
            kwargs["verify_certs"] = config.verify
            if not config.verify:
                kwargs["ssl_show_warn"] = False
        if config.client_cert:
            kwargs["client_cert"] = config.client_cert
        if config.client_key:
            kwargs["client_key"] = config.client_key
        self.client = elasticsearch.Elasticsearch(list(config.hosts), **kwargs)
        self._index_cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self._ds_index = f"logs-{config.dataset}-{config.namespace}"
        self._out_of_window = out_of_window or (lambda n: None)
        self._window_back = timedelta(days=config.index_window_days_back)
        self._window_ahead = timedelta(days=config.index_window_days_ahead)
        # A request-level error from the last write ("" when none): makes check() false.
        self._outage = ""

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.config.install_template:
            self.install_template()

    def install_template(self) -> None:
        """Put an index template for our indices (failures are logged: the sink still works)."""
        cfg = self.config
        if cfg.mode == "data_stream":
            patterns = [f"logs-{cfg.dataset}-*"]
        else:
            patterns = [_wildcard(cfg.index)]
        name = cfg.template_name or f"mqlogging-{cfg.dataset}"
        body: dict[str, Any] = {
            "index_patterns": patterns,
            "priority": 200,
            "template": {"mappings": _MAPPINGS},
            "_meta": {"managed_by": "mqlogging"},
        }
        if cfg.mode == "data_stream":
            body["data_stream"] = {}
        try:
            self.client.indices.put_index_template(name=name, **body)
            log.info("installed index template %s for %s", name, ", ".join(patterns))
        except Exception as exc:
            log.error("could not install index template %s on %s: %s", name, self.name, exc)

    def check(self) -> bool:
        """Reachable, and the last write met no request-level error (index closed or missing,
        auth, forbidden): pinging alone would call a cluster that rejects every write ready."""
        if self._outage:
            return False
        try:
            return bool(self.client.options(request_timeout=2.0).ping())
        except Exception:
            return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    # -- writing ------------------------------------------------------------------------------

    def write(self, records: Sequence[Record]) -> list[Result]:
        results: list[Result] = [DONE] * len(records)
        # Keep each request under max_bulk_bytes (ES rejects > http.max_content_length with 413).
        start = 0
        for chunk in _chunks(records, self.config.max_bulk_bytes):
            results[start : start + len(chunk)] = self._write(chunk)
            start += len(chunk)
        outage = next((r.reason for r in results if _is_outage(r)), "")
        if outage and not self._outage:
            log.error("sink %s: not ready: %s (retrying)", self.name, outage)
        elif self._outage and not outage:
            log.info("sink %s: writes succeed again", self.name)
        self._outage = outage
        return results

    def _write(self, records: Sequence[Record]) -> list[Result]:
        body = self._body(records)
        es = self._es
        try:
            response = self.client.bulk(operations=body)  # type: ignore[arg-type]  # ndjson bytes
        except es.ApiError as exc:
            return self._refused(records, exc)
        except es.ConnectionTimeout as exc:
            return [Result(Outcome.RETRY, "timeout", f"timeout: {exc}")] * len(records)
        except es.TransportError as exc:
            reason = f"unavailable: {_root_cause(exc)}"
            return [Result(Outcome.RETRY, "unavailable", reason)] * len(records)
        items = response.body.get("items") or []
        if len(items) != len(records):
            reason = f"bulk answered {len(items)} items for {len(records)} documents"
            return [Result(Outcome.RETRY, "invalid_response", reason)] * len(records)
        if not response.body.get("errors"):
            return [DONE] * len(records)
        return [_classify(item) for item in items]

    def _refused(self, records: Sequence[Record], exc: Any) -> list[Result]:
        """Results for a whole request the cluster refused (``exc``: the client's ApiError).

        A 413, or a 400 naming a document parse error, can only be one document's fault: the
        batch is split in halves until it is alone (``REJECT``). Anything else is ``RETRY``
        for every record.
        """
        status = int(exc.meta.status)
        about_document = status == 413 or (
            status == 400 and _error_type(exc.body) in _DOCUMENT_TYPES
        )
        if about_document and len(records) > 1:
            half = len(records) // 2
            return self._write(records[:half]) + self._write(records[half:])
        reason = _error_text(exc.body) or str(exc)
        if about_document:
            return [Result(Outcome.REJECT, str(status), f"{status} {reason}")]
        return [_retry(status, _error_type(exc.body), reason)] * len(records)

    def _body(self, records: Sequence[Record]) -> bytes:
        parts: list[bytes] = []
        data_stream = self.config.mode == "data_stream"
        now = datetime.now(timezone.utc)
        for record in records:
            doc = record.doc
            index = self._ds_index if data_stream else self.index_for(doc, now)
            parts.append(dumps({"create": {"_index": index, "_id": record.id}}))
            if "@timestamp" in doc:
                parts.append(record.encoded())
            else:  # data streams require @timestamp: the record's own time, else receive time
                parts.append(dumps({**doc, "@timestamp": _stamp(record_time(doc))}))
        parts.append(b"")
        return b"\n".join(parts)

    def index_for(self, doc: dict[str, Any], now: datetime | None = None) -> str:
        """The index for ``doc``: ``index`` formatted with the record's own time when it lies
        within the window around ``now`` (default: the current time), else with ``now``
        (counted through ``out_of_window``, once per write attempt)."""
        now = now or datetime.now(timezone.utc)
        when = record_time(doc)
        if when is None or not now - self._window_back <= when <= now + self._window_ahead:
            self._out_of_window(1)
            when = now
        when = when.astimezone(timezone.utc)
        day = when.strftime("%Y-%m-%d %H")  # hourly patterns are the finest we cache
        cached = self._index_cache.get(day)
        if cached is not None:
            return cached
        name = when.strftime(self.config.index)
        with self._lock:
            if len(self._index_cache) > 1000:
                self._index_cache.clear()
            self._index_cache[day] = name
        return name


def _classify(item: dict[str, Any]) -> Result:
    action: dict[str, Any] = item.get("create") or next(iter(item.values()), {})
    status = int(action.get("status", 500))
    if 200 <= status < 300:
        return DONE
    if status == 409:
        return _CONFLICT
    error = action.get("error")
    reason = _error_text(error)
    kind = _error_type(error)
    if status == 400 and not _about_configuration(kind, reason):
        return Result(Outcome.REJECT, str(status), f"{status} {reason}")
    return _retry(status, kind, reason)


def _about_configuration(kind: str, reason: str) -> bool:
    """A per-item 400 that is the cluster's configuration, not the document's fault.

    Elasticsearch reports some of those as ``illegal_argument_exception`` too ("no write index
    is defined for alias", "pipeline with id [x] does not exist", "only write ops with an
    op_type of create are allowed in data streams"): every record would be dead-lettered until
    an operator fixes the cluster, so they are outages like the request-level types.
    """
    if kind in _REQUEST_LEVEL_TYPES:
        return True
    return kind == "illegal_argument_exception" and any(
        word in reason for word in _CONFIGURATION_WORDS
    )


def _retry(status: int, kind: str, reason: str) -> Result:
    """A ``RETRY`` result; request-level errors carry the ``outage`` prefix in their reason."""
    outage = status in _OUTAGE_STATUSES or kind in _REQUEST_LEVEL_TYPES
    prefix = "outage: " if outage else ""
    return Result(Outcome.RETRY, str(status), f"{prefix}{status} {reason}")


def _is_outage(result: Result) -> bool:
    return result.outcome is Outcome.RETRY and result.reason.startswith("outage: ")


def _error_type(error: Any) -> str:
    """ES's error type (``index_closed_exception``...) from an item or response error."""
    if isinstance(error, dict):
        inner = error.get("error", error)
        if isinstance(inner, dict):
            return str(inner.get("type", ""))
    return ""


def _stamp(when: datetime | None) -> str:
    """``when`` as ISO-8601 UTC with microseconds and ``Z``; now when None."""
    if when is None:
        return _utcnow_iso()
    text = when.astimezone(timezone.utc).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        inner = error.get("error", error)
        if isinstance(inner, dict):
            kind = inner.get("type", "error")
            reason = inner.get("reason", "")
            cause = inner.get("caused_by")
            text = f"{kind}: {reason}"
            if isinstance(cause, dict) and cause.get("reason"):
                text += f" (caused by {cause.get('type', '')}: {cause['reason']})"
            return text
        return str(inner)
    return "" if error is None else str(error)[:500]


def _chunks(records: Sequence[Record], limit: int) -> list[Sequence[Record]]:
    chunks: list[Sequence[Record]] = []
    begin, size = 0, 0
    for i, record in enumerate(records):
        item = len(record.encoded()) + 100  # + the action line
        if i > begin and size + item > limit:
            chunks.append(records[begin:i])
            begin, size = i, 0
        size += item
    chunks.append(records[begin:])
    return chunks


def _wildcard(pattern: str) -> str:
    """``mqlogging-%Y.%m.%d`` -> ``mqlogging-*`` (everything from the first directive on)."""
    return pattern[: pattern.index("%")] + "*" if "%" in pattern else pattern


_MAPPINGS: dict[str, Any] = {
    "dynamic": True,
    "properties": {
        "@timestamp": {"type": "date"},
        "message": {"type": "text"},
        "log": {"properties": {"level": {"type": "keyword"}, "logger": {"type": "keyword"}}},
        "event": {"properties": {"id": {"type": "keyword"}, "ingested": {"type": "date"}}},
        "service": {"properties": {"name": {"type": "keyword"}}},
        "host": {"properties": {"name": {"type": "keyword"}, "hostname": {"type": "keyword"}}},
        "error": {
            "properties": {
                "type": {"type": "keyword"},
                "message": {"type": "text"},
                "stack_trace": {"type": "text", "index": False},
            }
        },
    },
}


def _root_cause(exc: BaseException) -> str:
    """The most specific reason behind a transport error, on one line.

    elastic-transport reports a certificate problem as just "TLS error"; the useful part
    ("certificate has expired", "Hostname mismatch ...") is in the wrapped ``ssl`` exception,
    reachable through ``.errors`` or the ``__cause__`` chain.
    """
    seen: set[int] = set()
    frontier: list[BaseException] = [exc]
    deepest: BaseException = exc
    while frontier:
        current = frontier.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return " ".join(str(current).split())
        deepest = current
        nested = [e for e in getattr(current, "errors", ()) if isinstance(e, BaseException)]
        frontier.extend(nested)
        for link in (current.__cause__, current.__context__):
            if link is not None:
                frontier.append(link)
    return " ".join(str(deepest).split()) or type(deepest).__name__
