"""Writing records to Elasticsearch with ``_bulk`` ``create``: the knowledge both writers share.

Two parts of the package write log records into Elasticsearch: the collector's sink
(:mod:`mqlogging.collector.sinks.elasticsearch`, records drained from a broker) and the
handler's ``elasticsearch+https://`` endpoint (:mod:`mqlogging.backends.elasticsearch`, records
straight from the application, with a broker as failover). Both must store the same record
under the same ``_id`` in the same index and judge every answer the same way, or a record sent
by one and later by the other would be stored twice. So the rules live here, once, below both
(backends must not import the collector):

- ``op_type=create`` with ``_id`` = the record id: a record written again (a redelivery, a
  failover copy drained by the collector) comes back as ``409 version_conflict``: "already
  stored", so the index never holds a record twice;
- the index (:class:`IndexChooser`): a data stream ``logs-<dataset>-<namespace>``, or an index
  pattern expanded with ``strftime`` on the record's own time (:func:`record_time`), clamped to
  a window around now, so a redelivery across midnight lands in the same index and an
  arbitrary date cannot create an arbitrary index;
- per-item classification (:func:`classify`, :class:`BulkWriter`). Only an error about the
  document itself may reject it; an error about the index, the cluster or our credentials is
  an outage every document would hit (issue #11, defect 7):

  - 2xx, 409 → ``DONE`` (409 reported with status ``conflict``);
  - 400 whose error is about the document (mapping / parse errors) → ``REJECT``;
  - everything else → ``RETRY``: 429, 5xx, 408, and the request-level errors — 401/403
    (auth, forbidden, cluster blocks), 404 (index missing) and the 400s that name the index
    (``index_closed_exception``, ``invalid_index_name_exception``, ...), whose reason starts
    with ``outage:`` (:func:`is_outage`);
  - whole-request 413, or a whole-request 400 naming a document parse error → the batch is
    split in halves until the culprit is alone (then ``REJECT``); any other whole-request
    error → ``RETRY`` for every record;
  - connection errors (status ``unavailable``) and timeouts (``timeout``) → ``RETRY`` for
    every record of the request.

What each writer does with a ``REJECT`` or ``RETRY`` is its own policy: the sink answers
:class:`~mqlogging._types.Result` values to the collector's pipeline (dead letters, backoff,
``/readyz``); the endpoint raises the :class:`~mqlogging.backends.Producer` contract's errors
and keeps rejected records in a local spool.

Works with the 8.x and 9.x clients (``pip install 'mqlogging[elasticsearch]'``).
"""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, Protocol

from ._json import dumps
from ._types import DONE, Outcome, Result
from .errors import ConfigurationError, MissingDependencyError
from .wire import read_meta

__all__ = [
    "MAPPINGS",
    "WINDOW_DAYS_AHEAD",
    "WINDOW_DAYS_BACK",
    "BulkWriter",
    "Document",
    "IndexChooser",
    "check_index_names",
    "classify",
    "import_client",
    "is_outage",
    "new_client",
    "record_time",
    "root_cause",
    "wildcard",
]

Mode = Literal["data_stream", "index"]

WINDOW_DAYS_BACK = 30.0
"""Default of ``index_window_days_back`` (collector sink and handler endpoint alike: both must
use the same window, or a record older than it lands in two indices)."""
WINDOW_DAYS_AHEAD = 1.0
"""Default of ``index_window_days_ahead`` (see :data:`WINDOW_DAYS_BACK`)."""

CONFLICT = Result(Outcome.DONE, "conflict")
# Statuses that mean "the request could not be served as configured" (not "this document").
_OUTAGE_STATUSES = {401, 403, 404}
# 400s about the index or cluster rather than the document: retried, reported as outages.
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


class Document(Protocol):
    """What a writer needs of a record: its id (the ``_id``), the parsed JSON object (to pick
    the index) and its encoded form (sent as it is when it has an ``@timestamp``)."""

    @property
    def id(self) -> str: ...

    @property
    def doc(self) -> dict[str, Any]: ...

    def encoded(self) -> bytes: ...


# -- the client ---------------------------------------------------------------------------------


def import_client() -> Any:
    """The ``elasticsearch`` module, or a :class:`MissingDependencyError` naming the extra."""
    try:
        import elasticsearch
    except ImportError as exc:  # pragma: no cover - installed in the dev environment
        raise MissingDependencyError("elasticsearch", "elasticsearch") from exc
    return elasticsearch


def new_client(
    hosts: Sequence[str], *, max_retries: int = 0, retry_on_timeout: bool = False, **options: Any
) -> Any:
    """An ``elasticsearch.Elasticsearch`` client for ``hosts`` whose retries are the caller's.

    ``max_retries`` is how many *other* hosts a request may try after a connection error, and
    after a timeout too when ``retry_on_timeout`` (off by default: a timed-out bulk may have
    been applied, and retrying is the caller's decision, with backoff); ``options`` go to the
    client as they are (``request_timeout``, ``api_key``, ``basic_auth``, ``ca_certs``...).
    """
    es = import_client()
    return es.Elasticsearch(
        list(hosts), max_retries=max_retries, retry_on_timeout=retry_on_timeout, **options
    )


