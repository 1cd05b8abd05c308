"""``kafka://h1:9092,h2/TOPIC`` — Apache Kafka as a handler endpoint, a collector source and a tap.

::

    kafka://k1:9092,k2:9092/app-logs?compression=zstd&group=collectors
    kafka+ssl://writer@k1:9093/app-logs?password_env=KAFKA_PW&ca_certs=/etc/ca.pem
    kafka+ssl://k1:9093/app-logs?certfile=/etc/me.pem&keyfile=/etc/me.key   (x509 client)

The client is confluent-kafka (librdkafka). It was compared on this machine with kafka-python
3.0 against the noida-db stand-in (docs/scaling.md, Kafka): both do the idempotent producer with
``acks=all``, per-record delivery reports, consumer groups with manual commits and rebalance
callbacks, and both survived the broker being killed and restarted. confluent-kafka was chosen
because it confirmed 500-record batches about three times faster (35,000 against 12,500
records/s, zstd) with less CPU on the application's side, its idempotent producer is the
reference implementation that Kafka's own clients follow (it recovers the producer state
after a broker restart by itself), it is maintained by the company that employs most Kafka
committers with a release for every Kafka release, and its wheels bundle librdkafka, so
``pip install 'mqlogging[kafka]'`` needs no compiler. kafka-python is pure Python and was
dormant from 2020 to 2024; it would be the choice only where binary wheels cannot be used.

Publishing (:class:`KafkaProducer`): ``acks=all`` and ``enable.idempotence`` (the broker
writes each record once and in order per producer, even when the client retries), batches
with ``linger_ms`` (default 5 ms) and ``compression`` (default ``lz4``). The record *key* is
the record's producer identity (``mqlogging.producer``, read by :func:`mqlogging.wire.read_meta`;
this producer's own id for records without one), so every handler's records land in one
partition, in emit order. :meth:`KafkaProducer.publish_batch` hands the batch to librdkafka and
returns only once every record's delivery report arrived without error; it raises as the
:class:`~mqlogging.backends.base.Producer` contract says otherwise, so the handler retries,
fails over or spools like for any broker:

- no broker reachable (no report, librdkafka says all brokers are down) after
  ``connect_timeout`` → :class:`~mqlogging.errors.ConnectError`;
- reports missing after ``connect_timeout + timeout`` (librdkafka's ``message.timeout.ms``)
  → :class:`~mqlogging.errors.PublishTimeout`; the records still queued are purged first, so
  none of them is delivered behind the records sent after it;
- a record the broker refuses for good (larger than the topic's ``max.message.bytes``, an
  invalid record) while the rest is delivered → :class:`~mqlogging.errors.PartlyRefused`
  naming it; any other error report → :class:`~mqlogging.errors.NotConfirmed` (the topic does
  not exist, not authorised...), the message saying what to fix.

Consuming (:class:`KafkaConsumer`): a member of the consumer group ``group`` (default
``mqlogging``): the collectors of one group share the topic's partitions (competing consumers,
one partition to one member). Offsets are never committed automatically: :meth:`ack` marks
records done and commits, per partition, the offset below which every record handed out is
done (so out-of-order acks never commit past a record the sinks do not have yet). On a
rebalance, the done prefix of each revoked partition is committed and the records of it still
in flight are void (acking them is a no-op): the partition's next owner reads them again, and
Elasticsearch stores them once (the record id is the ``_id``). A partition the same rebalance
assigns back to this member (the group's protocol is eager: every member gives up all its
partitions, then gets the new assignment) is kept as it was: no other member can have read it
in between, so its records in flight stay valid (acks made between the revoke and the assign
count too) and it is read on from the first record given back, else the first not handed out,
not from the committed offset. A partition *lost* (librdkafka's ``on_lost``: the member's
generation was refused, another member may own it already) is not kept.
A collector killed -9 loses nothing either: its uncommitted records are read again by the
group. ``nack(requeue=True)`` seeks the partition back to the first record given back; of the
records read again, only those given back are handed out again (the others were acked or are
still in flight), so a caller sees a record twice only when it gave it back. A group that has
no offset yet starts at the earliest retained record, so records published before the first
collector ran are kept.

Commits are asynchronous and their outcome is tracked (librdkafka's ``on_commit`` report, per
partition): an offset counts as committed only once the group coordinator confirmed it, one
commit per partition is in flight at a time, and every :meth:`~KafkaConsumer.fetch` (at most
once a second) commits again what is settled and not confirmed: a commit that failed
(coordinator moving, broker restarted) or offsets settled while one was in flight. A member
that loses a partition before its commit was confirmed (a broker restarted without the
group's generation refuses it with ILLEGAL_GENERATION and the group reassigns) remembers the
settled position: if the next assignment gives it the partition back, the records below it
are read but not handed out again, and the position is committed in the new generation.
:meth:`~KafkaConsumer.close` commits the settled position synchronously (bounded, see there)
before it leaves the group, and logs a commit it could not make.

Holding. A member that librdkafka does not see polled for ``max_poll_interval`` (librdkafka's
``max.poll.interval.ms``, 300 s) leaves the group: its partitions go to another member, its
commits fail and what it settles afterwards is read again. The collector stops taking records
while it holds its in-flight bound (a sink down for minutes), so it calls ``fetch(0, t)``
then (``Transport.fetch_when_full``): that pauses every assigned partition (and any partition
assigned meanwhile: librdkafka keeps a pause across a revoke, so each new assignment is
paused or resumed explicitly) and serves the client — heartbeats, rebalances, commit
reports — handing nothing out. The next ``fetch`` for records resumes them, from the
first record not handed out (librdkafka drops what it had fetched for a paused partition;
a record read anyway while holding is given back with a seek). ``max_poll_interval`` (6 s to
a day) is still the bound on one sink write that never returns; below 45 s the session
timeout follows it (librdkafka requires it no longer than the poll interval).

A collector that dies without leaving the group (kill -9, a crashed host) keeps its partitions
until the brokers evict it after the session timeout (librdkafka's ``session.timeout.ms``,
45 s), unless it comes back first: with ``group_instance=NAME`` (static membership, e.g. the
host name, one per collector process) a collector restarted under the same name takes its
partitions back at once, without a rebalance. Static membership is for restarts in place: a
static member does not leave the group on :meth:`~KafkaConsumer.close` either (librdkafka
sends no LeaveGroup for a ``group.instance.id``, KIP-345, and confluent-kafka has no call to
remove a member: its AdminClient lacks Kafka's RemoveMembersFromConsumerGroup), so scaling a
group down by closing a static member leaves that member's partitions unread until the
session timeout (45 s, or ``max_poll_interval`` if lower); a collector meant to go away for
good runs without ``group_instance``. The noida-db stand-in never evicts a member that
died without leaving (checked with noida-db 0.2.3): against it, a killed collector's partitions
(or a closed static member's) move only to a collector restarted with the same
``group_instance``.

Tap (:class:`KafkaTap`, ``mqlogging tail kafka://...``): reads every partition of the topic
from its end (with ``--backlog``, from the collectors' committed offsets) without joining the
group and without committing, so the collectors neither lose partitions nor skip records.

Options (query parameters or keyword arguments): ``group``, ``group_instance``,
``compression`` (``none``, ``gzip``, ``snappy``, ``lz4``, ``zstd``), ``linger_ms``,
``max_poll_interval`` (seconds, 300), ``connect_timeout``, ``timeout``,
``prefetch``; credentials (``user:password@``, ``username``, ``password`` /
``password_file`` / ``password_env``) mean SASL with ``sasl_mechanism`` (``PLAIN``, default,
``SCRAM-SHA-256``, ``SCRAM-SHA-512``); ``kafka+ssl://`` is TLS with ``ca_certs``, ``certfile``
/ ``keyfile`` (client certificate), ``verify``. The topic must exist, or the brokers must
create it on first use (``auto.create.topics.enable``); a collector started before it exists
picks it up within 5 s of its creation (as it does partitions added later); partitions bound
how many collectors of one group can share the work. Needs ``pip install 'mqlogging[kafka]'``.

Thread-safety: like every producer and consumer, owned by one thread. After ``fork()`` the
child never touches the parent's librdkafka handle (its threads do not exist in the child): it
is set aside, never destroyed, and the child makes its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar

from .. import _fork
from .._coerce import to_number
from .._types import Delivery, Message
from ..errors import (
    ConfigurationError,
    ConnectError,
    MissingDependencyError,
    NotConfirmed,
    PartlyRefused,
    PublishTimeout,
)
from ..wire import decode, read_meta
from .base import Consumer, Producer, Tap, TapOptions
from .endpoints import COMMON_OPTIONS, COMMON_TYPES, Coercer, Endpoint, Scheme
from .oversize import TOO_LARGE
from .registry import Transport

__all__ = ["TRANSPORT", "KafkaConsumer", "KafkaEndpoint", "KafkaProducer", "KafkaTap"]

_log = logging.getLogger("mqlogging.backends.kafka")

_ID_HEADER = "mqlogging-id"
_CONTENT_TYPE = ("content-type", b"application/json")
_COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_POLL = 0.05  # seconds between two looks at the delivery reports
_CONSUMER_QUEUE_KB = 8192  # librdkafka's prefetch buffer of a consumer (bytes, not records)
_CLIENT_LOGGER = "confluent_kafka.librdkafka"
_CLOSE_WAIT = 5.0  # seconds a consumer's close may wait for librdkafka (see KafkaConsumer.close)
# How often a consumer looks the topic up again (ms). librdkafka's default, five minutes, left a
# collector started before its topic existed idle that long after the first handler created
# it (and partitions added to a topic unread as long); one metadata request per 5 s is cheap.
_CONSUMER_METADATA_MS = 5000
# Bounds of the client's own: librdkafka's socket.timeout.ms (300 s), message.timeout.ms in
# milliseconds as a 32-bit int (so connect_timeout + timeout below 24 days: one day is plenty),
# and confluent-kafka's consume() batch (1,000,000 records).
_MAX_TIMEOUT = 300.0
_MAX_CONNECT_TIMEOUT = 86_400.0
_MAX_PREFETCH = 1_000_000
# A consumer's session (librdkafka's session.timeout.ms, 45 s by default) must not exceed its
# max.poll.interval.ms, and Kafka brokers refuse sessions below 6 s
# (group.min.session.timeout.ms): max_poll_interval goes from 6 s, the session follows it
# below 45 s.
_MIN_POLL_INTERVAL = 6.0
_SESSION_TIMEOUT = 45.0
# Seconds between two commits of the settled offsets that are not committed yet (a failed
# commit, or offsets settled while a commit was in flight), made by fetch.
_COMMIT_RETRY = 1.0

# -- the endpoint: kafka://h1:9092,h2/TOPIC?group=...&compression=... --------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaEndpoint(Endpoint):
    """A Kafka topic on a cluster (``kafka://``, ``kafka+ssl://``); the URL path is the topic.

    The hosts are bootstrap servers: librdkafka learns the cluster from any of them.
    """

    transport: ClassVar[str] = "kafka"
    schemes: ClassVar[Mapping[str, Scheme]] = {
        "kafka": Scheme(tls=False, default_port=9092),
        "kafka+ssl": Scheme(tls=True, default_port=9093),
    }
    url_options: ClassVar[frozenset[str]] = (COMMON_OPTIONS - {"heartbeat", "server_hostname"}) | {
        "group",
        "group_instance",
        "compression",
        "linger_ms",
        "max_poll_interval",
        "sasl_mechanism",
    }
    option_types: ClassVar[Mapping[str, Coercer]] = {
        **COMMON_TYPES,
        "linger_ms": to_number,
        "max_poll_interval": to_number,
    }

    topic: str = ""
    group: str = "mqlogging"
    group_instance: str = ""
    compression: str = "lz4"
    linger_ms: float = 5.0
    max_poll_interval: float = 300.0
    sasl_mechanism: str = "PLAIN"

    @classmethod
    def path_fields(cls, path: str, where: str) -> dict[str, Any]:
        topic = path.strip("/")
        if not topic:
            msg = f"{where}: give the topic as the URL path, e.g. kafka://broker:9092/app-logs"
            raise ConfigurationError(msg)
        return {"topic": topic}

    @classmethod
    def reconcile(cls, values: dict[str, Any], where: str) -> None:
        """A SASL mechanism without a user name would be silently unused: refused."""
        if "sasl_mechanism" in values and values.get("username") is None:
            msg = (
                f"{where}: sasl_mechanism is given but no user name; add user:password@ "
                "(or username=) or drop sasl_mechanism"
            )
            raise ConfigurationError(msg)

    def validate(self, where: str) -> None:
        if not _TOPIC.fullmatch(self.topic) or self.topic in (".", ".."):
            msg = (
                f"{where}: {self.topic!r} is not a Kafka topic name (1 to 249 of the "
                "characters a-z A-Z 0-9 . _ -)"
            )
            raise ConfigurationError(msg)
        if self.compression not in _COMPRESSIONS:
            msg = (
                f"{where}: compression must be one of {', '.join(_COMPRESSIONS)}, "
                f"not {self.compression!r}"
            )
            raise ConfigurationError(msg)
        if self.sasl_mechanism not in _SASL_MECHANISMS:
            msg = (
                f"{where}: sasl_mechanism must be one of {', '.join(_SASL_MECHANISMS)}, "
                f"not {self.sasl_mechanism!r}"
            )
            raise ConfigurationError(msg)
        if not 0 <= self.linger_ms <= 10_000:
            msg = f"{where}: linger_ms must be a number of milliseconds from 0 to 10000"
            raise ConfigurationError(msg)
        if not _MIN_POLL_INTERVAL <= self.max_poll_interval <= _MAX_CONNECT_TIMEOUT:
            msg = (
                f"{where}: max_poll_interval must be {_MIN_POLL_INTERVAL:g} to "
                f"{_MAX_CONNECT_TIMEOUT:g} seconds (Kafka refuses sessions below 6 s)"
            )
            raise ConfigurationError(msg)
        if not self.group:
            msg = f"{where}: group must not be empty (the collectors' consumer group)"
            raise ConfigurationError(msg)
        self._check_client_limits(where)
        if self.group_instance and not _TOPIC.fullmatch(self.group_instance):
            msg = (
                f"{where}: group_instance {self.group_instance!r} must be 1 to 249 of the "
                "characters a-z A-Z 0-9 . _ - (e.g. the collector's host name)"
            )
            raise ConfigurationError(msg)

    def _check_client_limits(self, where: str) -> None:
        """Values the client would refuse only when first used (in the handler's sender thread
        or the collector's worker, over and over): refused here, at parse time."""
        limits = (
            ("timeout", self.timeout, _MAX_TIMEOUT, " seconds (librdkafka's socket timeout)"),
            ("connect_timeout", self.connect_timeout, _MAX_CONNECT_TIMEOUT, " seconds"),
            ("prefetch", self.prefetch, _MAX_PREFETCH, " records"),
        )
        for name, value, limit, unit in limits:
            if value > limit:
                msg = f"{where}: {name} must be at most {limit:.12g}{unit} for Kafka"
                msg += f", not {value:.12g}"
                raise ConfigurationError(msg)

    def redacted_path(self) -> str:
        return f"/{self.topic}"

    def destination_parts(self) -> dict[str, str]:
        return {"topic": self.topic}


def _import_confluent() -> ModuleType:
    """Import confluent-kafka on first use, so ``mqlogging`` works without the extra."""
    try:
        import confluent_kafka
    except ImportError as exc:
        raise MissingDependencyError("confluent-kafka", "kafka") from exc
    module: ModuleType = confluent_kafka
    return module


class _ClientLog:
    """librdkafka's log lines, at most at INFO, on the ``confluent_kafka.librdkafka`` logger.

    Every failure that matters reaches the caller as an exception of ours (a producer's batch,
    a consumer's fetch) and from there the handler's stats or the collector's log, so
    librdkafka's own "connect failed" lines, repeated every second while a broker is down,
    are diagnostics: an application without logging configured would otherwise print them
    on stderr (``logging.lastResort`` shows warnings). A fatal error stays a warning. The
    handler ignores this logger (``Transport.loggers``): its records would loop back into it.
    """

    _LEVELS: ClassVar[Mapping[int, int]] = {
        logging.CRITICAL: logging.WARNING,
        logging.ERROR: logging.INFO,
        logging.WARNING: logging.INFO,
    }

    def __init__(self) -> None:
        self._log = logging.getLogger(_CLIENT_LOGGER)

    def log(self, level: int, msg: str, *args: Any) -> None:
        self._log.log(self._LEVELS.get(level, logging.DEBUG), msg, *args)


def _client_config(ep: KafkaEndpoint, role: str) -> dict[str, Any]:
    """librdkafka's settings common to producers, consumers and taps: servers, timeouts,
    security (TLS, SASL) and logging."""
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(str(h) for h in ep.hosts),
        "client.id": f"mqlogging-{role}-{socket.gethostname()}-{os.getpid()}",
        "socket.connection.setup.timeout.ms": max(1000, int(ep.connect_timeout * 1000)),
        "socket.timeout.ms": max(10, int(ep.timeout * 1000)),
        "log.connection.close": False,
        "logger": _ClientLog(),
    }
    credentials = ep.credentials()
    protocol = {
        (False, False): "PLAINTEXT",
        (True, False): "SSL",
        (False, True): "SASL_PLAINTEXT",
        (True, True): "SASL_SSL",
    }
    config["security.protocol"] = protocol[(ep.tls is not None, credentials is not None)]
    if credentials is not None:
        config.update(
            {
                "sasl.mechanism": ep.sasl_mechanism,
                "sasl.username": credentials[0],
                "sasl.password": credentials[1],
            }
        )
    tls = ep.tls
    if tls is not None:
        optional = {
            "ssl.ca.location": tls.ca_certs,
            "ssl.certificate.location": tls.certfile,
            "ssl.key.location": tls.keyfile,
        }
        config.update({k: v for k, v in optional.items() if v})
        config["enable.ssl.certificate.verification"] = tls.verify
        config["ssl.endpoint.identification.algorithm"] = "https" if tls.verify else "none"
    return config


def _describe(error: Any) -> str:
    """A librdkafka error in one line, with the password of no one (librdkafka never shows
    it) and without the library's repetitions of the broker address."""
    text = str(error.str() if hasattr(error, "str") else error)
    return " ".join(text.split())


def _config_error(exc: BaseException, where: str) -> ConfigurationError:
    """librdkafka refused a setting (a file it cannot read, a mechanism it was built
    without): a configuration problem, said in one line."""
    reason = exc.args[0] if exc.args else exc
    text = _describe(reason)
    return ConfigurationError(f"{where}: the Kafka client refused the settings: {text}")


# -- the producer -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Reports:
    """The delivery reports of one batch: an error (or ``None`` for delivered) per record."""

    size: int
    errors: list[Any] = field(default_factory=list)
    outcome: list[Any] = field(init=False)
    arrived: int = 0
    delivered: int = 0

    def __post_init__(self) -> None:
        self.outcome = [False] * self.size  # False: no report yet

    def callback(self, index: int) -> Callable[[Any, Any], None]:
        def report(err: Any, _msg: Any) -> None:
            if self.outcome[index] is not False:
                return
            self.outcome[index] = err
            self.arrived += 1
            if err is None:
                self.delivered += 1

        return report

    @property
    def complete(self) -> bool:
        return self.arrived == self.size

    def failed(self) -> list[tuple[int, Any]]:
        return [(i, e) for i, e in enumerate(self.outcome) if e is not None and e is not False]


class _Client:
    """What producer, consumer and tap share: the endpoint, the client module, the errors
    librdkafka reports outside of any record, and the fork rule."""

    _role = "client"

    endpoint: KafkaEndpoint

    def __init__(self, endpoint: str | Endpoint, **options: Any) -> None:
        self.endpoint = KafkaEndpoint.from_url(endpoint, **options)
        self._ck = _import_confluent()
        self._handle: Any = None
        self._inherited: Any = None  # the parent's handle, in a forked child: never used
        self._fatal: str | None = None
        self._down: str | None = None  # why no broker is reachable, until one answers again
        _fork.register(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint.redacted()!r})"

    def after_fork_in_child(self) -> None:
        """Set the parent's librdkafka handle aside (see :mod:`mqlogging._fork`).

        Its threads did not survive the fork and its sockets are the parent's: destroying it
        in the child would wait for threads that do not exist. It stays referenced, untouched,
        and the next use makes a new one.
        """
        self._inherited, self._handle = self._handle, None

    def _on_error(self, error: Any) -> None:
        """librdkafka's error callback (runs inside poll/consume on the owner thread)."""
        err = self._ck.KafkaError
        if error.fatal():
            self._fatal = _describe(error)
        elif error.code() in (
            err._ALL_BROKERS_DOWN,
            err._TRANSPORT,
            err._RESOLVE,
            err._AUTHENTICATION,
            err._SSL,
        ):
            self._down = _describe(error)

    def _settings(self) -> dict[str, Any]:
        config = _client_config(self.endpoint, self._role)
        config["error_cb"] = self._on_error
        return config


