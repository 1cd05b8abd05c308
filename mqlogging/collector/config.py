"""Collector configuration: a TOML file (plus environment overrides) into frozen dataclasses.

Everything is validated once, at start, and every problem is one line that names the file,
the table and the key, and says what to fix — an unknown key comes with a "did you mean", a bad
URL with the parser's reason, a missing certificate with its path. The CLI turns the
:class:`~mqlogging.errors.ConfigurationError` into exit code 2.

File layout (see ``examples/collector-*.toml``)::

    [collector]          shutdown_timeout, log_level, host_name, state_dir
    [pipeline]           batching, size/depth limits, in-flight byte bound, enrichment, retry
    [[sources]]          url (amqp://, amqps://, stomp://, stomp+ssl://, local://), name, prefetch
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
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, TypeAlias
from urllib.parse import quote, urlsplit

from ..backends.endpoints import Endpoint, Secret
from ..errors import ConfigurationError

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
    "CollectorConfig",
    "CollectorSection",
    "DeadLetterConfig",
    "ElasticsearchSinkConfig",
    "FileSinkConfig",
    "HttpConfig",
    "LogstashSinkConfig",
    "NullSinkConfig",
    "PipelineConfig",
    "SinkConfig",
    "SourceConfig",
    "default_dead_letter",
    "load_config",
    "parse_config",
]

_ENV = "MQLOGGING"


# -- sections ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectorSection:
    """Process-wide settings.

    ``shutdown_timeout``: seconds a SIGTERM gives in-flight batches to reach the sinks before
    the rest is requeued. ``host_name``: the name put in enriched records (default: hostname).
    ``state_dir``: where the collector keeps its own files — today the default dead-letter spool
    (default: ``$XDG_STATE_HOME/mqlogging/collector``, else ``~/.local/state/mqlogging/collector``).
    """

    shutdown_timeout: float = 10.0
    log_level: str = "info"
    host_name: str = ""
    state_dir: str = ""

    def __post_init__(self) -> None:
        _positive(self, "shutdown_timeout")
        _choice(self, "log_level", ("debug", "info", "warning", "error"))

    @property
    def state_path(self) -> Path:
        """``state_dir``, or the per-user XDG state directory when it is not set."""
        if self.state_dir:
            return Path(self.state_dir).expanduser().absolute()
        base = os.environ.get("XDG_STATE_HOME") or os.path.join("~", ".local", "state")
        return (Path(base).expanduser() / "mqlogging" / "collector").absolute()


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineConfig:
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

    batch_max_count: int = 1000
    batch_max_bytes: int = 5 * 1024 * 1024
    batch_max_wait: float = 1.0
    max_message_bytes: int = 1024 * 1024
    max_inflight_bytes: int = 64 * 1024 * 1024
    max_depth: int = 64
    max_fields: int = 1000
    enrich: bool = True
    received_at_field: str = "event.ingested"
    host_field: str = ""
    retry_initial: float = 0.5
    retry_max: float = 30.0
    max_attempts: int = 0

    def __post_init__(self) -> None:
        for name in (
            "batch_max_count",
            "batch_max_bytes",
            "max_message_bytes",
            "max_inflight_bytes",
            "max_depth",
            "max_fields",
        ):
            if getattr(self, name) < 1:
                msg = f"{name} must be a positive integer, not {getattr(self, name)!r}"
                raise ConfigurationError(msg)
        for name in ("batch_max_wait", "retry_initial", "retry_max"):
            _positive(self, name)
        if self.max_attempts < 0:
            msg = "max_attempts must be 0 (retry until it works) or a positive integer"
            raise ConfigurationError(msg)
        if self.retry_max < self.retry_initial:
            msg = f"retry_max ({self.retry_max}) must be >= retry_initial ({self.retry_initial})"
            raise ConfigurationError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceConfig:
    """One queue (or spool directory) to drain; ``prefetch`` bounds unacked messages held."""

    url: Endpoint
    name: str = ""
    prefetch: int = 0

    def __post_init__(self) -> None:
        if self.prefetch < 0:
            msg = "prefetch must be >= 1 (or 0 for the URL's prefetch)"
            raise ConfigurationError(msg)

    @property
    def label(self) -> str:
        """Metric label / log name: the configured name, else the redacted URL."""
        return self.name or self.url.redacted()

    @property
    def max_in_flight(self) -> int:
        """The configured prefetch (``prefetch``, else the URL's)."""
        return self.prefetch or self.url.prefetch


@dataclass(frozen=True, slots=True, kw_only=True)
class ElasticsearchSinkConfig:
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
    """

    type: str = "elasticsearch"
    name: str = ""
    hosts: tuple[str, ...] = ("http://127.0.0.1:9200",)
    mode: str = "data_stream"
    dataset: str = "mqlogging"
    namespace: str = "default"
    index: str = "mqlogging-%Y.%m.%d"
    install_template: bool = False
    template_name: str = ""
    api_key: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    ca_certs: str | None = None
    verify: bool = True
    client_cert: str | None = None
    client_key: str | None = None
    request_timeout: float = 30.0
    max_bulk_bytes: int = 10 * 1024 * 1024
    index_window_days_back: float = 30.0
    index_window_days_ahead: float = 1.0

    def __post_init__(self) -> None:
        _choice(self, "mode", ("data_stream", "index"))
        _positive(self, "index_window_days_back")
        _positive(self, "index_window_days_ahead")
        if not self.hosts:
            msg = "hosts is empty; give at least one URL such as https://es1:9200"
            raise ConfigurationError(msg)
        for url in self.hosts:
            _check_http_url(url, "hosts")
        for part in ("dataset", "namespace"):
            value = getattr(self, part)
            if not value or any(c in value for c in '-\\/*?"<>| ,#:') or value != value.lower():
                msg = f"{part}={value!r}: use lower-case letters, digits, '_' and '.' only"
                raise ConfigurationError(msg)
        literal = re.sub(r"%.", "", self.index)
        if self.mode == "index" and (not self.index or literal != literal.lower()):
            msg = f"index={self.index!r}: Elasticsearch index names must be lower-case"
            raise ConfigurationError(msg)
        if self.api_key and (self.username or self.password):
            msg = "give either api_key or username/password, not both"
            raise ConfigurationError(msg)
        if (self.username is None) != (self.password is None):
            msg = "username and password go together; set both (password via MQLOGGING_ES_PASSWORD)"
            raise ConfigurationError(msg)
        _check_files(self, ("ca_certs", "client_cert", "client_key"))
        if self.client_key and not self.client_cert:
            msg = "client_key is set without client_cert"
            raise ConfigurationError(msg)
        _positive(self, "request_timeout")
        if self.max_bulk_bytes < 1024:
            msg = "max_bulk_bytes must be at least 1024"
            raise ConfigurationError(msg)

    @property
    def label(self) -> str:
        return self.name or f"elasticsearch:{_redact_http(self.hosts[0])}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LogstashSinkConfig:
    """Logstash ``http`` input (``http://`` / ``https://``; acknowledged) or ``tcp`` input with
    the ``json_lines`` codec (``tcp://`` / ``tcp+ssl://``; no acknowledgement: a record counts as
    delivered once the kernel took it, so a Logstash crash can lose what it had not processed).
    """

    type: str = "logstash"
    name: str = ""
    url: str = "http://127.0.0.1:8080/"
    username: str | None = None
    password: Secret | None = None
    ca_certs: str | None = None
    verify: bool = True
    certfile: str | None = None
    keyfile: str | None = None
    timeout: float = 30.0
    max_request_bytes: int = 10 * 1024 * 1024

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme
        if scheme not in ("http", "https", "tcp", "tcp+ssl"):
            msg = (
                f"url={_redact_http(self.url)!r}: use http(s)://host:port/ for the http input "
                "or tcp://host:port (tcp+ssl://) for the tcp input"
            )
            raise ConfigurationError(msg)
        _check_http_url(self.url, "url", require_port=scheme.startswith("tcp"))
        _check_files(self, ("ca_certs", "certfile", "keyfile"))
        if self.keyfile and not self.certfile:
            msg = "keyfile is set without certfile"
            raise ConfigurationError(msg)
        _positive(self, "timeout")

    @property
    def protocol(self) -> str:
        return "tcp" if urlsplit(self.url).scheme.startswith("tcp") else "http"

    @property
    def label(self) -> str:
        return self.name or f"logstash:{_redact_http(self.url)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSinkConfig:
    """JSON lines to ``path`` (``type = "stdout"``: standard output). Rotated when it exceeds
    ``max_bytes`` (0: never), keeping ``backups`` old files; SIGHUP reopens (for logrotate).
    ``fsync`` makes every batch durable on disk before its messages are acked.
    """

    type: str = "file"
    name: str = ""
    path: str = ""
    max_bytes: int = 100 * 1024 * 1024
    backups: int = 5
    fsync: bool = True

    def __post_init__(self) -> None:
        if self.type == "file":
            if not self.path:
                msg = "path is required for a file sink"
                raise ConfigurationError(msg)
            parent = Path(self.path).expanduser().resolve().parent
            if not parent.is_dir():
                msg = f"path={self.path!r}: directory {str(parent)!r} does not exist"
                raise ConfigurationError(msg)
        if self.max_bytes < 0 or self.backups < 0:
            msg = "max_bytes and backups must be >= 0"
            raise ConfigurationError(msg)

    @property
    def label(self) -> str:
        return self.name or ("stdout" if self.type == "stdout" else f"file:{self.path}")


@dataclass(frozen=True, slots=True, kw_only=True)
class NullSinkConfig:
    """Accepts and discards everything (benchmarks, smoke tests)."""

    type: str = "null"
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or "null"


SinkConfig: TypeAlias = (
    ElasticsearchSinkConfig | LogstashSinkConfig | FileSinkConfig | NullSinkConfig
)


DEAD_LETTER_SPOOL: Final[Mapping[str, str]] = {
    "overflow": "refuse",
    "fsync": "always",
    "max_age": "3650d",
}
"""Spool options of a ``local://`` dead-letter target that its URL does not set."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterConfig:
    """Where poison messages go: a broker queue (published with confirms) or a ``local://``
    spool directory. Without a ``[dead_letter]`` table they go to :func:`default_dead_letter`
    (a spool directory under ``[collector] state_dir``): a poison message is never discarded
    and never blocks the queue. Replay one with ``mqlogging spool replay DIR --to URL``.

    A ``local://`` target keeps dead letters for a human: unless the URL says otherwise, its
    spool refuses rather than drops when full (a refused dead letter keeps its message in the
    broker, counted as a dead-letter failure), syncs every batch, and keeps its segments for
    ten years instead of the spool's default week (:data:`DEAD_LETTER_SPOOL`)."""

    url: Endpoint

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.with_spool_defaults(DEAD_LETTER_SPOOL))


def default_dead_letter(collector: CollectorSection) -> DeadLetterConfig:
    """The dead-letter target used when none is configured: ``<state_dir>/dead-letters``."""
    path = collector.state_path / "dead-letters"
    return DeadLetterConfig(url=Endpoint.from_url(f"local://{quote(str(path))}"))


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    """``listen = "host:port"`` for ``/metrics``, ``/healthz`` and ``/readyz``; empty: off."""

    listen: str = "127.0.0.1:9108"

    def __post_init__(self) -> None:
        if self.listen:
            _split_listen(self.listen)

    @property
    def address(self) -> tuple[str, int] | None:
        return _split_listen(self.listen) if self.listen else None


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectorConfig:
    """The whole validated configuration; build it with :func:`load_config`."""

    sources: tuple[SourceConfig, ...]
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

_SINK_TYPES: dict[str, type[Any]] = {
    "elasticsearch": ElasticsearchSinkConfig,
    "logstash": LogstashSinkConfig,
    "file": FileSinkConfig,
    "stdout": FileSinkConfig,
    "null": NullSinkConfig,
}
_TOP = ("collector", "pipeline", "sources", "sinks", "dead_letter", "http")


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
    _unknown(data, _TOP, "top level")
    kwargs: dict[str, Any] = {"path": where}
    for name, cls in (
        ("collector", CollectorSection),
        ("pipeline", PipelineConfig),
        ("http", HttpConfig),
    ):
        table = _table(data.get(name, {}), f"[{name}]")
        kwargs[name] = _build(cls, table, f"[{name}]", env, f"{_ENV}_{name.upper()}")

    raw_sources = _array(data.get("sources", []), "sources")
    if not raw_sources and not _env_items(env, "SOURCES"):
        msg = 'no [[sources]] configured; add at least one, e.g. url = "amqp://host/?queue=logs"'
        raise ConfigurationError(msg)
    sources = []
    for i, table in enumerate(_pad(raw_sources, env, "SOURCES")):
        place = f"[[sources]] #{i + 1}"
        sources.append(_build(SourceConfig, table, place, env, f"{_ENV}_SOURCES_{i}"))
    kwargs["sources"] = tuple(sources)
    labels = [s.label for s in sources]
    if len(set(labels)) != len(labels):
        msg = "two [[sources]] have the same name/url; give each a distinct name"
        raise ConfigurationError(msg)

    raw_sinks = _array(data.get("sinks", []), "sinks")
    if not raw_sinks and not _env_items(env, "SINKS"):
        msg = 'no [[sinks]] configured; add at least one, e.g. type = "elasticsearch"'
        raise ConfigurationError(msg)
    sinks = []
    for i, raw in enumerate(_pad(raw_sinks, env, "SINKS")):
        place = f"[[sinks]] #{i + 1}"
        kind = raw.get("type", env.get(f"{_ENV}_SINKS_{i}_TYPE"))
        if kind not in _SINK_TYPES:
            hint = _did_you_mean(str(kind), _SINK_TYPES)
            msg = (
                f"{place}: type={kind!r} is not a sink type ({hint}known: {', '.join(_SINK_TYPES)})"
            )
            raise ConfigurationError(msg)
        table = dict(raw)
        if kind == "elasticsearch":
            table.update(_alias_env(env, "ES", ("api_key", "username", "password")))
        elif kind == "logstash":
            table.update(_alias_env(env, "LOGSTASH", ("username", "password")))
        sinks.append(
            _build(_SINK_TYPES[kind], table, f"{place} ({kind})", env, f"{_ENV}_SINKS_{i}")
        )
    labels = [s.label for s in sinks]
    if len(set(labels)) != len(labels):
        msg = "two [[sinks]] would have the same name; give each a distinct name"
        raise ConfigurationError(msg)
    kwargs["sinks"] = tuple(sinks)

    dead = _table(data.get("dead_letter", {}), "[dead_letter]")
    if dead or f"{_ENV}_DEAD_LETTER_URL" in env:
        kwargs["dead_letter"] = _build(
            DeadLetterConfig, dead, "[dead_letter]", env, f"{_ENV}_DEAD_LETTER"
        )
    return CollectorConfig(**kwargs)


def _build(
    cls: type[Any], table: Mapping[str, Any], place: str, env: Mapping[str, str], prefix: str
) -> Any:
    specs = {f.name: f for f in fields(cls)}
    _unknown(table, specs, place)
    values: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in table:
            raw, from_env = table[name], False
        elif f"{prefix}_{name.upper()}" in env:
            raw, from_env = env[f"{prefix}_{name.upper()}"], True
        else:
            if spec.default is MISSING and spec.default_factory is MISSING:
                msg = f"{place}: required key {name!r} is missing"
                raise ConfigurationError(msg)
            continue
        env_name = f"{prefix}_{name.upper()}"
        if f"{env_name}" in env and not from_env:
            raw, from_env = env[env_name], True  # the environment wins over the file
        values[name] = _coerce(str(spec.type), raw, f"{place} {name}", from_env)
    try:
        return cls(**values)
    except ConfigurationError as exc:
        msg = f"{place}: {exc}"
        raise ConfigurationError(msg) from None


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(kind: str, value: Any, place: str, from_env: bool) -> Any:
    optional = kind.endswith(" | None")
    base = kind.removesuffix(" | None")
    if optional and value is None:
        return None
    if base == "Endpoint":
        if not isinstance(value, str):
            msg = f"{place} must be a URL string, got {type(value).__name__}"
            raise ConfigurationError(msg)
        return Endpoint.from_url(value)
    if base == "Secret":
        if not isinstance(value, str):
            msg = f"{place} must be a string"
            raise ConfigurationError(msg)
        return Secret(value)
    if base == "tuple[str, ...]":
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            msg = f'{place} must be a list of strings, e.g. ["https://es1:9200"]'
            raise ConfigurationError(msg)
        return tuple(value)
    target = _SCALARS[base]
    if from_env and isinstance(value, str) and target is not str:
        value = _from_env_text(value, target, place)
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, target) or (target is int and isinstance(value, bool)):
        msg = f"{place} must be {_article(base)}, got {value!r}"
        raise ConfigurationError(msg)
    return value


