"""One TOML table (plus its environment overrides) into one typed config value.

Every component's config is a frozen dataclass whose fields say everything about an option
once: its name, its real type, its default and its constraint. This module reads a table into
such a class by those types — ``int``, ``float``, ``bool``, ``str``, ``Literal[...]`` choices,
``tuple[str, ...]``, :class:`~mqlogging.backends.endpoints.Endpoint`,
:class:`~mqlogging.backends.endpoints.Secret`, each optionally ``| None`` — so a component adds
an option by adding a field, and no caller repeats its name, type or default.

Constraints that many options share are written into the type with ``Annotated``
(:data:`PositiveInt`, :data:`PositiveFloat`, :data:`PemPath`); they are checked where the
table is read, so the message names the table and the key, and again by :func:`check_fields`
in the class's ``__post_init__``, so a config built directly in Python is held to the same
rules. Rules that tie several fields together stay in the class's own ``__post_init__``.

The environment wins over the file: ``<prefix>_<KEY>`` (e.g. ``MQLOGGING_PIPELINE_ENRICH``) is
text, converted to the field's type with the spelling rules of :mod:`mqlogging._coerce`.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from .._coerce import check_pem_file, choose, refuse_unknown, to_bool, to_number
from ..backends.endpoints import Endpoint, Secret
from ..errors import ConfigurationError

__all__ = [
    "ENV_PREFIX",
    "FromTable",
    "PemPath",
    "PositiveFloat",
    "PositiveInt",
    "Table",
    "check_fields",
    "env_indices",
    "read_table",
    "shared_env",
]

ENV_PREFIX = "MQLOGGING"
"""Every environment override starts with this word."""

_C = TypeVar("_C")

Check = Callable[[Any, str, str], None]
"""A constraint: ``check(value, where, name)`` raises a one-line ConfigurationError."""


def _positive_int(value: Any, where: str, name: str) -> None:
    if not value > 0:
        msg = f"{where}: {name} must be a positive integer, not {value!r}"
        raise ConfigurationError(msg)


def _positive_number(value: Any, where: str, name: str) -> None:
    if not value > 0:
        msg = f"{where}: {name} must be a positive number, not {value!r}"
        raise ConfigurationError(msg)


def _pem_file(value: Any, where: str, name: str) -> None:
    check_pem_file(value, where=where, name=name)


PositiveInt = Annotated[int, _positive_int]
"""An ``int`` that must be at least 1."""
PositiveFloat = Annotated[float, _positive_number]
"""A number of seconds, days... that must be above 0."""
PemPath = Annotated[str, _pem_file]
"""The path of a PEM certificate or key file that must exist when the config is read."""


# -- what a field is ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    """One dataclass field as this module reads it: its base type with ``| None`` and
    ``Annotated`` taken off, and the constraints found in the latter."""

    name: str
    kind: Any
    optional: bool
    checks: tuple[Check, ...]
    required: bool


_FIELDS: dict[type[Any], tuple[_Field, ...]] = {}


def _fields_of(cls: type[Any]) -> tuple[_Field, ...]:
    """The fields of ``cls``, worked out once per class (two threads may both do it: same
    answer)."""
    found = _FIELDS.get(cls)
    if found is None:
        found = _FIELDS[cls] = _read_fields(cls)
    return found


def _read_fields(cls: type[Any]) -> tuple[_Field, ...]:
    hints = get_type_hints(cls, include_extras=True)
    out = []
    for spec in fields(cls):
        kind, optional = _strip_none(hints[spec.name])
        checks: tuple[Check, ...] = ()
        if get_origin(kind) is Annotated:
            kind, *extra = get_args(kind)
            checks = tuple(extra)
        if get_origin(kind) is not Literal and kind not in _CONVERTERS:
            msg = f"{cls.__name__}.{spec.name}: no converter for {kind!r} (see _CONVERTERS)"
            raise TypeError(msg)
        required = spec.default is MISSING and spec.default_factory is MISSING
        out.append(_Field(spec.name, kind, optional, checks, required))
    return tuple(out)


def _strip_none(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(hint, False)``."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(args) < len(get_args(hint)):
            return args[0], True
    return hint, False


def _check(field: _Field, value: Any, where: str) -> None:
    if value is None and field.optional:
        return
    if get_origin(field.kind) is Literal:
        choose(value, get_args(field.kind), where=where, name=field.name)
    for check in field.checks:
        check(value, where, field.name)


def check_fields(obj: Any) -> None:
    """Check every ``Literal`` choice and ``Annotated`` constraint of the dataclass ``obj``.

    Called first in ``__post_init__``: a config built in Python (not read from a table) gets
    the same checks, its messages naming the class.
    """
    where = type(obj).__name__
    for field in _fields_of(type(obj)):
        _check(field, getattr(obj, field.name), where)


# -- converters, by real type -----------------------------------------------------------------

_ARTICLE: Mapping[type[Any], str] = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
}


def _scalar(target: type[Any], value: Any, at: str, from_env: bool) -> Any:
    """A TOML value must already have the type (``"5"`` is not 5 in a file); environment text
    is parsed. An ``int`` is accepted where a ``float`` is expected, a ``bool`` never counts
    as a number."""
    if from_env and isinstance(value, str) and target is not str:
        value = _from_env_text(value, target, at)
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, target) or (target is int and isinstance(value, bool)):
        msg = f"{at} must be {_ARTICLE[target]}, got {value!r}"
        raise ConfigurationError(msg)
    return value


def _from_env_text(text: str, target: type[Any], at: str) -> Any:
    try:
        if target is bool:
            return to_bool(text, where=at, name="")
        return to_number(text, where=at, name="", integer=target is int)
    except ConfigurationError:
        msg = f"{at} (from the environment) must be {_ARTICLE[target]}, got {text!r}"
        raise ConfigurationError(msg) from None


def _endpoint(value: Any, at: str, from_env: bool) -> Endpoint:
    if not isinstance(value, str):
        msg = f"{at} must be a URL string, got {type(value).__name__}"
        raise ConfigurationError(msg)
    return Endpoint.from_url(value)


def _secret(value: Any, at: str, from_env: bool) -> Secret:
    if not isinstance(value, str):
        msg = f"{at} must be a string"
        raise ConfigurationError(msg)
    return Secret(value)


def _strings(value: Any, at: str, from_env: bool) -> tuple[str, ...]:
    """A list of strings; one string is a list of one; environment text is comma-separated."""
    if from_env and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        msg = f'{at} must be a list of strings, e.g. ["https://es1:9200"]'
        raise ConfigurationError(msg)
    return tuple(value)


_CONVERTERS: Mapping[Any, Callable[[Any, str, bool], Any]] = {
    Endpoint: _endpoint,
    Secret: _secret,
    tuple[str, ...]: _strings,
    **{t: functools.partial(_scalar, t) for t in _ARTICLE},
}


def _convert(field: _Field, value: Any, where: str, from_env: bool) -> Any:
    if value is None and field.optional:
        return None
    if get_origin(field.kind) is not Literal:  # a choice is checked as it is, below
        value = _CONVERTERS[field.kind](value, f"{where} {field.name}", from_env)
    _check(field, value, where)
    return value


# -- reading a table ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Table:
    """One table of the file with where it is and which environment variables override it.

    ``place`` names it in messages (``[pipeline]``, ``[[sinks]] #2 (file)``); ``prefix`` is the
    environment prefix of its keys (``MQLOGGING_PIPELINE``, ``MQLOGGING_SINKS_1``).
    """

    values: Mapping[str, Any]
    place: str
    env: Mapping[str, str]
    prefix: str

    def merged(self, extra: Mapping[str, Any]) -> Table:
        """The same table with ``extra`` keys set (they win over the file's)."""
        return Table({**self.values, **extra}, self.place, self.env, self.prefix)

    def raw(self, name: str) -> tuple[Any, bool] | None:
        """``(value, from_env)`` for key ``name``, the environment first; None when unset."""
        env_name = f"{self.prefix}_{name.upper()}"
        if env_name in self.env:
            return self.env[env_name], True
        if name in self.values:
            return self.values[name], False
        return None


def read_table(cls: type[_C], table: Table) -> _C:
    """Build the dataclass ``cls`` from ``table``: unknown keys refused with a "did you mean",
    each value converted by its field's type, then ``cls(...)`` checks the rest; every message
    starts with ``table.place``."""
    specs = _fields_of(cls)
    refuse_unknown(table.values, [f.name for f in specs], where=table.place, noun="key")
    values: dict[str, Any] = {}
    for field in specs:
        found = table.raw(field.name)
        if found is None:
            if field.required:
                msg = f"{table.place}: required key {field.name!r} is missing"
                raise ConfigurationError(msg)
            continue
        value, from_env = found
        values[field.name] = _convert(field, value, table.place, from_env)
    try:
        return cls(**values)
    except ConfigurationError as exc:
        msg = f"{table.place}: {exc}"
        raise ConfigurationError(msg) from None


class FromTable:
    """Mixin for config dataclasses: ``from_table`` is :func:`read_table` unless the class
    adds to it (e.g. shared environment variables, see :func:`shared_env`)."""

    __slots__ = ()

    @classmethod
    def from_table(cls: type[_C], table: Table) -> _C:
        """This config from one table of the file (and its environment overrides)."""
        return read_table(cls, table)


# -- environment ------------------------------------------------------------------------------


def env_indices(env: Mapping[str, str], array: str) -> set[int]:
    """The N of every ``MQLOGGING_<ARRAY>_<N>_<KEY>`` variable (entries set from the
    environment)."""
    prefix = f"{ENV_PREFIX}_{array}_"
    found = set()
    for key in env:
        if key.startswith(prefix):
            index = key[len(prefix) :].split("_", 1)[0]
            if index.isdigit():
                found.add(int(index))
    return found


def shared_env(env: Mapping[str, str], alias: str, keys: Iterable[str]) -> dict[str, str]:
    """``MQLOGGING_<ALIAS>_<KEY>`` values that apply to every entry of one kind (secrets such
    as ``MQLOGGING_ES_PASSWORD``), as table keys."""
    found = {}
    for key in keys:
        name = f"{ENV_PREFIX}_{alias}_{key.upper()}"
        if name in env:
            found[key] = env[name]
    return found
