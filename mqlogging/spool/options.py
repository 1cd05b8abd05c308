"""The spool's options: defaults, and option values given as text turned into typed values.

Each option and its default is written here once; :class:`~mqlogging.spool.Spool` validates
its keyword arguments with :func:`check_spool_options`, and every place that reads options as
text (``local://`` URL queries, the handler's ``spool_options``, TOML) goes through
:func:`coerce_spool_options`, which uses the package's shared rules (:mod:`mqlogging._coerce`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .._coerce import choose, refuse_unknown, to_age, to_size
from ..errors import ConfigurationError

__all__ = [
    "DEFAULT_FSYNC",
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_OVERFLOW",
    "DEFAULT_SEGMENT_AGE",
    "DEFAULT_SEGMENT_BYTES",
    "FSYNC_POLICIES",
    "OVERFLOW_POLICIES",
    "check_spool_options",
    "coerce_spool_options",
]

DEFAULT_SEGMENT_BYTES: Final = 16 * 1024 * 1024
DEFAULT_SEGMENT_AGE: Final = 600.0
DEFAULT_MAX_BYTES: Final = 1024 * 1024 * 1024
DEFAULT_MAX_AGE: Final = 7 * 24 * 3600.0
DEFAULT_FSYNC: Final = "segment"
DEFAULT_OVERFLOW: Final = "drop_oldest"
FSYNC_POLICIES: Final = ("segment", "never", "always")
OVERFLOW_POLICIES: Final = ("drop_oldest", "drop_newest", "refuse")

_SIZES = ("segment_bytes", "max_bytes")
_AGES = ("segment_age", "max_age")
_CHOICES = ("fsync", "overflow")


def coerce_spool_options(options: Mapping[str, Any], *, where: str = "spool") -> dict[str, Any]:
    """Turn option values given as strings (URL query, TOML, env) into :class:`Spool` kwargs.

    Sizes accept bytes or binary multiples (``16M``, ``16MiB``, ``1g``); ages accept seconds or
    a unit (``90s``, ``10m``, ``12h``, ``7d``, ``1w``).

    Raises:
        ConfigurationError: an unknown option or a value that does not parse.
    """
    refuse_unknown(options, (*_SIZES, *_AGES, *_CHOICES), where=where)
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key in _SIZES:
            out[key] = to_size(value, where=where, name=key)
        elif key in _AGES:
            out[key] = to_age(value, where=where, name=key)
        else:
            out[key] = str(value).strip().lower()
    check_spool_options(where=where, **out)
    return out


def check_spool_options(
    *,
    where: str,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    segment_age: float = DEFAULT_SEGMENT_AGE,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_age: float = DEFAULT_MAX_AGE,
    fsync: str = DEFAULT_FSYNC,
    overflow: str = DEFAULT_OVERFLOW,
) -> None:
    """Refuse option values a spool cannot work with, in one line naming the option.

    Raises:
        ConfigurationError: a bound too small or inconsistent, or an unknown policy.
    """
    if segment_bytes < 1024:
        msg = f"{where}: segment_bytes={segment_bytes} is too small; give at least 1024 bytes"
        raise ConfigurationError(msg)
    if max_bytes < segment_bytes:
        msg = f"{where}: max_bytes={max_bytes} is smaller than segment_bytes={segment_bytes}"
        raise ConfigurationError(msg)
    if segment_age <= 0 or max_age <= 0:
        msg = f"{where}: segment_age and max_age must be positive numbers of seconds"
        raise ConfigurationError(msg)
    choose(fsync, FSYNC_POLICIES, where=where, name="fsync")
    choose(overflow, OVERFLOW_POLICIES, where=where, name="overflow")
