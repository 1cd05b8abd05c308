"""Elasticsearch sink: ``_bulk`` with ``op_type=create`` and ``_id`` = record id.

Why ``create`` with our own id: a message redelivered after a collector crash (or consumed by
two competing collectors after a requeue) comes back as ``409 version_conflict``, which means
"already stored" — so the index can never hold a record twice, whatever the broker does.

Per-item classification (we own it; ``helpers.streaming_bulk`` only retries 429, sleeps in the
caller and reorders):

- 2xx, 409 → ``DONE`` (409 reported with status ``conflict``);
- 429, 5xx, 401/403/408 (throttled, unavailable, read-only block, auth being fixed) → ``RETRY``;
- other 4xx (400 mapping / parse errors, 404 index missing) → ``REJECT`` with ES's error text;
- whole-request 413 (or 400) → the batch is split in halves until the culprit is alone;
- connection errors and timeouts → ``RETRY`` for every record of the request.

Works with the 8.x and 9.x clients (use the client major that matches the cluster). Against the
``noida-db`` stand-in, ``_bulk`` into a ``logs-*-*`` name creates a plain index (it has no
``_data_stream`` API and no ILM) and index templates are stored and applied; everything the sink
needs (bulk create, per-item 409/400, templates) works there.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from ...errors import MissingDependencyError
from ..config import ElasticsearchSinkConfig
from .base import DONE, Outcome, Record, Result, Sink, dumps

__all__ = ["ElasticsearchSink"]

log = logging.getLogger("mqlogging.collector")

_CONFLICT = Result(Outcome.DONE, "conflict")
_RETRY_STATUSES = {401, 403, 408, 429}


def _utcnow_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class ElasticsearchSink(Sink):
    """Writes records with the official client; thread-safe (the client is a connection pool)."""

    def __init__(self, config: ElasticsearchSinkConfig) -> None:
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
        return results

    def _write(self, records: Sequence[Record]) -> list[Result]:
        body = self._body(records)
        es = self._es
        try:
            response = self.client.bulk(operations=body)  # type: ignore[arg-type]  # ndjson bytes
        except es.ApiError as exc:
            status = int(exc.meta.status)
            if status in (400, 413) and len(records) > 1:
                half = len(records) // 2
                return self._write(records[:half]) + self._write(records[half:])
            reason = _error_text(exc.body) or str(exc)
            if status in (400, 413):
                return [Result(Outcome.REJECT, str(status), f"{status} {reason}")]
            return [Result(Outcome.RETRY, str(status), f"{status} {reason}")] * len(records)
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

    def _body(self, records: Sequence[Record]) -> bytes:
        parts: list[bytes] = []
        data_stream = self.config.mode == "data_stream"
        for record in records:
            doc = record.doc
            index = self._ds_index if data_stream else self._index_for(doc)
            parts.append(dumps({"create": {"_index": index, "_id": record.id}}))
            if "@timestamp" in doc:
                parts.append(record.encoded())
            else:  # data streams require @timestamp: the receive time is the best we know
                parts.append(dumps({**doc, "@timestamp": _utcnow_iso()}))
        parts.append(b"")
        return b"\n".join(parts)

    def _index_for(self, doc: dict[str, Any]) -> str:
        stamp = doc.get("@timestamp")
        day = stamp[:10] if isinstance(stamp, str) else ""
        cached = self._index_cache.get(day)
        if cached is not None:
            return cached
        try:
            when = datetime.strptime(day, "%Y-%m-%d")
        except ValueError:
            when = datetime.now(timezone.utc)
            day = ""
        name = when.strftime(self.config.index)
        with self._lock:
            if len(self._index_cache) > 1000:
                self._index_cache.clear()
            if day:
                self._index_cache[day] = name
        return name


def _classify(item: dict[str, Any]) -> Result:
    action: dict[str, Any] = item.get("create") or next(iter(item.values()), {})
    status = int(action.get("status", 500))
    if 200 <= status < 300:
        return DONE
    if status == 409:
        return _CONFLICT
    reason = _error_text(action.get("error"))
    if status in _RETRY_STATUSES or status >= 500:
        return Result(Outcome.RETRY, str(status), f"{status} {reason}")
    return Result(Outcome.REJECT, str(status), f"{status} {reason}")


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
