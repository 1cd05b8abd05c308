"""Raw URL strings, before any transport parsed them: the scheme, and a password-free copy.

Both the registry (which picks a transport by scheme) and :mod:`.endpoints` (which parses the
rest) report errors about URLs that may hold a password, so both need these; they live here,
below both, so that neither has to import the other for them.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from ..errors import ConfigurationError

__all__ = ["is_secret_option", "redact_url", "split_scheme"]

_SECRET_NAMES = ("password", "token", "api_key", "secret")


def is_secret_option(name: str) -> bool:
    """True for a query option that holds a secret itself: ``password``, ``token``,
    ``api_key``, ``secret`` or a name ending in one of them after ``_`` (``*_file`` and
    ``*_env``, which only say where a secret is, are shown). A transport naming a new secret
    option follows this rule, so redaction needs no list of transports."""
    name = name.lower()
    return any(name == s or name.endswith("_" + s) for s in _SECRET_NAMES)


def split_scheme(url: object) -> tuple[str, str]:
    """``(scheme, rest)`` of ``url``, the scheme in lower case.

    Raises:
        ConfigurationError: ``url`` is not a string with ``://``.
    """
    if not isinstance(url, str) or "://" not in url:
        msg = (
            f"endpoint {url!r} is not a URL; expected e.g. amqp://host/, "
            "stomp://host:61613/queue/logs or local:///var/spool/app"
        )
        raise ConfigurationError(msg)
    scheme, rest = url.split("://", 1)
    return scheme.lower(), rest


def redact_url(url: str) -> str:
    """Mask the password of a raw URL string (in its user info, and every query option that
    :func:`is_secret_option`), for error messages before parsing succeeded."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    tail = "&".join(
        f"{k}=***" if is_secret_option(k) else f"{k}={v}"
        for k, v in parse_qsl(tail.partition("?")[2], keep_blank_values=True)
    )
    path = rest.partition("/")[2].partition("?")[0]
    return f"{scheme}{sep}{userinfo}{at}{hosts}{slash}{path}{'?' + tail if tail else ''}"
