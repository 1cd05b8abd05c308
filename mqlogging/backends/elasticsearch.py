"""``elasticsearch+https://`` — Elasticsearch as an endpoint of the handler (bulk ``create``).

::

    elasticsearch+https://es1:9200,es2:9200/?index=logs-app-%Y.%m.%d&api_key_env=ES_API_KEY
    elasticsearch+https://writer@es1/?dataset=billing&password_file=/etc/es.pw&ca_certs=/ca.pem
    elasticsearch+http://127.0.0.1:9200/            (plain HTTP: tests, a local node)

Records go where the collector's Elasticsearch sink would put them, judged by the same rules
(:mod:`mqlogging.esbulk`): a data stream ``logs-<dataset>-<namespace>`` (default
``logs-mqlogging-default``), or ``index=`` expanded with ``strftime`` on the record's own time;
``_bulk`` ``create`` with ``_id`` = the record id, so a record that also reached the index
through a broker and the collector (failover) is stored once.

What "confirmed" means for :meth:`ElasticsearchProducer.publish_batch`, per record:

- created, or ``409`` (already stored) → delivered;
- a ``400`` about the document itself (a mapping conflict) → kept in the *rejected* spool with
  Elasticsearch's error (a :class:`mqlogging.spool.Spool`; ``rejected=DIR``, by default
  ``$XDG_STATE_HOME/mqlogging/rejected/<digest of the destination>``), counted in the
  producer's :meth:`~ElasticsearchProducer.stats` (``rejected``), and done: it can never be
  stored as it is, so it must not hold up the records behind it;
- anything else (``429``, ``5xx``, timeouts, connection errors, and the request-level errors
  such as a closed or missing index, ``401``/``403``) → the batch is *not* confirmed: the
  producer raises :class:`~mqlogging.errors.ConnectError`,
  :class:`~mqlogging.errors.PublishTimeout` or :class:`~mqlogging.errors.NotConfirmed`, and
  the handler retries with backoff, fails over to its next endpoint, or spools, exactly as for
  a broker. A batch is retried whole: its records already stored come back as ``409``.

A rejected record is stored as the collector stores a dead letter (``reason``, ``stage``
``"sink"``, ``source``, ``record_id``, ``dead_lettered_at``, ``message``:
:func:`mqlogging.deadletters.envelope`), so one tool reads both: ``mqlogging audit
--dead-letters DIR`` counts them as explained. The rejected directory is created when a
handler is configured with the endpoint
(:meth:`~ElasticsearchEndpoint.prepare_local`): one that cannot be used is a
:class:`~mqlogging.errors.ConfigurationError` naming ``rejected=``. If the spool
still cannot take a record later (the disk failed, it is full), the record is not kept and
not retried (it can never be stored, and retrying would hold up every record behind it): the
producer counts it once (``rejected_unsaved``) and raises
:class:`~mqlogging.errors.PartlyRefused` naming it, the rest of the batch confirmed; the
handler counts it as dropped (reason ``rejected_unsaved``) and announces it with a drop
marker, so ``mqlogging audit`` explains the gap.

Options (query parameters or keyword arguments): ``index``, or ``dataset``/``namespace`` (not
both); ``api_key`` / ``api_key_file`` / ``api_key_env``, or basic auth (``user:password@``,
``username``, ``password``/``password_file``/``password_env``; not both kinds); TLS with
``ca_certs``, ``certfile``/``keyfile`` (client certificate), ``verify``, ``server_hostname``;
``timeout`` (seconds per bulk request attempt on one host, connecting included: the client
has one ``request_timeout``, turned into urllib3's ``Timeout(total=...)`` by the transport, and
no separate connect timeout, so ``connect_timeout`` is accepted for the handler's sake and not
used), ``max_bulk_bytes``, ``rejected``, ``index_window_days_back`` /
``index_window_days_ahead`` (days; how far a record's own time may lie before / after now and
still pick its index with an ``index=`` pattern, else the current time's index is used and
``out_of_window`` counts it: they must be the same as the collector's Elasticsearch sink's,
whose defaults they share, or a record outside one window and inside the other is stored in
two indices). Several hosts (``es1,es2``) are one cluster: a request that cannot connect to
one, times out on it, or gets 502/503/504 from it, tries the next once (never on 429:
backpressure is answered with the handler's backoff). Retrying a timed-out bulk is safe: its
records already stored come back as ``409``; a request may so take up to ``timeout`` per host.

As the first endpoint of ``MQHandler(strategy="failover")`` with a broker after it, records go
to Elasticsearch while it confirms and to the broker while it does not. Failback is the
handler's failover rule: a failed endpoint is tried again, first in list order, after a capped,
jittered backoff (``retry_max``), and takes the records again once it confirms a batch. A
collector draining the broker into the same index (same ``dataset`` or ``index``) stores the
broker's share; ``_id`` = record id keeps every record there once.

There is no consumer and no tap: records are read back from Elasticsearch, not from this
endpoint. Needs ``pip install 'mqlogging[elasticsearch]'``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Literal

from .._coerce import to_number, to_size
from .._json import DECODE_ERRORS, dumps, loads
from .._types import Message, Outcome, Result
from ..deadletters import envelope
from ..errors import (
    ConfigurationError,
    ConnectError,
    NotConfirmed,
    PartlyRefused,
    PublishTimeout,
    SpoolError,
)
from ..esbulk import (
    WINDOW_DAYS_AHEAD,
    WINDOW_DAYS_BACK,
    BulkWriter,
    IndexChooser,
    check_index_names,
    new_client,
)
from ..spool import Spool
from .base import Producer
from .endpoints import COMMON_OPTIONS, COMMON_TYPES, Coercer, Endpoint, Scheme, Secret, read_secret
from .registry import Transport

__all__ = ["TRANSPORT", "ElasticsearchEndpoint", "ElasticsearchProducer"]

_API_KEY_KEYS = ("api_key", "api_key_file", "api_key_env")
_REJECTED_SPOOL: Mapping[str, Any] = {"fsync": "always", "overflow": "refuse",
                                      "max_age": 3650 * 86400.0}  # fmt: skip
"""Rejected records are kept for a human, like the collector's dead letters: synced, never
dropped to make room, kept for ten years."""


# -- the endpoint -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ElasticsearchEndpoint(Endpoint):
    """An Elasticsearch cluster as a handler endpoint (see the module docstring).

    ``index`` empty means the data stream ``logs-<dataset>-<namespace>``; otherwise it is an
    index name or ``strftime`` pattern applied to each record's own time.
    """

    transport: ClassVar[str] = "elasticsearch"
    schemes: ClassVar[Mapping[str, Scheme]] = {
        "elasticsearch+http": Scheme(tls=False, default_port=9200),
        "elasticsearch+https": Scheme(tls=True, default_port=9200),
    }
    url_options: ClassVar[frozenset[str]] = (COMMON_OPTIONS - {"heartbeat", "prefetch"}) | {
        "index", "dataset", "namespace", "max_bulk_bytes", "rejected", *_API_KEY_KEYS,
        "index_window_days_back", "index_window_days_ahead",
    }  # fmt: skip
    option_types: ClassVar[Mapping[str, Coercer]] = {
        **COMMON_TYPES,
        "max_bulk_bytes": to_size,
        "index_window_days_back": to_number,
        "index_window_days_ahead": to_number,
    }

    index: str = ""
    dataset: str = "mqlogging"
    namespace: str = "default"
    api_key: Secret | None = field(default=None, compare=False)
    max_bulk_bytes: int = 10 * 1024 * 1024
    rejected: str = ""
    index_window_days_back: float = WINDOW_DAYS_BACK
    index_window_days_ahead: float = WINDOW_DAYS_AHEAD

    @property
    def mode(self) -> Literal["data_stream", "index"]:
        """``"index"`` when ``index`` is given, else ``"data_stream"``."""
        return "index" if self.index else "data_stream"

    @classmethod
    def path_fields(cls, path: str, where: str) -> dict[str, Any]:
        if path not in ("", "/"):
            msg = f"{where}: the URL path means nothing here; name the index with ?index=NAME"
            raise ConfigurationError(msg)
        return {}

    @classmethod
    def reconcile(cls, values: dict[str, Any], where: str) -> None:
        """One API key source at most, read now; ``index`` or ``dataset``/``namespace``."""
        given = [k for k in _API_KEY_KEYS if k in values]
        if len(given) > 1:
            msg = f"{where}: give only one of {', '.join(given)}"
            raise ConfigurationError(msg)
        if given:
            values["api_key"] = read_secret(given[0], values.pop(given[0]), where)
        if values.get("index") and ("dataset" in values or "namespace" in values):
            msg = (
                f"{where}: give either index= (an index or strftime pattern) or "
                "dataset=/namespace= (the data stream logs-<dataset>-<namespace>), not both"
            )
            raise ConfigurationError(msg)

    def validate(self, where: str) -> None:
        check_index_names(self.mode, self.dataset, self.namespace, self.index, where)
        if self.api_key is not None and self.username is not None:
            msg = f"{where}: give either an API key or a user name and password, not both"
            raise ConfigurationError(msg)
        if self.max_bulk_bytes < 1024:
            msg = f"{where}: max_bulk_bytes must be at least 1024"
            raise ConfigurationError(msg)
        for name in ("index_window_days_back", "index_window_days_ahead"):
            if not getattr(self, name) > 0:
                msg = f"{where}: {name} must be a number of days above 0"
                raise ConfigurationError(msg)

    def redacted_path(self) -> str:
        if self.index:
            return f"/?index={self.index}"
        return f"/?dataset={self.dataset}&namespace={self.namespace}"

    def destination_parts(self) -> dict[str, str]:
        target = self.index or f"logs-{self.dataset}-{self.namespace}"
        return {"index": target}

    def prepare_local(self) -> None:
        """Create the rejected spool's directory now: one that cannot be used is refused at
        configuration (naming ``rejected=``) instead of failing on the first rejection."""
        _check_rejected_dir(self.rejected_dir(), self.redacted())

    def rejected_dir(self) -> str:
        """Where rejected records are kept: ``rejected``, else
        ``$XDG_STATE_HOME/mqlogging/rejected/<digest of the destination>``."""
        if self.rejected:
            return self.rejected
        base = os.environ.get("XDG_STATE_HOME") or os.path.join(
            os.path.expanduser("~"), ".local", "state"
        )
        digest = hashlib.sha256(self.destination_key().encode()).hexdigest()[:16]
        return os.path.join(base, "mqlogging", "rejected", digest)


def _check_rejected_dir(directory: str, where: str) -> None:
    """Create the rejected spool's directory now, so an unusable one is a configuration error
    (naming ``rejected=``) instead of a record that cannot be kept later."""
    try:
        os.makedirs(directory, exist_ok=True)
        usable = os.access(directory, os.W_OK | os.X_OK)
        reason = "not writable"
    except OSError as exc:
        usable, reason = False, exc.strerror or str(exc)
    if not usable:
        msg = (
            f"{where}: cannot keep rejected records in {directory!r} ({reason}); "
            "set rejected=/a/writable/dir"
        )
        raise ConfigurationError(msg)


# -- the producer -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Doc:
    """A message as :class:`mqlogging.esbulk.Document`: its body is sent as it is."""

    id: str
    doc: dict[str, Any]
    body: bytes

    def encoded(self) -> bytes:
        return self.body


class ElasticsearchProducer(Producer):
    """Writes batches with ``_bulk`` ``create``; see the module docstring for what is
    confirmed. Owned by one thread, like every producer (the client itself is thread-safe)."""

    endpoint: ElasticsearchEndpoint

    def __init__(self, endpoint: Endpoint | str) -> None:
        self.endpoint = ElasticsearchEndpoint.from_url(endpoint)
        self._writer: BulkWriter | None = None
        self._rejected: Spool | None = None
        self._counts = {"rejected": 0, "rejected_unsaved": 0, "out_of_window": 0}

    def publish_batch(self, messages: Sequence[Message]) -> None:
        """Write ``messages``; return once each is stored, already stored, or rejected and
        kept. Raises as the :class:`Producer` contract says for anything else."""
        if not messages:
            return
        docs: list[_Doc] = []
        results: list[Result | None] = []
        for message in messages:
            doc = _decode(message)
            results.append(None if isinstance(doc, _Doc) else doc)
            if isinstance(doc, _Doc):
                docs.append(doc)
        written = iter(self._bulk_writer().write(docs) if docs else [])
        final = [r if r is not None else next(written) for r in results]
        self._settle(messages, final)

    def stats(self) -> dict[str, int]:
        """``rejected``: records kept in the rejected spool; ``rejected_unsaved``: records
        rejected whose copy could not be kept (each counted once: the handler drops them);
        ``out_of_window``: write attempts of records whose own time lay outside the index
        window (they went to the current time's index, as the collector's sink does)."""
        return dict(self._counts)

    def close(self) -> None:
        writer, self._writer = self._writer, None
        spool, self._rejected = self._rejected, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.client.close()
        if spool is not None:
            with contextlib.suppress(Exception):
                spool.close()

    # -- internals ------------------------------------------------------------------------------

    def _bulk_writer(self) -> BulkWriter:
        """The writer, its client built on first use (the client connects per request)."""
        if self._writer is None:
            ep = self.endpoint
            chooser = IndexChooser(
                mode=ep.mode,
                dataset=ep.dataset,
                namespace=ep.namespace,
                index=ep.index,
                window_back=timedelta(days=ep.index_window_days_back),
                window_ahead=timedelta(days=ep.index_window_days_ahead),
                out_of_window=self._out_of_window,
            )
            hosts = [f"{'https' if ep.tls else 'http'}://{host}" for host in ep.hosts]
            client = new_client(
                hosts,
                max_retries=len(hosts) - 1,  # each other host once; backoff is the handler's
                # A host that times out (on connect: powered off, firewalled) is skipped too.
                # Safe: a resent create with the same _id answers 409, "already stored".
                retry_on_timeout=True,
                retry_on_status=(502, 503, 504),
                **_client_options(ep),
            )
            self._writer = BulkWriter(client, chooser, max_bulk_bytes=ep.max_bulk_bytes)
        return self._writer

    def _out_of_window(self, n: float) -> None:
        self._counts["out_of_window"] += int(n)

    def _settle(self, messages: Sequence[Message], results: Sequence[Result]) -> None:
        """Raise unless every record is done or rejected; keep the rejected ones."""
        retry = [r for r in results if r.outcome is Outcome.RETRY]
        if retry:
            raise self._not_stored(retry, len(results))
        rejected = [
            (m, r) for m, r in zip(messages, results, strict=True) if r.outcome is Outcome.REJECT
        ]
        if rejected:
            self._keep(rejected)

    def _not_stored(self, retry: Sequence[Result], total: int) -> Exception:
        where = self.endpoint.redacted()
        first = retry[0]
        if all(r.status == "unavailable" for r in retry):
            return ConnectError(f"cannot reach Elasticsearch: {first.reason}", endpoint=where)
        if all(r.status == "timeout" for r in retry):
            return PublishTimeout(f"Elasticsearch did not answer in time: {first.reason}",
                                  endpoint=where)  # fmt: skip
        msg = f"Elasticsearch did not store {len(retry)} of {total} records: {first.reason}"
        return NotConfirmed(msg, endpoint=where)

    def _keep(self, rejected: Sequence[tuple[Message, Result]]) -> None:
        """Store the rejected records with their errors; raise PartlyRefused (naming them)
        if that fails: they can never be stored, so they must not hold up the rest."""
        source = self.endpoint.redacted()
        bodies = [_rejected_body(m, r, source) for m, r in rejected]
        try:
            if self._rejected is None:
                self._rejected = Spool(self.endpoint.rejected_dir(), **_REJECTED_SPOOL)
            self._rejected.append(bodies)
        except SpoolError as exc:
            self._counts["rejected_unsaved"] += len(bodies)
            msg = (
                f"Elasticsearch rejected {len(bodies)} records ({rejected[0][1].reason}) and "
                f"they cannot be kept: {exc}; set rejected=/writable/dir"
            )
            ids = frozenset(m.id for m, _ in rejected)
            raise PartlyRefused(msg, ids=ids, endpoint=source) from exc
        self._counts["rejected"] += len(bodies)


def _decode(message: Message) -> _Doc | Result:
    """The message as a document, or a ``REJECT`` result when its body is no JSON object."""
    try:
        doc = loads(message.body)
    except DECODE_ERRORS as exc:
        return Result(Outcome.REJECT, "undecodable", f"not JSON: {exc}")
    if not isinstance(doc, dict):
        return Result(Outcome.REJECT, "undecodable", "not a JSON object")
    return _Doc(message.id, doc, message.body)


def _rejected_body(message: Message, result: Result, source: str) -> bytes:
    """A rejected record in the collector's dead-letter shape (:mod:`mqlogging.deadletters`),
    so ``mqlogging audit --dead-letters`` reads the rejected spool too."""
    return dumps(
        envelope(message.body, reason=result.reason, stage="sink", source=source,
                 record_id=message.id)
    )  # fmt: skip


def _client_options(ep: ElasticsearchEndpoint) -> dict[str, Any]:
    """The client's keyword arguments: timeout, credentials, TLS."""
    options: dict[str, Any] = {"request_timeout": ep.timeout}
    if ep.api_key is not None:
        options["api_key"] = ep.api_key.reveal()
    credentials = ep.credentials()
    if credentials is not None:
        options["basic_auth"] = credentials
    tls = ep.tls
    if tls is not None:
        # The client's own TLS options, as the collector's sink passes them: an ssl_context
        # would get certifi's CAs loaded into it as well, trusting more than ca_certs says.
        options["verify_certs"] = tls.verify
        optional = {
            "ca_certs": tls.ca_certs,
            "client_cert": tls.certfile,
            "client_key": tls.keyfile,
            "ssl_assert_hostname": tls.server_hostname,
        }
        options.update({k: v for k, v in optional.items() if v})
        if not tls.verify:
            options["ssl_show_warn"] = False
    return options


TRANSPORT = Transport(
    endpoint=ElasticsearchEndpoint,
    producer=ElasticsearchProducer,
    preload=("elasticsearch",),
    loggers=("elasticsearch", "elastic_transport"),
)
"""What the registry hands out for ``elasticsearch+http://`` and ``elasticsearch+https://``
URLs: a producer only (no consumer, no tap)."""
