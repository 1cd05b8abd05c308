"""Elasticsearch sink: ``_bulk`` with ``op_type=create`` and ``_id`` = record id.

Why ``create`` with our own id: a message redelivered after a collector crash (or consumed by
two competing collectors after a requeue) comes back as ``409 version_conflict``, which means
"already stored" — so the index can never hold a record twice, whatever the broker does.

Per-item classification and index choice are shared with the handler's Elasticsearch endpoint
and live in :mod:`mqlogging.esbulk` (we own them; ``helpers.streaming_bulk`` only retries 429,
sleeps in the caller and reorders): 2xx/409 → ``DONE``, a 400 about the document → ``REJECT``
(dead letter), everything else → ``RETRY``. Only an error about the document itself may
dead-letter it; an error about the index, the cluster or our credentials is an outage that
every document would hit, so dead-lettering would empty the queue into the dead letters (issue
#11, defect 7): those ``RETRY`` results also make :meth:`ElasticsearchSink.check` false, so
``/readyz`` reports the outage.

Works with the 8.x and 9.x clients (use the client major that matches the cluster). Against the
``noida-db`` stand-in, ``_bulk`` into a ``logs-*-*`` name creates a plain index (it has no
``_data_stream`` API and no ILM) and index templates are stored and applied; everything the sink
needs (bulk create, per-item 409/400, templates) works there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from ...backends.endpoints import Secret
from ...errors import ConfigurationError
from ...esbulk import (
    MAPPINGS,
    WINDOW_DAYS_AHEAD,
    WINDOW_DAYS_BACK,
    BulkWriter,
    IndexChooser,
    check_index_names,
    is_outage,
    new_client,
    record_time,
)
from .._table import FromTable, PemPath, PositiveFloat, Table, check_fields, read_table, shared_env
from ._urls import check_http_url, redact_http
from .base import Record, Result, Sink

if TYPE_CHECKING:
    from ..metrics import CollectorMetrics

__all__ = ["ElasticsearchSink", "ElasticsearchSinkConfig", "record_time"]

log = logging.getLogger("mqlogging.collector")

# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ElasticsearchSinkConfig(FromTable):
    """Elasticsearch through the official client, ``_bulk`` with ``op_type=create``.

    ``mode = "data_stream"`` writes to ``logs-<dataset>-<namespace>`` (documents need
    ``@timestamp``; one is added from the record's own time, else the receive time, when
    missing); ``mode = "index"`` writes to ``index`` expanded with ``strftime`` on the record's
    own time (UTC; where :func:`mqlogging.wire.read_meta` finds it: ``@timestamp``,
    ``timestamp`` for ``flat``, ``timeUnixNano`` for ``otel``), e.g. ``mqlogging-%Y.%m.%d``, so
    a redelivery always lands in the same index. A record time more than
    ``index_window_days_back`` days before now or ``index_window_days_ahead`` days after it is
    not trusted to pick an index (arbitrary dates would create arbitrary indices): such a
    record goes to today's index and is counted (``index_time_out_of_window``). The default
    reaches back 30 days for spools shipped after a long time offline. ``install_template``
    puts an index template at start.

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
    index_window_days_back: PositiveFloat = WINDOW_DAYS_BACK
    index_window_days_ahead: PositiveFloat = WINDOW_DAYS_AHEAD

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
        check_index_names(self.mode, self.dataset, self.namespace, self.index)

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


def _client_options(config: ElasticsearchSinkConfig) -> dict[str, Any]:
    """The client's keyword arguments for ``config`` (credentials and TLS)."""
    kwargs: dict[str, Any] = {"request_timeout": config.request_timeout}
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
    return kwargs


class ElasticsearchSink(Sink):
    """Writes records with the official client; thread-safe (the client is a connection pool).

    The writing itself (:class:`mqlogging.esbulk.BulkWriter`) is shared with the handler's
    Elasticsearch endpoint; what is the sink's own is the outage state behind :meth:`check`,
    the index template and its configuration.
    """

    def __init__(
        self,
        config: ElasticsearchSinkConfig,
        *,
        out_of_window: Callable[[float], None] | None = None,
    ) -> None:
        """``out_of_window(n)`` counts records whose own time could not pick their index."""
        self.config = config
        self.name = config.label
        # max_retries=0: retries are ours, per item, with backoff
        self.client = new_client(config.hosts, **_client_options(config))
        self._chooser = IndexChooser(
            mode=config.mode,
            dataset=config.dataset,
            namespace=config.namespace,
            index=config.index,
            window_back=timedelta(days=config.index_window_days_back),
            window_ahead=timedelta(days=config.index_window_days_ahead),
            out_of_window=out_of_window,
        )
        self._writer = BulkWriter(self.client, self._chooser, max_bulk_bytes=config.max_bulk_bytes)
        # A request-level error from the last write ("" when none): makes check() false.
        self._outage = ""

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.config.install_template:
            self.install_template()

    def install_template(self) -> None:
        """Put an index template for our indices (failures are logged: the sink still works)."""
        cfg = self.config
        patterns = self._chooser.patterns(cfg.dataset)
        name = cfg.template_name or f"mqlogging-{cfg.dataset}"
        body: dict[str, Any] = {
            "index_patterns": patterns,
            "priority": 200,
            "template": {"mappings": MAPPINGS},
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
        results = self._writer.write(records)
        outage = next((r.reason for r in results if is_outage(r)), "")
        if outage and not self._outage:
            log.error("sink %s: not ready: %s (retrying)", self.name, outage)
        elif self._outage and not outage:
            log.info("sink %s: writes succeed again", self.name)
        self._outage = outage
        return results

    def index_for(self, doc: dict[str, Any], now: datetime | None = None) -> str:
        """The index for ``doc`` (see :meth:`mqlogging.esbulk.IndexChooser.index_for`)."""
        return self._chooser.index_for(doc, now)
