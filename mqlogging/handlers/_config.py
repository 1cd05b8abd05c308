"""``HandlerConfig``: every :class:`~mqlogging.MQHandler` option, its type and default, once.

Each option is one field below: its type (a ``Literal`` for a choice), its default and its
bound. :meth:`HandlerConfig.from_options` turns the loose values a handler receives (dictConfig,
YAML, keyword arguments) into a validated config, as urllib3's ``Retry.from_int`` does;
``MQHandler``'s signature takes its defaults from the class attributes here, and ``mqlogging
run`` its record limit. Coercion and the one-line messages come from :mod:`mqlogging._coerce`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .._coerce import choose, refuse_unknown, to_number
from ..backends.endpoints import Endpoint
from ..backends.registry import client_loggers
from ..errors import ConfigurationError
from ..formatting import DEFAULT_MAX_RECORD_BYTES
from ..spool import coerce_spool_options
from ._complain import Complainer
from ._spooldir import default_spool_dir, usable_spool_dir

__all__ = [
    "DURABILITIES",
    "OVERFLOWS",
    "STRATEGIES",
    "Durability",
    "HandlerConfig",
    "Overflow",
    "Strategy",
    "ignored_roots",
]

Strategy = Literal["failover", "roundrobin", "all"]
Overflow = Literal["spool", "drop", "block"]
Durability = Literal["auto", "memory", "spool"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
OVERFLOWS: tuple[Overflow, ...] = get_args(Overflow)
DURABILITIES: tuple[Durability, ...] = get_args(Durability)


def ignored_roots() -> frozenset[str]:
    """Loggers whose records never enter a handler: they would loop.

    mqlogging's own troubles, and the chatter of every registered transport's client library
    (``Transport.loggers``: pika's, stomp.py's...), not only of the handler's own transports:
    two handlers over different transports would otherwise ship each other's connection
    records, each publish logging more, forever at DEBUG.
    """
    return frozenset({"mqlogging"}) | client_loggers()


_WHERE = "MQHandler"


def _bounded(default: float | None, minimum: float, *, integer: bool = False) -> Any:
    """A numeric field: its default and the bound :meth:`HandlerConfig.from_options` checks."""
    return field(default=default, metadata={"minimum": minimum, "integer": integer})


# Not slotted: the class attributes hold the defaults, which MQHandler's signature reads.
@dataclass(frozen=True, kw_only=True)
class HandlerConfig:
    """Validated handler settings; the field docs are :class:`~mqlogging.MQHandler`'s ``Args``.

    Build one with :meth:`from_options`; a config built directly is trusted as valid.
    """

    endpoints: tuple[Endpoint, ...]
    strategy: Strategy = "failover"
    #: The resolved spool directory (``None``: no spool). The ``spool=`` option picks it.
    spool_dir: str | None = None
    #: :class:`~mqlogging.spool.Spool` keyword arguments, ``max_bytes`` included.
    spool_options: dict[str, Any] = field(default_factory=dict)
    schema: str = "ecs"
    static_fields: Mapping[str, Any] | None = None
    max_record_bytes: int | None = DEFAULT_MAX_RECORD_BYTES
    batch_size: int = _bounded(500, 1, integer=True)
    flush_interval: float = _bounded(0.2, 0.001)
    queue_size: int = _bounded(10_000, 1, integer=True)
    overflow: Overflow = "spool"
    block_timeout: float = _bounded(0.1, 0)
    spool_max_bytes: int = 1024**3
    durability: Durability = "auto"
    close_timeout: float = _bounded(5.0, 0)
    retry_max: float = _bounded(30.0, 0.01)
    connect_timeout: float | None = _bounded(None, 0.001)
    timeout: float | None = _bounded(None, 0.001)

    @classmethod
    def from_options(
        cls,
        endpoints: Any,
        *,
        spool: Any = None,
        spool_options: Mapping[str, Any] | None = None,
        complain: Complainer | None = None,
        **options: Any,
    ) -> HandlerConfig:
        """Validate and normalise ``MQHandler``'s keyword values (absent ones: the defaults).

        ``spool``: a directory, ``None``/``True`` (the default directory for the endpoints) or
        ``False`` (no spool). ``complain`` reports a fallback spool directory.

        Raises:
            ConfigurationError: an unknown option or a bad value, in one line naming it.
        """
        values = _normalise(options)
        parsed = _parse_endpoints(endpoints, values)
        _check_records_fit(parsed, values.get("max_record_bytes", cls.max_record_bytes))
        strategy = values.get("strategy", cls.strategy)
        spool_dir = _spool_dir(spool, parsed, strategy, complain or Complainer())
        overflow = _overflow(spool_dir, values)
        max_bytes = values.get("spool_max_bytes", cls.spool_max_bytes)
        merged = {**(spool_options or {}), "max_bytes": max_bytes}
        spool_kwargs = coerce_spool_options(merged, where=f"{_WHERE} spool")
        values.update(spool_max_bytes=spool_kwargs["max_bytes"], overflow=overflow)
        return cls(endpoints=parsed, spool_dir=spool_dir, spool_options=spool_kwargs, **values)


_FIELDS = {f.name: f for f in fields(HandlerConfig)}
# A Literal field's allowed values are its type's arguments: the type is the validation.
_CHOICES = {
    name: get_args(hint)
    for name, hint in get_type_hints(HandlerConfig).items()
    if get_origin(hint) is Literal
}
# Options from_options takes in a form other than the field's (endpoints, spool, spool_options).
_DERIVED = frozenset({"endpoints", "spool_dir", "spool_options"})


def _normalise(options: Mapping[str, Any]) -> dict[str, Any]:
    """Each option checked by its field: a ``Literal`` choice, or a number with a bound."""
    refuse_unknown(options, [name for name in _FIELDS if name not in _DERIVED], where=_WHERE)
    values = dict(options)
    for name, value in options.items():
        meta = _FIELDS[name].metadata
        if name in _CHOICES:
            values[name] = choose(value, _CHOICES[name], where=_WHERE, name=name)
        elif "minimum" in meta and (value is not None or _FIELDS[name].default is not None):
            values[name] = to_number(
                value, where=_WHERE, name=name, minimum=meta["minimum"], integer=meta["integer"]
            )
    return values


def _parse_endpoints(endpoints: Any, values: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    """Parse the URLs once (with the timeout overrides); refuse duplicates; warn of caveats."""
    if isinstance(endpoints, (str, Endpoint)):
        endpoints = [endpoints]
    if not isinstance(endpoints, Sequence) or not endpoints:
        msg = f"{_WHERE}: endpoints must be a URL or a non-empty list of URLs, got {endpoints!r}"
        raise ConfigurationError(msg)
    overrides = {
        name: values[name]
        for name in ("connect_timeout", "timeout")
        if values.get(name) is not None
    }
    parsed = tuple(Endpoint.from_url(url, **overrides) for url in endpoints)
    keys = [ep.destination_key() for ep in parsed]
    if len(set(keys)) != len(keys):
        twice = next(ep for ep, key in zip(parsed, keys, strict=True) if keys.count(key) > 1)
        msg = f"{_WHERE}: an endpoint is listed twice ({twice.redacted()})"
        raise ConfigurationError(msg)
    for ep in parsed:
        ep.prepare_local()
        if (caveat := ep.delivery_caveat()) is not None:
            print(f"mqlogging: warning: {caveat}", file=sys.stderr, flush=True)
    return parsed


def _check_records_fit(endpoints: Sequence[Endpoint], max_record_bytes: int | None) -> None:
    """The longest record (``max_record_bytes``) fits in a message of every endpoint: above
    the broker's limit it would be refused and dropped, where the formatter would have cut
    it and kept it. (``None``, no bound: the producer refuses an oversized record alone.)"""
    if max_record_bytes is None:
        return
    for ep in endpoints:
        limit = ep.message_limit()
        if limit is not None and max_record_bytes > limit:
            msg = (
                f"{_WHERE}: max_record_bytes={max_record_bytes} is above max_message_bytes="
                f"{limit} of {ep.redacted()}: the broker would refuse the longest records; "
                "lower max_record_bytes, or raise max_message_bytes with the broker's limit"
            )
            raise ConfigurationError(msg)


def _spool_dir(
    spool: Any, endpoints: Sequence[Endpoint], strategy: str, complain: Complainer
) -> str | None:
    """The spool directory ``spool=`` asks for: the default one, none, or the one given."""
    if spool is None or spool is True:
        return usable_spool_dir(default_spool_dir(endpoints, strategy), complain)
    if spool is False:
        return None
    if isinstance(spool, (str, os.PathLike)) and os.fspath(spool):
        return os.path.abspath(os.path.expanduser(os.fspath(spool)))
    msg = f"{_WHERE}: spool must be a directory, None (default) or False, got {spool!r}"
    raise ConfigurationError(msg)


def _overflow(spool_dir: str | None, values: Mapping[str, Any]) -> Overflow:
    """The overflow policy in effect: without a spool, a full queue can only drop."""
    overflow: Overflow = values.get("overflow", HandlerConfig.overflow)
    if spool_dir is not None:
        return overflow
    if values.get("durability") == "spool":
        msg = f"{_WHERE}: durability='spool' needs a spool directory; do not set spool=False"
        raise ConfigurationError(msg)
    return "drop" if overflow == "spool" else overflow
