"""Collector configuration: a TOML file (plus environment overrides) into frozen dataclasses.

Everything is validated once, at start, and every problem is one line that names the file,
the table and the key, and says what to fix — an unknown key comes with a "did you mean", a bad
URL with the parser's reason, a missing certificate with its path. The CLI turns the
:class:`~mqlogging.errors.ConfigurationError` into exit code 2.

File layout (see ``examples/collector-*.toml``)::

    [collector]          shutdown_timeout, log_level, host_name, state_dir
    [pipeline]           batching, size/depth limits, in-flight byte bound, enrichment, retry
    [[sources]]          url (amqp://, amqps://, stomp://, stomp+ssl://, kafka://, local://),
                         name, prefetch; or type = "http": the HTTPS ingest
                         (:mod:`mqlogging.collector.ingest`)
    [[sinks]]            type = "elasticsearch" | "logstash" | "file" | "stdout" | "null"
    [dead_letter]        url (a broker queue or local:// spool directory; default: a spool
                         directory under state_dir)
    [http]               listen = "127.0.0.1:9108" (metrics, /healthz, /readyz; "" disables)

Environment overrides (the environment wins over the file; use them for secrets):

- ``MQLOGGING_ES_API_KEY``, ``MQLOGGING_ES_USERNAME``, ``MQLOGGING_ES_PASSWORD``: every
  ``elasticsearch`` sink; ``MQLOGGING_LOGSTASH_USERNAME``/``_PASSWORD``: every ``logstash`` sink.
- ``MQLOGGING_<TABLE>_<KEY>`` for the single tables, e.g.
  ``MQLOGGING_PIPELINE_BATCH_MAX_COUNT=500``,
  ``MQLOGGING_HTTP_LISTEN=0.0.0.0:9108``, ``MQLOGGING_DEAD_LETTER_URL=...``.
- ``MQLOGGING_SOURCES_<N>_<KEY>`` / ``MQLOGGING_SINKS_<N>_<KEY>`` for the N-th (0-based) entry of
  an array, e.g. ``MQLOGGING_SOURCES_0_URL=amqps://user:secret@mq1,mq2/``.
  Broker passwords can also stay out of the file with the URL option ``password_env=VAR``.

Values from the environment are converted to the key's type (``"500"`` → 500, ``"true"`` → True).

Where things live: this module holds the service-level tables (``[collector]``, ``[pipeline]``,
``[[sources]]``, ``[http]``) and the loading; each sink's config is beside its sink in
:mod:`mqlogging.collector.sinks` (``[[sinks]]`` ``type`` -> config through
:data:`~mqlogging.collector.sinks.SINK_TYPES`), the dead-letter target's beside the dead-letter
writer; every table is read by its class's ``from_table`` (:mod:`._table`: by the fields' types).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._coerce import did_you_mean, port_number, refuse_unknown
from ..backends import Consumer, UnpackingConsumer, open_consumer, transport_for
from ..backends.endpoints import Endpoint
from ..errors import ConfigurationError
from ._table import (
    ENV_PREFIX,
    FromTable,
    PositiveFloat,
    PositiveInt,
    Table,
    check_fields,
    env_indices,
)
from .ingest import HttpSourceConfig
from .sinks import SINK_TYPES, SinkConfig
from .sinks.deadletter import DEAD_LETTER_SPOOL, DeadLetterConfig
from .sinks.elasticsearch import ElasticsearchSinkConfig
from .sinks.file import FileSinkConfig, NullSinkConfig
from .sinks.logstash import LogstashSinkConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    try:
        import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        from ..errors import MissingDependencyError

        raise MissingDependencyError("tomli", "collector") from exc

__all__ = [
    "DEAD_LETTER_SPOOL",
    "SOURCE_TYPES",
    "CollectorConfig",
    "CollectorSection",
    "DeadLetterConfig",
    "ElasticsearchSinkConfig",
    "FileSinkConfig",
    "HttpConfig",
    "HttpSourceConfig",
    "LogLevel",
    "LogstashSinkConfig",
    "NullSinkConfig",
    "PipelineConfig",
    "SinkConfig",
    "SourceAny",
    "SourceConfig",
    "default_dead_letter",
    "load_config",
    "parse_config",
]

LogLevel = Literal["debug", "info", "warning", "error"]
"""The collector's own log levels (``[collector] log_level``, ``--log-level``)."""