class KafkaProducer(_Client, Producer):
    """Publishes batches to the endpoint's topic and returns once every record is delivered
    (``acks=all``, idempotent); see the module docstring."""

    endpoint: KafkaEndpoint

    _role = "producer"

    def __init__(self, endpoint: str | Endpoint, **options: Any) -> None:
        super().__init__(endpoint, **options)
        # The key of records that carry no producer identity: this producer's own, so they
        # still keep their order in one partition.
        self._own_key = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}".encode()

    def publish_batch(self, messages: Sequence[Message]) -> None:
        """Publish ``messages`` in order; return once each one's delivery report said
        delivered. See :meth:`Producer.publish_batch` and the module docstring."""
        if not messages:
            return
        handle = self._ensure_handle()
        ep = self.endpoint
        began = time.monotonic()
        deadline = began + ep.connect_timeout + ep.timeout + 1.0
        reports = _Reports(len(messages))
        for index, message in enumerate(messages):
            self._produce(handle, message, reports.callback(index), deadline)
        while not reports.complete and self._fatal is None:
            now = time.monotonic()
            if now >= deadline or self._unreachable(reports, now - began):
                break
            handle.poll(min(_POLL, deadline - now))
        if reports.delivered:
            self._down = None
        self._raise_for(reports, messages, time.monotonic() - began)

    def _produce(
        self, handle: Any, message: Message, report: Callable[[Any, Any], None], deadline: float
    ) -> None:
        """Queue one record; a full local queue is served (delivery reports) until it has
        room; a record librdkafka refuses at once gets that refusal as its report."""
        headers = [(_ID_HEADER, message.id.encode()), _CONTENT_TYPE]
        key = self._key(message)
        while True:
            try:
                handle.produce(
                    self.endpoint.topic, message.body, key, headers=headers, on_delivery=report
                )
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    report(self._ck.KafkaError(self._ck.KafkaError._QUEUE_FULL), None)
                    return
                handle.poll(_POLL)
            except self._ck.KafkaException as exc:
                report(exc.args[0], None)
                return

    def _key(self, message: Message) -> bytes:
        """The record's producer identity (every record of one handler in one partition)."""
        producer = read_meta(decode(message.body)).producer
        return producer.encode() if producer else self._own_key

    def _unreachable(self, reports: _Reports, waited: float) -> bool:
        """True when waiting longer is pointless: nothing delivered, librdkafka says no broker
        can be reached, and ``connect_timeout`` has passed (it keeps trying meanwhile)."""
        return (
            reports.delivered == 0
            and self._down is not None
            and (waited >= self.endpoint.connect_timeout)
        )

    def _raise_for(self, reports: _Reports, messages: Sequence[Message], waited: float) -> None:
        """Raise what the reports say (nothing when every record was delivered)."""
        where = self.endpoint.redacted()
        if not reports.complete or self._fatal is not None:
            missing = reports.size - reports.arrived
            first = next((i for i, e in enumerate(reports.outcome) if e is False), 0)
            self._abandon()  # records still queued would arrive behind newer ones
            if self._fatal is not None:
                fatal, self._fatal = self._fatal, None
                msg = f"the Kafka client failed ({fatal}); {missing} records not confirmed"
                raise NotConfirmed(msg, endpoint=where)
            if reports.delivered == 0 and self._down is not None:
                msg = f"cannot reach any broker: {self._down}"
                raise ConnectError(msg, endpoint=where)
            msg = (
                f"{missing} of {reports.size} records not confirmed within {waited:.1f}s "
                f"(first id {messages[first].id})"
            )
            raise PublishTimeout(msg, endpoint=where)
        failed = reports.failed()
        if not failed:
            return
        self._raise_refused(failed, messages, where)

    def _raise_refused(
        self, failed: list[tuple[int, Any]], messages: Sequence[Message], where: str
    ) -> None:
        codes = self._ck.KafkaError
        # Refusals of the record itself (librdkafka uses MSG_SIZE_TOO_LARGE for its own
        # message.max.bytes check too): sending it again can never succeed.
        too_large = {codes.MSG_SIZE_TOO_LARGE, codes.RECORD_LIST_TOO_LARGE}
        permanent = too_large | {codes.INVALID_RECORD}
        index, error = failed[0]
        text = _describe(error)
        if all(e.code() in permanent for _, e in failed):
            msg = (
                f"broker refused {len(failed)} of {len(messages)} records for good ({text}; "
                f"first id {messages[index].id}); raise the topic's max.message.bytes or lower "
                "the handler's max_record_bytes"
            )
            # Counted under the reason every transport uses for a record above the limit.
            sized = all(e.code() in too_large for _, e in failed)
            raise PartlyRefused(
                msg,
                ids=frozenset(messages[i].id for i, _ in failed),
                endpoint=where,
                drop_reason=TOO_LARGE if sized else "rejected_unsaved",
            )
        # Any other error report (e.g. OUT_OF_ORDER_SEQUENCE_NUMBER after a broker lost the
        # idempotence state in a crash) may leave the producer's sequence out of step with the
        # broker: the next batch starts on a new producer id.
        self._abandon()
        hint = _hints(self._ck).get(error.code(), "")
        msg = f"{len(failed)} of {len(messages)} records not delivered: {text}{hint}"
        if error.code() in (codes._MSG_TIMED_OUT, codes.REQUEST_TIMED_OUT):
            raise PublishTimeout(msg, endpoint=where)
        raise NotConfirmed(msg, endpoint=where)

    def _ensure_handle(self) -> Any:
        if self._handle is None:
            ep = self.endpoint
            config = self._settings()
            config.update(
                {
                    "acks": "all",
                    "enable.idempotence": True,
                    "linger.ms": ep.linger_ms,
                    "compression.type": ep.compression,
                    "message.timeout.ms": max(1, int((ep.connect_timeout + ep.timeout) * 1000)),
                    "request.timeout.ms": max(1, int(ep.timeout * 1000)),
                }
            )
            try:
                self._handle = self._ck.Producer(config)
            except (self._ck.KafkaException, ValueError, TypeError) as exc:
                raise _config_error(exc, ep.redacted()) from exc
        return self._handle

    def _abandon(self) -> None:
        """Purge what librdkafka still holds and drop the handle: the next batch starts on a
        new one, so a record given up on here can never be delivered after newer ones."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        with contextlib.suppress(Exception):
            handle.purge()
            handle.poll(0)
        self._close_handle(handle)

    @staticmethod
    def _close_handle(handle: Any) -> None:
        with contextlib.suppress(Exception):
            handle.flush(0)
        del handle  # librdkafka's handle is destroyed with the last reference

    def close(self) -> None:
        """Drop the client. Every batch was settled when publish_batch returned, so nothing
        is left to deliver. Idempotent; never raises."""
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.purge()
            self._close_handle(handle)


def _hints(ck: ModuleType) -> dict[int, str]:
    """What to do about the errors a configuration causes."""
    codes = ck.KafkaError
    return {
        codes.UNKNOWN_TOPIC_OR_PART: "; create the topic (or enable auto.create.topics.enable)",
        codes._UNKNOWN_TOPIC: "; create the topic (or enable auto.create.topics.enable)",
        codes.TOPIC_AUTHORIZATION_FAILED: "; grant the user WRITE on the topic",
        codes.NOT_ENOUGH_REPLICAS: "; fewer in-sync replicas than min.insync.replicas",
    }


# -- the consumer -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Partition:
    """Offsets of one assigned partition: handed out and not settled, given back to be
    handed out again, and one past the highest handed out.

    ``position()`` is what may be committed: every record below it is settled. ``committed``
    is the highest offset the group coordinator confirmed, ``committing`` the one of the
    commit in flight (-1: none). ``floor``: this member settled every record below it while
    it owned the partition before (a commit of it had not been confirmed when the partition
    was taken away), so those records are not handed out again.
    """

    generation: int
    floor: int = -1
    pending: set[int] = field(default_factory=set)
    redo: set[int] = field(default_factory=set)
    next: int = -1
    committed: int = -1
    committing: int = -1

    def take(self, offset: int) -> bool:
        """Whether the record read at ``offset`` is handed out: a new one, or one given back.
        A record read again after a seek that was already handed out (settled, or still in
        flight with the caller) is not: only what was given back comes again. Nor is one
        below ``floor``: it was settled before, it only moves the position on."""
        if offset in self.redo:
            self.redo.discard(offset)
        elif offset < self.next:
            return False
        elif offset < self.floor:
            self.next = offset + 1
            return False
        self.pending.add(offset)
        self.next = max(self.next, offset + 1)
        return True

    def resume_at(self) -> int:
        """Where reading goes on (the first record given back, else one past the highest
        handed out; -1: nothing handed out yet, read from the committed offset)."""
        return min(self.redo, default=self.next)

    def wants(self, offset: int) -> bool:
        """Whether :meth:`take` would hand the record at ``offset`` out (changing nothing)."""
        return offset in self.redo or offset >= max(self.next, self.floor)

    def position(self) -> int:
        return min(min(self.pending, default=self.next), min(self.redo, default=self.next))

    def unconfirmed(self) -> int:
        """The settled position when the coordinator has not confirmed it yet, else -1."""
        position = self.position()
        return position if position > self.committed else -1

    def give_back(self, offsets: Sequence[int]) -> int:
        """``offsets`` are to be handed out again; returns where to read from (the lowest
        record given back and not handed out again yet)."""
        self.pending.difference_update(offsets)
        self.redo.update(offsets)
        return min(self.redo)


class KafkaConsumer(_Client, Consumer):
    """A member of the consumer group ``group`` on the endpoint's topic; commits after ack.

    See the module docstring for the commit and rebalance rules. ``Delivery.tag`` is
    ``(assignment generation, partition, offset)``; ``Delivery.id`` is the record id header,
    else ``kafka:<topic>:<partition>:<offset>`` (stable across re-reads).
    """

    endpoint: KafkaEndpoint

    _role = "consumer"

    def __init__(self, endpoint: str | Endpoint, **options: Any) -> None:
        super().__init__(endpoint, **options)
        self._parts: dict[int, _Partition] = {}
        self._generation = 0
        self._holding = False  # fetch(0): every assigned partition is paused
        # Settled positions of partitions taken away before their commit was confirmed: the
        # floor of the partition if it comes back (see _Partition.floor).
        self._floors: dict[int, int] = {}
        # Partitions revoked by the rebalance under way (eager: every partition is revoked,
        # then the new assignment comes): those assigned back keep their state.
        self._revoked: dict[int, _Partition] = {}
        self._commit_at = 0.0  # when fetch next commits what is settled and not confirmed
        self._commit_failing = False
        self._token: object = None  # the handle whose commit reports count (see _on_commit)

    def _ensure_handle(self) -> Any:
        if self._handle is None:
            ep = self.endpoint
            token = self._token = object()
            config = self._settings()
            config.update(
                {
                    "group.id": ep.group,
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "queued.max.messages.kbytes": _CONSUMER_QUEUE_KB,
                    "topic.metadata.refresh.interval.ms": _CONSUMER_METADATA_MS,
                    "max.poll.interval.ms": int(ep.max_poll_interval * 1000),
                    "session.timeout.ms": int(min(_SESSION_TIMEOUT, ep.max_poll_interval) * 1000),
                    "on_commit": lambda err, tps: self._on_commit(token, err, tps),
                }
            )
            if ep.group_instance:
                config["group.instance.id"] = ep.group_instance
            try:
                handle = self._ck.Consumer(config)
            except (self._ck.KafkaException, ValueError, TypeError) as exc:
                raise _config_error(exc, ep.redacted()) from exc
            handle.subscribe(
                [ep.topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self._handle = handle
        return self._handle

    # Rebalance and commit callbacks: librdkafka calls them inside consume(), on the owner
    # thread.

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        """New partitions, paused at once while the caller holds (fetch(0)), resumed
        otherwise: librdkafka keeps a partition's pause across a revoke and a new assign.

        A partition revoked by this rebalance and assigned back keeps its state (records in
        flight, given back, floor): no other member owned it in between. It is read on from
        where this member was (see :meth:`_Partition.resume_at`), not from the committed
        offset, so records still in flight are not handed out twice."""
        if consumer is not self._handle:
            return  # a closed handle's last callbacks (see close)
        self._generation += 1
        # A floor holds for the next assignment only: a partition that went to another
        # member is read from what that member commits.
        floors, self._floors = self._floors, {}
        kept, self._revoked = self._revoked, {}
        start = [self._take_over(tp, kept.get(tp.partition), floors) for tp in partitions]
        if start:
            consumer.assign(start)  # now rather than after the callback: to pause them
            (consumer.pause if self._holding else consumer.resume)(start)

    def _take_over(self, tp: Any, kept: _Partition | None, floors: dict[int, int]) -> Any:
        """Start owning ``tp``: with its ``kept`` state (reading on where this member was)
        or a new one (from the committed offset, above its floor if any). Returns what to
        assign."""
        if kept is None:
            self._parts[tp.partition] = _Partition(self._generation, floors.get(tp.partition, -1))
            return tp
        self._parts[tp.partition] = kept
        if kept.resume_at() < 0:
            return tp
        return self._ck.TopicPartition(tp.topic, tp.partition, kept.resume_at())

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        """Commit the settled prefix of each revoked partition. Its records still in flight
        become void (their next owner reads them again) unless the rebalance assigns the
        partition back to this member (see :meth:`_on_assign`); till then they can still be
        acked."""
        if consumer is not self._handle:
            return
        self._commit(consumer, [tp.partition for tp in partitions], force=True)
        for tp in partitions:
            part = self._parts.pop(tp.partition, None)
            if part is not None:
                self._revoked[tp.partition] = part

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        """Forget the partitions; keep the settled position of those whose commit is not
        confirmed (should they come back, those records are not handed out again), and the
        floor of those that had one above the committed offset."""
        if consumer is not self._handle:
            return
        for tp in partitions:
            part = self._parts.pop(tp.partition, None)
            if part is not None and max(part.unconfirmed(), part.floor) > part.committed:
                self._floors[tp.partition] = max(part.unconfirmed(), part.floor)

    def _on_commit(self, token: object, error: Any, partitions: list[Any]) -> None:
        """A commit's outcome: confirmed offsets are recorded, failed ones are committed
        again by the next fetch (see :meth:`_commit_settled`). Only partitions still owned
        count for the warning: a failed commit of one revoked meanwhile is not retried (its
        next owner reads those records again), which is logged at INFO."""
        if token is not self._token:
            return  # a closed handle's report
        if not partitions:
            self._none_named(error)
            return
        owned: Any = None  # the failure of a partition still owned, if any
        gone: list[Any] = []  # failures of partitions no longer owned
        for tp in partitions:
            problem = error if error is not None else tp.error
            part = self._parts.get(tp.partition)
            if part is not None and part.committing == tp.offset:
                part.committing = -1
            if problem is not None:
                owned = problem if part is not None else owned
                gone += [] if part is not None else [problem]
            elif tp.offset >= 0:
                self._confirmed(part, tp.partition, tp.offset)
        if gone:
            _log.info(
                "%s: offset commit of %d partition(s) no longer assigned failed (%s): their "
                "next owner reads those records again",
                self.endpoint.redacted(),
                len(gone),
                _describe(gone[0]),
            )
        if owned is not None or len(gone) < len(partitions):
            self._note_commit(owned)

    def _none_named(self, error: Any) -> None:
        """A commit report naming no partition: whatever was in flight failed."""
        in_flight = [each for each in self._parts.values() if each.committing >= 0]
        for each in in_flight:
            each.committing = -1
        if in_flight or error is None:
            self._note_commit(error)

    def _confirmed(self, part: _Partition | None, partition: int, offset: int) -> None:
        """The coordinator confirmed ``offset`` for ``partition`` (``part``, if owned)."""
        if part is not None:
            part.committed = max(part.committed, offset)
        if self._floors.get(partition, -1) <= offset:
            self._floors.pop(partition, None)

    def _note_commit(self, failed: Any) -> None:
        """Say when commits start failing (once) and when they work again."""
        if failed is not None and not self._commit_failing:
            _log.warning(
                "%s: offset commit failed (%s); retrying every %gs",
                self.endpoint.redacted(),
                _describe(failed),
                _COMMIT_RETRY,
            )
        elif failed is None and self._commit_failing:
            _log.info("%s: offsets committed again", self.endpoint.redacted())
        self._commit_failing = failed is not None

    def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Up to ``max_messages`` records within ``timeout`` seconds (see :class:`Consumer`).

        ``max_messages=0`` holds: every assigned partition is paused (so are partitions
        assigned meanwhile) and the client is served for ``timeout`` seconds (the group's
        heartbeats, rebalances, commit reports, librdkafka's ``max.poll.interval.ms``); the
        next call for records resumes them, from the first record not handed out yet.

        Raises:
            ConnectError: librdkafka reported that no broker can be reached (or a fatal
                error) and nothing arrived; call again, it keeps reconnecting.
        """
        handle = self._ensure_handle()
        self._hold(handle, max_messages <= 0)
        try:
            messages = handle.consume(
                max(1, min(max_messages, self.endpoint.prefetch)), max(0, timeout)
            )
        except self._ck.KafkaException as exc:
            msg = f"cannot receive: {_describe(exc.args[0])}"
            raise ConnectError(msg, endpoint=self.endpoint.redacted()) from exc
        if self._holding:
            messages = self._put_back(handle, messages)
        out = [d for d in (self._delivery(m) for m in messages) if d is not None]
        self._commit_settled(handle)
        problem = self._fatal or self._down
        if not out and problem is not None:
            self._down = None
            msg = f"cannot receive from any broker: {problem}"
            raise ConnectError(msg, endpoint=self.endpoint.redacted())
        if out:
            self._down = None
        return out

    def _hold(self, handle: Any, hold: bool) -> None:
        """Pause every assigned partition (``hold``) or resume them, when that changes."""
        if hold == self._holding:
            return
        self._holding = hold
        with contextlib.suppress(self._ck.KafkaException, RuntimeError):
            assigned = handle.assignment()
            if assigned:
                (handle.pause if hold else handle.resume)(assigned)

    def _put_back(self, handle: Any, messages: list[Any]) -> list[Any]:
        """Records read while holding (librdkafka had them before the pause took effect)
        are not handed out: each partition seeks back to the first of them, so they come
        after the resume. Returns the error events, which are not records."""
        back: dict[int, int] = {}
        events = []
        for message in messages:
            if message.error() is not None:
                events.append(message)
                continue
            partition, offset = message.partition(), message.offset()
            part = self._parts.get(partition)
            if part is not None and part.wants(offset):
                back[partition] = min(offset, back.get(partition, offset))
        for partition, offset in back.items():
            with contextlib.suppress(self._ck.KafkaException):
                handle.seek(self._ck.TopicPartition(self.endpoint.topic, partition, offset))
        return events

    def _delivery(self, message: Any) -> Delivery | None:
        error = message.error()
        if error is not None:
            if error.code() != self._ck.KafkaError._PARTITION_EOF:
                self._down = _describe(error) + _hints(self._ck).get(error.code(), "")
            return None
        partition, offset = message.partition(), message.offset()
        part = self._parts.get(partition)
        if part is None or not part.take(offset):  # not ours any more, or read again
            return None
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in message.headers() or ()}
        rid = headers.get(_ID_HEADER) or f"kafka:{self.endpoint.topic}:{partition}:{offset}"
        headers.update({"partition": str(partition), "offset": str(offset)})
        return Delivery(
            id=rid,
            body=message.value() or b"",
            tag=(part.generation, partition, offset),
            headers=headers,
        )

    def _ours(self, deliveries: Sequence[Delivery]) -> dict[int, list[int]]:
        """The offsets of ``deliveries`` per partition, leaving out void ones (revoked)."""
        out: dict[int, list[int]] = {}
        for d in deliveries:
            tag = d.tag
            if not (isinstance(tag, tuple) and len(tag) == 3):
                continue
            generation, partition, offset = tag
            part = self._held(partition)
            if part is not None and part.generation == generation and offset in part.pending:
                out.setdefault(partition, []).append(offset)
        return out

    def _held(self, partition: int) -> _Partition | None:
        """The state of ``partition``: assigned, or revoked by the rebalance under way (it
        may be assigned back, see :meth:`_on_assign`)."""
        return self._parts.get(partition) or self._revoked.get(partition)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Mark ``deliveries`` done and commit (asynchronously) each partition's settled
        prefix. Void deliveries are ignored. A commit that fails is made again by the next
        fetch; one lost with the process only means those records are read again."""
        handle = self._handle
        if handle is None:
            return
        settled = self._ours(deliveries)
        for partition, offsets in settled.items():
            part = self._held(partition)
            if part is not None:
                part.pending.difference_update(offsets)
        self._commit(handle, list(settled))

    def nack(self, deliveries: Sequence[Delivery], *, requeue: bool = True) -> None:
        """``requeue``: hand them out again (the partition seeks back to the first one; of
        what is read again, only the records given back are handed out, not those acked or
        still in flight); otherwise they are done, as Kafka cannot remove one record (the
        collector never rejects: it dead-letters and acks)."""
        handle = self._handle
        if handle is None:
            return
        if not requeue:
            self.ack(deliveries)
            return
        for partition, offsets in self._ours(deliveries).items():
            part = self._held(partition)
            if part is None:
                continue
            first = part.give_back(offsets)
            with contextlib.suppress(self._ck.KafkaException):
                handle.seek(self._ck.TopicPartition(self.endpoint.topic, partition, first))

    def _commit_settled(self, handle: Any) -> None:
        """Every ``_COMMIT_RETRY`` seconds, commit the settled positions not confirmed yet:
        a commit that failed (coordinator moving, broker restarted) or offsets settled
        while a commit was in flight."""
        now = time.monotonic()
        if now >= self._commit_at:
            self._commit_at = now + _COMMIT_RETRY
            self._commit(handle, list(self._parts))

    def _commit(self, handle: Any, partitions: list[int], *, force: bool = False) -> None:
        """Commit asynchronously the settled position of ``partitions`` not confirmed yet,
        one commit in flight per partition (``force``: even with one in flight)."""
        offsets = []
        for partition in partitions:
            part = self._parts.get(partition)
            if part is None or (part.committing >= 0 and not force):
                continue
            position = part.unconfirmed()
            if position >= 0:
                part.committing = position
                offsets.append(self._ck.TopicPartition(self.endpoint.topic, partition, position))
        if not offsets:
            return
        try:
            handle.commit(offsets=offsets, asynchronous=True)
        except (self._ck.KafkaException, RuntimeError) as exc:
            for tp in offsets:
                self._parts[tp.partition].committing = -1
            self._note_commit(exc.args[0] if exc.args else exc)

    def close(self) -> None:
        """Commit the settled prefixes (synchronously), leave the group (its partitions move
        to the other members at once) and drop the client. Unacked records are read again.
        Idempotent.

        A static member (``group_instance``) does not leave the group: librdkafka sends no
        LeaveGroup for it (KIP-345), so its partitions wait for a member restarted under the
        same name, or for the session timeout (45 s; never on the noida-db stand-in) before
        they move to the others. confluent-kafka offers no way to remove a static member.

        Bounded by ``timeout`` (at most 5 s): the commit waits for the coordinator, and
        librdkafka's close for an outstanding commit, which takes its whole session timeout
        (45 s) when the brokers are gone. The close then goes on in a daemon thread and
        this returns; a commit it could not make only means the group reads those records
        again (it is logged).
        """
        handle, self._handle = self._handle, None
        if handle is None:
            return
        self._token = None  # the handle's commit reports no longer count
        topic, ck = self.endpoint.topic, self._ck
        offsets = [
            ck.TopicPartition(topic, partition, part.unconfirmed())
            for partition, part in self._parts.items()
            if part.unconfirmed() >= 0
        ]
        self._parts, self._floors, self._revoked, self._holding = {}, {}, {}, False
        where = self.endpoint.redacted()
        closing = threading.Thread(
            target=_close_quietly,
            args=(handle, offsets, where),
            daemon=True,
            name="mqlogging-kafka-close",
        )
        closing.start()
        closing.join(min(self.endpoint.timeout, _CLOSE_WAIT))


def _close_quietly(handle: Any, offsets: list[Any], where: str) -> None:
    """Commit ``offsets`` and wait for the outcome, then close ``handle`` (the group is
    left). A failed commit is logged: those records will be read again."""
    try:
        if offsets:
            done = handle.commit(offsets=offsets, asynchronous=False)
            failed = [tp for tp in done or () if tp.error is not None]
            if failed:
                _log.warning(
                    "%s: final commit failed (%s): settled records of %d partition(s) will be "
                    "read again",
                    where,
                    _describe(failed[0].error),
                    len(failed),
                )
    except Exception as exc:  # the commit raises KafkaException; nothing may escape here
        _log.warning("%s: final commit failed (%s): settled records will be read again", where, exc)
    with contextlib.suppress(Exception):
        handle.close()


# -- tap: a non-destructive live view -------------------------------------------------------


class KafkaTap(_Client, Tap):
    """Reads every partition of the topic from its end (``backlog``: from the group's
    committed offsets), joining no group and committing nothing (see the module docstring).

    Connects in the constructor: an unreachable cluster or a missing topic is an error before
    anything is shown. Partitions added to the topic later are not followed.
    """

    endpoint: KafkaEndpoint

    _role = "tail"

    def __init__(self, endpoint: str | Endpoint, options: TapOptions | None = None) -> None:
        super().__init__(endpoint)
        backlog = (options or TapOptions()).backlog
        ep = self.endpoint
        config = self._settings()
        # The group's own id only to read its committed offsets: assign() joins no group.
        group = ep.group if backlog else f"mqlogging-tail-{os.urandom(4).hex()}"
        config.update(
            {"group.id": group, "enable.auto.commit": False, "enable.auto.offset.store": False}
        )
        try:
            self._handle = self._ck.Consumer(config)
        except (self._ck.KafkaException, ValueError, TypeError) as exc:
            raise _config_error(exc, ep.redacted()) from exc
        try:
            partitions = self._partitions()
            self._handle.assign(self._start_offsets(partitions, backlog))
        except BaseException:
            self.close()
            raise
        self.backlog = backlog  # honoured: what waits is shown (audit --dead-letters needs it)
        start = "the group's committed offsets" if backlog else "their end"
        self.mode = (
            f"copy of records: partitions {', '.join(map(str, partitions))} of topic "
            f"{ep.topic!r} read from {start}, no group joined, nothing committed "
            f"(group {ep.group!r} is untouched)"
        )

    def _partitions(self) -> list[int]:
        ep = self.endpoint
        try:
            metadata = self._handle.list_topics(ep.topic, timeout=ep.connect_timeout + ep.timeout)
        except self._ck.KafkaException as exc:
            msg = f"cannot reach the cluster: {_describe(exc.args[0])}"
            raise ConnectError(msg, endpoint=ep.redacted()) from exc
        topic = metadata.topics.get(ep.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            msg = f"{ep.redacted()}: topic {ep.topic!r} does not exist (yet) on the cluster"
            raise ConfigurationError(msg)
        return sorted(topic.partitions)

    def _start_offsets(self, partitions: list[int], backlog: bool) -> list[Any]:
        ck, ep = self._ck, self.endpoint
        tps = [ck.TopicPartition(ep.topic, p, ck.OFFSET_END) for p in partitions]
        if not backlog:
            return tps
        committed = self._handle.committed(tps, timeout=ep.connect_timeout + ep.timeout)
        return [
            ck.TopicPartition(
                ep.topic, tp.partition, tp.offset if tp.offset >= 0 else ck.OFFSET_BEGINNING
            )
            for tp in committed
        ]

    def poll(self, timeout: float) -> list[bytes]:
        """The bodies that arrived, waiting at most ``timeout`` seconds for the first."""
        handle = self._handle
        if handle is None:
            msg = f"tap of {self.endpoint.redacted()} is closed"
            raise ConnectError(msg, endpoint=self.endpoint.redacted())
        try:
            messages = handle.consume(500, max(0, timeout))
        except self._ck.KafkaException as exc:
            msg = f"cannot receive: {_describe(exc.args[0])}"
            raise ConnectError(msg, endpoint=self.endpoint.redacted()) from exc
        return [m.value() or b"" for m in messages if m.error() is None]

    def close(self) -> None:
        """Drop the client (nothing to commit). Idempotent."""
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.close()


# -- registration ----------------------------------------------------------------------------

TRANSPORT = Transport(
    endpoint=KafkaEndpoint,
    producer=KafkaProducer,
    consumer=KafkaConsumer,
    tap=KafkaTap,
    fetch_when_full=True,  # fetch(0) pauses the partitions and keeps the membership alive
    preload=("confluent_kafka",),
    loggers=("confluent_kafka",),
)
"""What the registry hands out for ``kafka://`` and ``kafka+ssl://`` URLs."""
