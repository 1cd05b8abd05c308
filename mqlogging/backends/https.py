"""``https://`` — the collector's HTTPS ingest as an endpoint of the handler (producer only).

::

    https://collector.example.org:8443/ingest?token_file=/etc/pilot/token
    https://collector.example.org:8443/ingest?certfile=/tmp/x509up_u1000&ca_certs=/etc/ca.pem
    http://127.0.0.1:8080/ingest?allow_http=true     (plain HTTP: explicit, e.g. on loopback)

A batch is one ``POST`` of JSON lines (``application/x-ndjson``), gzip-compressed unless
``gzip=false``, with ``Authorization: Bearer`` when a token is configured (``token``,
``token_file`` or ``token_env``; a :class:`~mqlogging.backends.endpoints.Secret`, never shown)
and/or a client certificate (``certfile``/``keyfile``; a grid proxy file holds both, so
``certfile`` alone is enough). The server is verified against ``ca_certs`` (else the system
CAs), hostname included, unless ``verify=false``.

What "confirmed" means for :meth:`HTTPSProducer.publish_batch`: the ingest answers 2xx only
once every record is durably handed on (published with confirms to its broker, or in its
sinks), so:

- ``2xx`` with ``{"accepted": N}`` for all N records sent -> the batch is confirmed (a 2xx
  without it is not the ingest, e.g. a catch-all web server on a wrong path:
  :class:`~mqlogging.errors.NotConfirmed`);
- ``400`` naming lines -> those records can never be taken (the rest were handed on):
  :class:`~mqlogging.errors.PartlyRefused` with their ids, which the handler counts as dropped
  and announces with a marker; when the answer lists only the first refused lines (more than
  100: ``omitted``), the lines after the last listed one are sent again, so each batch ends
  delivered or refused and counted;
- ``413`` -> the batch is split in halves and each is sent again; a single record that is too
  large is refused like a ``400`` line;
- ``429``, ``503``, other ``5xx`` -> :class:`~mqlogging.errors.NotConfirmed`; ``401``/``403`` ->
  :class:`~mqlogging.errors.ConnectError` (the login was refused); timeouts ->
  :class:`~mqlogging.errors.PublishTimeout`; no connection -> ``ConnectError``. The handler
  then retries with backoff, fails over, spools and replays, as for every endpoint. Resending
  is safe: the records keep their ids, so the collector stores each once in Elasticsearch.

Several hosts (``https://c1:8443,c2:8443/ingest``) are tried in order when one cannot be
connected to. ``timeout`` bounds each request (the ingest may hold a request until its
broker confirmed: keep it above the ingest's own ``timeout``), ``connect_timeout`` the
connection. HTTP stack: httpx (maintained, synchronous API for the sender thread, explicit
timeouts, an ``ssl.SSLContext`` for exact CA and client-certificate control).
Needs ``pip install 'mqlogging[http]'``.
"""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .._coerce import to_bool
from .._json import DECODE_ERRORS, loads
from .._types import Message
from ..errors import (
    ConfigurationError,
    ConnectError,
    MissingDependencyError,
    NotConfirmed,
    PartlyRefused,
    PublishTimeout,
)
from .base import Producer
from .endpoints import COMMON_OPTIONS, COMMON_TYPES, Coercer, Endpoint, Scheme, Secret, read_secret
from .registry import Transport

if TYPE_CHECKING:
    import httpx

__all__ = ["TRANSPORT", "HTTPSEndpoint", "HTTPSProducer"]