# -- names and times ---------------------------------------------------------------------------


def check_index_names(
    mode: Mode, dataset: str, namespace: str, index: str, where: str = ""
) -> None:
    """Refuse names Elasticsearch would refuse (upper case, ``-\\/*?"<>| ,#:`` in a data
    stream's parts) in one line, prefixed by ``where``."""
    prefix = f"{where}: " if where else ""
    for part, value in (("dataset", dataset), ("namespace", namespace)):
        if not value or any(c in value for c in '-\\/*?"<>| ,#:') or value != value.lower():
            msg = f"{prefix}{part}={value!r}: use lower-case letters, digits, '_' and '.' only"
            raise ConfigurationError(msg)
    literal = re.sub(r"%.", "", index)
    if mode == "index" and (not index or literal != literal.lower()):
        msg = f"{prefix}index={index!r}: Elasticsearch index names must be lower-case"
        raise ConfigurationError(msg)


def record_time(doc: dict[str, Any]) -> datetime | None:
    """The record's own time (UTC), or None when it has none that parses.

    The time is where the record's schema keeps it (:func:`mqlogging.wire.read_meta`:
    ``@timestamp`` for ecs and logstash, ``timestamp`` for flat, ``timeUnixNano`` for otel),
    the same rule every
    reader uses.
    """
    return _parse_time(read_meta(doc).timestamp)