# -- sections ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectorSection(FromTable):
    """Process-wide settings.

    ``shutdown_timeout``: seconds a SIGTERM gives in-flight batches to reach the sinks before
    the rest is requeued. ``host_name``: the name put in enriched records (default: hostname).
    ``state_dir``: where the collector keeps its own files — today the default dead-letter spool
    (default: ``$XDG_STATE_HOME/mqlogging/collector``, else ``~/.local/state/mqlogging/collector``).
    """

    shutdown_timeout: PositiveFloat = 10.0
    log_level: LogLevel = "info"
    host_name: str = ""
    state_dir: str = ""

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def state_path(self) -> Path:
        """``state_dir``, or the per-user XDG state directory when it is not set."""
        if self.state_dir:
            return Path(self.state_dir).expanduser().absolute()
        base = os.environ.get("XDG_STATE_HOME") or os.path.join("~", ".local", "state")
        return (Path(base).expanduser() / "mqlogging" / "collector").absolute()


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineConfig(FromTable):
    """Batching, limits, enrichment and retry policy shared by every source.

    A batch is written when it holds ``batch_max_count`` records or ``batch_max_bytes`` bytes,
    or ``batch_max_wait`` seconds after its first record arrived. Messages larger than
    ``max_message_bytes``, nested deeper than ``max_depth`` or with more than ``max_fields``
    keys (Elasticsearch's default mapping limit is 1000 fields) are dead-lettered, never sent.
    Failed items are retried with capped, jittered backoff (``retry_initial`` .. ``retry_max``
    seconds); ``max_attempts = 0`` retries for as long as it takes (the broker keeps the
    messages; every retry is counted and logged), N > 0 dead-letters an item after N attempts.
    ``received_at_field`` / ``host_field`` are dotted paths set on every record when ``enrich``
    is on (empty string: not set).

    ``max_inflight_bytes`` bounds the message bytes a source's worker holds (taken from the
    consumer, not yet settled), decoded documents and sink requests included in proportion:
    the worker takes no more while it holds that much, and takes only as many as fit by the
    size of recent messages (one message is always allowed, so a single large one cannot
    deadlock). On AMQP the broker's window follows too: the consumer's prefetch is narrowed to
    what fits in ``max_inflight_bytes`` at the size of recent messages (never above
    ``prefetch``), so the rest waits in the broker, not in the client library's receive
    buffer. STOMP fixes the prefetch at SUBSCRIBE: there the client may buffer up to
    ``prefetch`` messages as raw bytes — choose ``prefetch`` with the message size in mind.
    """

    batch_max_count: PositiveInt = 1000
    batch_max_bytes: PositiveInt = 5 * 1024 * 1024
    batch_max_wait: PositiveFloat = 1.0
    max_message_bytes: PositiveInt = 1024 * 1024
    max_inflight_bytes: PositiveInt = 64 * 1024 * 1024
    max_depth: PositiveInt = 64
    max_fields: PositiveInt = 1000
    enrich: bool = True
    received_at_field: str = "event.ingested"
    host_field: str = ""
    retry_initial: PositiveFloat = 0.5
    retry_max: PositiveFloat = 30.0
    max_attempts: int = 0

    def __post_init__(self) -> None:
        check_fields(self)
        if self.max_attempts < 0:
            msg = "max_attempts must be 0 (retry until it works) or a positive integer"
            raise ConfigurationError(msg)
        if self.retry_max < self.retry_initial:
            msg = f"retry_max ({self.retry_max}) must be >= retry_initial ({self.retry_initial})"
            raise ConfigurationError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceConfig(FromTable):
    """One queue (or spool directory) to drain; ``prefetch`` bounds unacked messages held.

    ``type = "broker"`` is the default (a ``[[sources]]`` table without ``type``).
    """

    url: Endpoint
    type: Literal["broker"] = "broker"
    name: str = ""
    prefetch: int = 0

    def __post_init__(self) -> None:
        check_fields(self)
        if self.prefetch < 0:
            msg = "prefetch must be >= 1 (or 0 for the URL's prefetch)"
            raise ConfigurationError(msg)
        if self.prefetch:  # within the transport's own bounds: checked now, not by the worker
            self.url.with_options(prefetch=self.prefetch)

    @property
    def label(self) -> str:
        """Metric label / log name: the configured name, else the redacted URL."""
        return self.name or self.url.redacted()

    @property
    def max_in_flight(self) -> int:
        """The configured prefetch (``prefetch``, else the URL's)."""
        return self.prefetch or self.url.prefetch

    @property
    def fetch_when_full(self) -> bool:
        """Whether a worker holding all it may must still fetch (see ``Transport``)."""
        return transport_for(self.url).fetch_when_full

    def open(self, answered: Callable[[int], None] | None = None) -> Consumer:
        """A consumer whose prefetch is the source's in-flight bound (not connected yet);
        ``answered`` is unused (a broker source answers no requests). Packed messages come
        out as one delivery per record (:class:`~mqlogging.backends.UnpackingConsumer`)."""
        return UnpackingConsumer(open_consumer(self.url, prefetch=self.max_in_flight))