_TOKEN_KEYS = ("token", "token_file", "token_env")


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPSEndpoint(Endpoint):
    """The HTTPS ingest of a collector (see the module docstring)."""

    transport: ClassVar[str] = "https"
    schemes: ClassVar[Mapping[str, Scheme]] = {
        "https": Scheme(tls=True, default_port=443),
        "http": Scheme(tls=False, default_port=80),
    }
    url_options: ClassVar[frozenset[str]] = (
        COMMON_OPTIONS - {"heartbeat", "prefetch", "username", "password", "password_file",
                          "password_env"}
    ) | {"gzip", "allow_http", *_TOKEN_KEYS}  # fmt: skip
    option_types: ClassVar[Mapping[str, Coercer]] = {
        **COMMON_TYPES, "gzip": to_bool, "allow_http": to_bool
    }  # fmt: skip

    path: str = "/ingest"
    token: Secret | None = field(default=None, compare=False)
    gzip: bool = True
    allow_http: bool = False

    @classmethod
    def path_fields(cls, path: str, where: str) -> dict[str, Any]:
        return {"path": path} if path not in ("", "/") else {}

    @classmethod
    def reconcile(cls, values: dict[str, Any], where: str) -> None:
        """No user info (the ingest has no basic auth); one token source at most, read now."""
        if "username" in values or "password" in values:
            msg = (
                f"{where}: user:password@ is not used by the https ingest; authenticate with "
                "token_file= or token_env= (a bearer token) or certfile=/keyfile= (a client "
                "certificate) instead"
            )
            raise ConfigurationError(msg)
        given = [k for k in _TOKEN_KEYS if k in values]
        if len(given) > 1:
            msg = f"{where}: give only one of {', '.join(given)}"
            raise ConfigurationError(msg)
        if given:
            values["token"] = read_secret(given[0], values.pop(given[0]), where)

    def validate(self, where: str) -> None:
        if self.tls is None and not self.allow_http:
            msg = (
                f"{where}: plain http:// sends records (and any token) unencrypted; use "
                "https://, or add allow_http=true if that is really meant (e.g. loopback)"
            )
            raise ConfigurationError(msg)

    def redacted_path(self) -> str:
        return self.path

    def destination_parts(self) -> dict[str, str]:
        return {"path": self.path}