def _parse_time(value: str | None) -> datetime | None:
    """ISO-8601 text (``Z`` or an offset; naive means UTC) as a UTC datetime, else None.

    A time that exists in its own offset but not in UTC (``0001-01-01T00:00:00+05:00``) is
    None too: converting it later would raise on every attempt and stall the writer.
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


def _stamp(when: datetime | None) -> str:
    """``when`` (now when None) as ISO-8601 UTC with microseconds and ``Z``."""
    when = datetime.now(timezone.utc) if when is None else when
    text = when.astimezone(timezone.utc).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


class IndexChooser:
    """Where a record goes: the data stream ``logs-<dataset>-<namespace>``, or ``index``
    expanded with ``strftime`` on the record's own time when that lies within
    ``window_back``/``window_ahead`` of now (else now, counted through ``out_of_window``).

    Thread-safe (the name cache is locked).
    """

    def __init__(
        self,
        *,
        mode: Mode,
        dataset: str = "mqlogging",
        namespace: str = "default",
        index: str = "mqlogging-%Y.%m.%d",
        window_back: timedelta = timedelta(days=WINDOW_DAYS_BACK),
        window_ahead: timedelta = timedelta(days=WINDOW_DAYS_AHEAD),
        out_of_window: Callable[[float], None] | None = None,
    ) -> None:
        self.mode = mode
        self.data_stream = f"logs-{dataset}-{namespace}"
        self.pattern = index
        self._window_back = window_back
        self._window_ahead = window_ahead
        self._out_of_window = out_of_window or (lambda n: None)
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    def index_for(self, doc: dict[str, Any], now: datetime | None = None) -> str:
        """The index for ``doc``: the data stream, or the pattern formatted with the record's
        own time when it lies within the window around ``now`` (default: the current time),
        else with ``now`` (counted through ``out_of_window``, once per write attempt)."""
        if self.mode == "data_stream":
            return self.data_stream
        now = now or datetime.now(timezone.utc)
        when = record_time(doc)
        if when is None or not now - self._window_back <= when <= now + self._window_ahead:
            self._out_of_window(1)
            when = now
        when = when.astimezone(timezone.utc)
        hour = when.strftime("%Y-%m-%d %H")  # hourly patterns are the finest we cache
        cached = self._cache.get(hour)
        if cached is not None:
            return cached
        name = when.strftime(self.pattern)
        with self._lock:
            if len(self._cache) > 1000:
                self._cache.clear()
            self._cache[hour] = name
        return name

    def patterns(self, dataset: str) -> list[str]:
        """The index patterns an index template for these names must cover."""
        if self.mode == "data_stream":
            return [f"logs-{dataset}-*"]
        return [wildcard(self.pattern)]


def wildcard(pattern: str) -> str:
    """``mqlogging-%Y.%m.%d`` -> ``mqlogging-*`` (everything from the first directive on)."""
    return pattern[: pattern.index("%")] + "*" if "%" in pattern else pattern


# -- writing -----------------------------------------------------------------------------------


class BulkWriter:
    """Writes documents with ``_bulk`` ``create`` and answers one :class:`Result` each, in
    order (see the module docstring for the rules). Never raises for Elasticsearch's
    answers or transport errors: they become ``RETRY`` results.

    Thread-safe as far as ``client`` is (the official client is a connection pool).
    """

    def __init__(self, client: Any, chooser: IndexChooser, *, max_bulk_bytes: int) -> None:
        self.client = client
        self.chooser = chooser
        self.max_bulk_bytes = max_bulk_bytes
        self._es = import_client()

    def write(self, docs: Sequence[Document]) -> list[Result]:
        """Write ``docs`` in requests under ``max_bulk_bytes`` (ES refuses a request above
        ``http.max_content_length`` with 413); one result per document, in order."""
        results: list[Result] = [DONE] * len(docs)
        start = 0
        for chunk in _chunks(docs, self.max_bulk_bytes):
            results[start : start + len(chunk)] = self._write(chunk)
            start += len(chunk)
        return results

    def _write(self, docs: Sequence[Document]) -> list[Result]:
        es = self._es
        try:
            response = self.client.bulk(operations=self._body(docs))
        except es.ApiError as exc:
            return self._refused(docs, exc)
        except es.ConnectionTimeout as exc:
            return [Result(Outcome.RETRY, "timeout", f"timeout: {exc}")] * len(docs)
        except es.TransportError as exc:
            reason = f"unavailable: {root_cause(exc)}"
            return [Result(Outcome.RETRY, "unavailable", reason)] * len(docs)
        items = response.body.get("items") or []
        if len(items) != len(docs):
            reason = f"bulk answered {len(items)} items for {len(docs)} documents"
            return [Result(Outcome.RETRY, "invalid_response", reason)] * len(docs)
        if not response.body.get("errors"):
            return [DONE] * len(docs)
        return [classify(item) for item in items]

    def _refused(self, docs: Sequence[Document], exc: Any) -> list[Result]:
        """Results for a whole request the cluster refused (``exc``: the client's ApiError).

        A 413, or a 400 naming a document parse error, can only be one document's fault: the
        batch is split in halves until it is alone (``REJECT``). Anything else is ``RETRY``
        for every document.
        """
        status = int(exc.meta.status)
        about_document = status == 413 or (
            status == 400 and _error_type(exc.body) in _DOCUMENT_TYPES
        )
        if about_document and len(docs) > 1:
            half = len(docs) // 2
            return self._write(docs[:half]) + self._write(docs[half:])
        reason = _error_text(exc.body) or str(exc)
        if about_document:
            return [Result(Outcome.REJECT, str(status), f"{status} {reason}")]
        return [_retry(status, _error_type(exc.body), reason)] * len(docs)

    def _body(self, docs: Sequence[Document]) -> bytes:
        """The ndjson request: a ``create`` action per document, then the document, which
        gets its own time (else now) as ``@timestamp`` when it has none (data streams need
        one; the ``flat`` schema writes ``timestamp``)."""
        parts: list[bytes] = []
        now = datetime.now(timezone.utc)
        for record in docs:
            doc = record.doc
            index = self.chooser.index_for(doc, now)
            parts.append(dumps({"create": {"_index": index, "_id": record.id}}))
            if "@timestamp" in doc:
                parts.append(record.encoded())
            else:
                parts.append(dumps({**doc, "@timestamp": _stamp(record_time(doc))}))
        parts.append(b"")
        return b"\n".join(parts)


def _chunks(docs: Sequence[Document], limit: int) -> list[Sequence[Document]]:
    chunks: list[Sequence[Document]] = []
    begin, size = 0, 0
    for i, record in enumerate(docs):
        item = len(record.encoded()) + 100  # + the action line
        if i > begin and size + item > limit:
            chunks.append(docs[begin:i])
            begin, size = i, 0
        size += item
    chunks.append(docs[begin:])
    return chunks


# -- classification ----------------------------------------------------------------------------


def classify(item: dict[str, Any]) -> Result:
    """The result of one item of a ``_bulk`` answer (see the module docstring)."""
    action: dict[str, Any] = item.get("create") or next(iter(item.values()), {})
    status = int(action.get("status", 500))
    if 200 <= status < 300:
        return DONE
    if status == 409:
        return CONFLICT
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
    op_type of create are allowed in data streams"): every record would be rejected until
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


def is_outage(result: Result) -> bool:
    """True for a ``RETRY`` caused by the index, the cluster or our credentials (not by load
    or one document): every document would meet it until an operator acts."""
    return result.outcome is Outcome.RETRY and result.reason.startswith("outage: ")


def _error_type(error: Any) -> str:
    """ES's error type (``index_closed_exception``...) from an item or response error."""
    if isinstance(error, dict):
        inner = error.get("error", error)
        if isinstance(inner, dict):
            return str(inner.get("type", ""))
    return ""


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


def root_cause(exc: BaseException) -> str:
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


MAPPINGS: dict[str, Any] = {
    "dynamic": True,
    "properties": {
        "@timestamp": {"type": "date"},
        "message": {"type": "text"},
        "log": {
            "properties": {
                "level": {"type": "keyword"},
                "logger": {"type": "keyword"},
                "template": {"type": "keyword", "ignore_above": 8191},
            }
        },
        "message_template": {"type": "keyword", "ignore_above": 8191},
        "trace": {"properties": {"id": {"type": "keyword"}, "flags": {"type": "keyword"}}},
        "span": {"properties": {"id": {"type": "keyword"}}},
        "trace_id": {"type": "keyword"},
        "span_id": {"type": "keyword"},
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
"""The index template's mappings for the fields every schema writes (``install_template``)."""