def _from_env_text(text: str, target: type[Any], place: str) -> Any:
    try:
        if target is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return target(text)
    except ValueError:
        msg = f"{place} (from the environment) must be {_article(target.__name__)}, got {text!r}"
        raise ConfigurationError(msg) from None


def _article(base: str) -> str:
    return {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "str": "a string",
    }.get(base, base)


# -- helpers ----------------------------------------------------------------------------------


def _did_you_mean(key: str, known: Any) -> str:
    hint = difflib.get_close_matches(key, list(known), n=1)
    return f"did you mean {hint[0]!r}? " if hint else ""


def _unknown(table: Mapping[str, Any], known: Any, place: str) -> None:
    for key in table:
        if key not in known:
            msg = (
                f"{place}: unknown key {key!r} ({_did_you_mean(key, known)}"
                f"known: {', '.join(sorted(known))})"
            )
            raise ConfigurationError(msg)


def _table(value: Any, place: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        msg = f"{place} must be a table"
        raise ConfigurationError(msg)
    return value


def _array(value: Any, name: str) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        msg = f"[{name}] must be an array of tables: write [[{name}]]"
        raise ConfigurationError(msg)
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        msg = f"{name} must be an array of tables: write [[{name}]]"
        raise ConfigurationError(msg)
    return value


def _env_items(env: Mapping[str, str], array: str) -> set[int]:
    prefix = f"{_ENV}_{array}_"
    found = set()
    for key in env:
        if key.startswith(prefix):
            index = key[len(prefix) :].split("_", 1)[0]
            if index.isdigit():
                found.add(int(index))
    return found


def _pad(
    items: list[Mapping[str, Any]], env: Mapping[str, str], array: str
) -> list[Mapping[str, Any]]:
    """Entries may be added from the environment alone (``MQLOGGING_SOURCES_1_URL=...``)."""
    wanted = max(_env_items(env, array), default=-1) + 1
    return list(items) + [{} for _ in range(wanted - len(items))]


def _alias_env(env: Mapping[str, str], alias: str, keys: tuple[str, ...]) -> dict[str, str]:
    return {
        k: env[f"{_ENV}_{alias}_{k.upper()}"] for k in keys if f"{_ENV}_{alias}_{k.upper()}" in env
    }


def _positive(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if not value > 0:
        msg = f"{name} must be a positive number, not {value!r}"
        raise ConfigurationError(msg)


def _choice(obj: Any, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        msg = (
            f"{name}={value!r} is not one of {', '.join(allowed)} ({_did_you_mean(value, allowed)})"
        )
        raise ConfigurationError(msg.replace(" ()", ""))


def _check_files(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        path = getattr(obj, name)
        if path is not None and not os.path.isfile(path):
            msg = f"{name}={path!r}: no such file; give the path to a PEM file"
            raise ConfigurationError(msg)


def _check_http_url(url: str, name: str, *, require_port: bool = False) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        msg = f"{name}: {_redact_http(url)!r} is not a valid URL ({exc})"
        raise ConfigurationError(msg) from None
    if parts.scheme not in ("http", "https", "tcp", "tcp+ssl") or not parts.hostname:
        msg = f"{name}: {_redact_http(url)!r} is not an http(s) URL with a host, e.g. https://es1:9200"
        raise ConfigurationError(msg)
    if require_port and port is None:
        msg = f"{name}: {_redact_http(url)!r} needs a port, e.g. tcp://logstash:5000"
        raise ConfigurationError(msg)


def _redact_http(url: str) -> str:
    """Mask a password in ``scheme://user:pass@host`` (safe for labels and messages)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if at:
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    return f"{scheme}{sep}{netloc}{slash}{tail}"


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port_s = listen.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) < 65536:
        msg = f"listen={listen!r} must be host:port, e.g. 127.0.0.1:9108 (port 0: any free port)"
        raise ConfigurationError(msg)
    return host.strip("[]") or "0.0.0.0", int(port_s)