class HTTPSProducer(Producer):
    """POSTs batches to the ingest; see the module docstring for what is confirmed. Owned by
    one thread, like every producer."""

    endpoint: HTTPSEndpoint

    def __init__(self, endpoint: Endpoint | str) -> None:
        self.endpoint = HTTPSEndpoint.from_url(endpoint)
        self._client: httpx.Client | None = None

    def publish_batch(self, messages: Sequence[Message]) -> None:
        """Send ``messages``; return once the ingest answered 2xx for all of them."""
        if not messages:
            return
        refused: set[str] = set()
        self._send(list(messages), refused)
        if refused:
            msg = f"the ingest refused {len(refused)} of {len(messages)} records for good"
            raise PartlyRefused(msg, ids=frozenset(refused), endpoint=self.endpoint.redacted())

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    # -- internals ------------------------------------------------------------------------------

    def _send(self, messages: list[Message], refused: set[str]) -> None:
        """POST ``messages``; halves on 413; adds the ids refused for good to ``refused``.

        A 400 whose report is capped (``omitted``: more refused lines than it lists) settles
        the lines up to the last listed one, and the rest is sent again, until every record is
        delivered or refused and counted (before, such a batch was retried for ever).
        """
        while messages:
            messages = self._send_once(messages, refused)

    def _send_once(self, messages: list[Message], refused: set[str]) -> list[Message]:
        """One POST of ``messages`` (halves on 413); returns the records still to send."""
        response = self._post(b"\n".join(m.body for m in messages))
        status = response.status_code
        if 200 <= status < 300:
            if _accepted(response.content) == len(messages):
                return []
            # Not the ingest's answer (a catch-all web server on a wrong path?): no confirm.
            detail = response.text.strip().replace("\n", " ")[:100]
            msg = (
                f"the server answered {status} without the ingest's "
                f'{{"accepted": {len(messages)}}} ({detail!r}); is the path right?'
            )
            raise NotConfirmed(msg, endpoint=self.endpoint.redacted())
        if status == 413 and len(messages) > 1:
            half = len(messages) // 2
            self._send(messages[:half], refused)
            self._send(messages[half:], refused)
            return []
        if status == 413:
            refused.add(messages[0].id)
            return []
        if status == 400:
            report = _refused_lines(response.content, len(messages))
            if report is not None:
                lines, settled = report
                refused.update(messages[n - 1].id for n in lines)
                return messages[settled:]
        raise self._failure(status, response.text)

    def _failure(self, status: int, text: str) -> Exception:
        where = self.endpoint.redacted()
        detail = text.strip().replace("\n", " ")[:200]
        if status in (401, 403):
            return ConnectError(f"the ingest refused the login ({status}): {detail}",
                                endpoint=where)  # fmt: skip
        return NotConfirmed(f"the ingest answered {status}: {detail}", endpoint=where)

    def _post(self, payload: bytes) -> httpx.Response:
        """POST to each host in turn until one answers; translate httpx errors."""
        import httpx

        ep = self.endpoint
        headers = {"Content-Type": "application/x-ndjson"}
        if ep.gzip:
            payload = gzip.compress(payload, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        if ep.token is not None:
            headers["Authorization"] = f"Bearer {ep.token.reveal()}"
        client = self._http()
        last: Exception | None = None
        for host in ep.hosts:
            url = f"{ep.scheme}://{host}{ep.path}"
            try:
                return client.post(url, content=payload, headers=headers)
            except httpx.ConnectError as exc:  # ConnectTimeout is a TimeoutException
                last = exc
            except httpx.TimeoutException as exc:
                self.close()
                msg = f"the ingest did not answer in time ({type(exc).__name__})"
                raise PublishTimeout(msg, endpoint=ep.redacted()) from exc
            except httpx.HTTPError as exc:
                self.close()
                msg = f"request failed: {type(exc).__name__}: {exc}"
                raise NotConfirmed(msg, endpoint=ep.redacted()) from exc
        self.close()
        msg = f"cannot connect to the ingest: {last}"
        raise ConnectError(msg, endpoint=ep.redacted()) from last

    def _http(self) -> httpx.Client:
        if self._client is None:
            try:
                import httpx
            except ImportError as exc:
                raise MissingDependencyError("httpx", "http") from exc
            ep = self.endpoint
            verify: Any = ep.tls.ssl_context() if ep.tls is not None else False
            timeout = httpx.Timeout(ep.timeout, connect=ep.connect_timeout)
            self._client = httpx.Client(verify=verify, timeout=timeout, trust_env=False)
        return self._client


def _accepted(content: bytes) -> int | None:
    """The ``accepted`` count of a 2xx answer, ``None`` when it has none (not the ingest)."""
    try:
        doc = loads(content)
    except DECODE_ERRORS:
        return None
    accepted = doc.get("accepted") if isinstance(doc, dict) else None
    return accepted if accepted.__class__ is int else None


def _refused_lines(content: bytes, sent: int) -> tuple[set[int], int] | None:
    """The refused line numbers of a 400 answer and how many lines (from the first) the
    answer settles; ``None`` when it is not the ingest's report (it confirms nothing).

    The ingest lists the *first* refused lines (at most 100) and counts the others in
    ``omitted``, all after the last listed one: a complete report settles every line; a
    capped one settles the lines up to its last listed line (refused ones listed, the others
    handed on). Counts that do not add up (``accepted`` + listed + ``omitted`` != ``sent``)
    are not the ingest's, so no record is taken for handed on when it was not.
    """
    report = _report(content)
    if report is None:
        return None
    lines, accepted, omitted = report
    if accepted + len(lines) + omitted != sent or not all(1 <= n <= sent for n in lines):
        return None
    settled = max(lines) if omitted else sent
    return (lines, settled) if settled < sent or not omitted else None


def _report(content: bytes) -> tuple[set[int], int, int] | None:
    """``(listed lines, accepted, omitted)`` of a 400 answer shaped like the ingest's
    (distinct integer lines, at least one), else ``None``."""
    try:
        doc = loads(content)
    except DECODE_ERRORS:
        return None
    if not isinstance(doc, dict):
        return None
    errors, accepted, omitted = doc.get("errors"), doc.get("accepted"), doc.get("omitted", 0)
    if not isinstance(errors, list) or accepted.__class__ is not int:
        return None
    if omitted.__class__ is not int or omitted < 0:
        return None
    lines = {n for e in errors if isinstance(e, dict) and (n := e.get("line")).__class__ is int}
    return (lines, accepted, omitted) if lines and len(lines) == len(errors) else None


TRANSPORT = Transport(
    endpoint=HTTPSEndpoint,
    producer=HTTPSProducer,
    preload=("httpx",),
    loggers=("httpx", "httpcore"),
)
"""What the registry hands out for ``https://`` and ``http://`` URLs: a producer only."""
