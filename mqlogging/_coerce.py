"""Option values from URLs, TOML, dictConfig and the environment, turned into typed values.

One set of rules for every component (handler, endpoints, spool, collector): the same spelling of
``true``, the same size units, the same one-line error naming the option and what to write
instead. Each function takes ``where`` (what is being configured, e.g. ``"MQHandler"`` or a
redacted URL) and ``name`` (the option) so the message points at the place to fix.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from .errors import ConfigurationError

__all__ = [
    "check_pem_file",
    "choose",
    "did_you_mean",
    "port_number",
    "refuse_unknown",
    "to_age",
    "to_bool",
    "to_number",
    "to_size",
]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_AGE_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

_S = TypeVar("_S", bound=str)


def _fail(where: str, name: str, text: str) -> ConfigurationError:
    return ConfigurationError(f"{where}: {name} {text}")


def to_bool(value: Any, *, where: str, name: str) -> bool:
    """``True``/``False`` or one of ``1 true yes on`` / ``0 false no off`` (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _fail(where, name, f"must be true or false, not {value!r}")


def to_number(
    value: Any,
    *,
    where: str,
    name: str,
    minimum: float | None = None,
    integer: bool = False,
) -> Any:
    """A float (or an int with ``integer=True``) not below ``minimum``; strings are parsed.

    Booleans are refused: ``batch_size=True`` is a mistake, not the number 1.
    """
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool):
        raise _fail(where, name, f"must be {kind}, not {value!r}")
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise _fail(where, name, f"must be {kind}, not {value!r}") from None
    if integer and isinstance(value, float) and number != value:
        raise _fail(where, name, f"must be {kind}, not {value!r}")
    if minimum is not None and number < minimum:
        raise _fail(where, name, f"must be at least {minimum:g}, not {value!r}")
    return number


def to_size(value: Any, *, where: str, name: str) -> int:
    """Bytes, or binary multiples: ``16M``, ``16MiB``, ``1g``, ``256KiB``."""
    if isinstance(value, bool):
        raise _fail(where, name, f"must be a size such as 1048576, 512KiB or 1GiB, not {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    match = _SIZE_RE.match(str(value))
    if not match:
        raise _fail(where, name, f"must be a size such as 1048576, 512KiB or 1GiB, not {value!r}")
    return int(float(match[1]) * _SIZE_UNITS[match[2].lower()])


def to_age(value: Any, *, where: str, name: str) -> float:
    """Seconds, or a number with a unit: ``90s``, ``10m``, ``12h``, ``7d``, ``1w``."""
    if isinstance(value, bool):
        raise _fail(where, name, f"must be a duration such as 90, 10m or 7d, not {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    match = _AGE_RE.match(str(value))
    if not match:
        raise _fail(where, name, f"must be a duration such as 90, 10m or 7d, not {value!r}")
    return float(match[1]) * _AGE_UNITS[match[2].lower()]


def port_number(text: str) -> int | None:
    """``text`` as a TCP port (0 to 65535), ``None`` when it is not one.

    Only ASCII digits: ``int()`` would raise on ``"²"`` (which ``str.isdigit`` accepts) and
    take ``"+80"``, ``" 80"``, ``"8_0"`` or non-ASCII digits for a port.
    """
    if not (text.isascii() and text.isdigit() and len(text) <= 5):
        return None
    port = int(text)
    return port if port < 65536 else None


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the closest known word, or ``""``."""
    hint = difflib.get_close_matches(word, list(known), n=1)
    return f"did you mean {hint[0]!r}? " if hint else ""


def choose(value: Any, allowed: Sequence[_S], *, where: str, name: str) -> _S:
    """``value`` if it is one of ``allowed``; otherwise an error listing them."""
    for choice in allowed:
        if value == choice:
            return choice
    hint = did_you_mean(str(value), allowed).rstrip()
    text = f"must be one of {', '.join(allowed)}, not {value!r}"
    raise _fail(where, name, f"{text}; {hint}" if hint else text)


def refuse_unknown(
    keys: Iterable[str], known: Iterable[str], *, where: str, noun: str = "option"
) -> None:
    """Refuse the first key that is not ``known``, suggesting the closest known one.

    ``noun`` is what the reader calls a key there (``"key"`` in a TOML table).
    """
    known = sorted(known)
    for key in keys:
        if key not in known:
            msg = (
                f"{where}: unknown {noun} {key!r} ({did_you_mean(key, known)}"
                f"known: {', '.join(known)})"
            )
            raise ConfigurationError(msg)


def check_pem_file(path: str | None, *, where: str, name: str) -> None:
    """A certificate or key option must name an existing file (checked at startup).

    ``where`` may be empty when ``name`` says it all (``"TLS option certfile"``).
    """
    if path is not None and not os.path.isfile(path):
        place = f"{where}: {name}" if where else name
        msg = f"{place}={path!r}: no such file; give the path to a PEM file"
        raise ConfigurationError(msg)