SourceAny = SourceConfig | HttpSourceConfig
"""Any ``[[sources]]`` entry: each offers ``label``, ``max_in_flight``, ``fetch_when_full``
and ``open(answered)`` (a :class:`~mqlogging.backends.base.Consumer`), all the pipeline uses."""

SOURCE_TYPES: dict[str, Callable[[Table], SourceAny]] = {
    "broker": SourceConfig.from_table,
    "http": HttpSourceConfig.from_table,
}
"""``type`` of a ``[[sources]]`` table (default ``"broker"``) -> the constructor of its config."""


def default_dead_letter(collector: CollectorSection) -> DeadLetterConfig:
    """The dead-letter target used when none is configured: ``<state_dir>/dead-letters``."""
    return DeadLetterConfig.in_directory(collector.state_path / "dead-letters")


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig(FromTable):
    """``listen = "host:port"`` for ``/metrics``, ``/healthz`` and ``/readyz``; empty: off."""

    listen: str = "127.0.0.1:9108"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.listen:
            _split_listen(self.listen)

    @property
    def address(self) -> tuple[str, int] | None:
        return _split_listen(self.listen) if self.listen else None


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectorConfig:
    """The whole validated configuration; build it with :func:`load_config`."""

    sources: tuple[SourceAny, ...]
    sinks: tuple[SinkConfig, ...]
    collector: CollectorSection = field(default_factory=CollectorSection)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    dead_letter: DeadLetterConfig | None = None
    http: HttpConfig = field(default_factory=HttpConfig)
    path: str = ""

    @property
    def dead_letter_target(self) -> DeadLetterConfig:
        """``[dead_letter]`` when configured, else :func:`default_dead_letter`."""
        return self.dead_letter or default_dead_letter(self.collector)

    def summary(self) -> str:
        """One line per source and sink, secrets redacted (printed by ``--check``)."""
        lines = [f"config {self.path or '<memory>'}: OK"]
        lines += [f"  source {s.label} (prefetch {s.max_in_flight})" for s in self.sources]
        lines += [f"  sink   {s.label}" for s in self.sinks]
        lines.append(f"  dead letters -> {self.dead_letter_target.url.redacted()}")
        if self.http.listen:
            lines.append(f"  http   {self.http.listen} (/metrics /healthz /readyz)")
        return "\n".join(lines)


# -- loading ----------------------------------------------------------------------------------

_TOP = tuple(f.name for f in dataclasses.fields(CollectorConfig) if f.name != "path")
"""The tables a file may have: one per field of :class:`CollectorConfig`."""


def load_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> CollectorConfig:
    """Read, parse and validate the TOML file at ``path`` (``env``: defaults to ``os.environ``).

    Raises:
        ConfigurationError: one line naming the file, the place and the fix.
    """
    where = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        msg = f"{where}: no such configuration file"
        raise ConfigurationError(msg) from None
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{where}: cannot read the configuration file ({exc})"
        raise ConfigurationError(msg) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"{where}: not valid TOML: {exc}"
        raise ConfigurationError(msg) from None
    return parse_config(data, env=env, where=where)


def parse_config(
    data: Mapping[str, Any], *, env: Mapping[str, str] | None = None, where: str = "<config>"
) -> CollectorConfig:
    """Validate an already parsed TOML document (see :func:`load_config`)."""
    env = os.environ if env is None else env
    try:
        return _parse(data, env, where)
    except ConfigurationError as exc:
        text = str(exc)
        msg = text if text.startswith(where) else f"{where}: {text}"
        raise ConfigurationError(msg) from None


def _parse(data: Mapping[str, Any], env: Mapping[str, str], where: str) -> CollectorConfig:
    refuse_unknown(data, _TOP, where="top level", noun="key")
    return CollectorConfig(  # keyword order is the order of the checks
        collector=CollectorSection.from_table(_single(data, "collector", env)),
        pipeline=PipelineConfig.from_table(_single(data, "pipeline", env)),
        http=HttpConfig.from_table(_single(data, "http", env)),
        sources=_read_sources(data, env),
        sinks=_read_sinks(data, env),
        dead_letter=_read_dead_letter(data, env),
        path=where,
    )


def _read_sources(data: Mapping[str, Any], env: Mapping[str, str]) -> tuple[SourceAny, ...]:
    missing = 'no [[sources]] configured; add at least one, e.g. url = "amqp://host/?queue=logs"'
    sources = tuple(_read_source(t) for t in _entries(data, env, "sources", missing))
    _refuse_twins(
        [s.label for s in sources],
        "two [[sources]] have the same name/url; give each a distinct name",
    )
    return sources


def _read_sinks(data: Mapping[str, Any], env: Mapping[str, str]) -> tuple[SinkConfig, ...]:
    missing = 'no [[sinks]] configured; add at least one, e.g. type = "elasticsearch"'
    sinks = tuple(_read_sink(t) for t in _entries(data, env, "sinks", missing))
    _refuse_twins(
        [s.label for s in sinks],
        "two [[sinks]] would have the same name; give each a distinct name",
    )
    return sinks


def _read_source(table: Table) -> SourceAny:
    """One ``[[sources]]`` table, read by the config its ``type`` names in SOURCE_TYPES."""
    kind = table.values.get("type", table.env.get(f"{table.prefix}_TYPE", "broker"))
    if not isinstance(kind, str) or kind not in SOURCE_TYPES:
        hint = did_you_mean(str(kind), SOURCE_TYPES)
        msg = f"{table.place}: type={kind!r} is not a source type ({hint}known: broker, http)"
        raise ConfigurationError(msg)
    return SOURCE_TYPES[kind](table)


def _read_sink(table: Table) -> SinkConfig:
    """One ``[[sinks]]`` table, read by the config its ``type`` names in :data:`SINK_TYPES`."""
    kind = table.values.get("type", table.env.get(f"{table.prefix}_TYPE"))
    if not isinstance(kind, str) or kind not in SINK_TYPES:
        known = ", ".join(SINK_TYPES)
        hint = did_you_mean(str(kind), SINK_TYPES)
        msg = f"{table.place}: type={kind!r} is not a sink type ({hint}known: {known})"
        raise ConfigurationError(msg)
    return SINK_TYPES[kind](dataclasses.replace(table, place=f"{table.place} ({kind})"))


def _read_dead_letter(data: Mapping[str, Any], env: Mapping[str, str]) -> DeadLetterConfig | None:
    """``[dead_letter]`` when the file or ``MQLOGGING_DEAD_LETTER_URL`` sets it, else None (the
    service then uses :func:`default_dead_letter`)."""
    table = _single(data, "dead_letter", env)
    if not table.values and f"{table.prefix}_URL" not in env:
        return None
    return DeadLetterConfig.from_table(table)


def _single(data: Mapping[str, Any], name: str, env: Mapping[str, str]) -> Table:
    """The single table ``[name]`` (empty when absent) with its environment prefix."""
    place = f"[{name}]"
    values = data.get(name, {})
    if not isinstance(values, Mapping):
        msg = f"{place} must be a table"
        raise ConfigurationError(msg)
    return Table(values, place, env, f"{ENV_PREFIX}_{name.upper()}")


def _entries(
    data: Mapping[str, Any], env: Mapping[str, str], name: str, missing: str
) -> list[Table]:
    """The tables of the array ``[[name]]``, with entries that the environment alone adds
    (``MQLOGGING_SOURCES_1_URL=...``) as empty tables; ``missing`` when there are none."""
    items = data.get(name, [])
    if isinstance(items, Mapping):
        msg = f"[{name}] must be an array of tables: write [[{name}]]"
        raise ConfigurationError(msg)
    if not isinstance(items, list) or not all(isinstance(v, Mapping) for v in items):
        msg = f"{name} must be an array of tables: write [[{name}]]"
        raise ConfigurationError(msg)
    from_env = env_indices(env, name.upper())
    if not items and not from_env:
        raise ConfigurationError(missing)
    wanted = max(from_env, default=-1) + 1
    items = list(items) + [{} for _ in range(wanted - len(items))]
    prefix = f"{ENV_PREFIX}_{name.upper()}"
    return [
        Table(values, f"[[{name}]] #{i + 1}", env, f"{prefix}_{i}")
        for i, values in enumerate(items)
    ]


def _refuse_twins(labels: list[str], msg: str) -> None:
    if len(set(labels)) != len(labels):
        raise ConfigurationError(msg)


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port_s = listen.rpartition(":")
    port = port_number(port_s)
    if not sep or port is None:
        msg = f"listen={listen!r} must be host:port, e.g. 127.0.0.1:9108 (port 0: any free port)"
        raise ConfigurationError(msg)
    return host.strip("[]") or "0.0.0.0", port
