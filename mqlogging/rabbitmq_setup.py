"""Least-privilege RabbitMQ topology and users for a logging pipeline (management HTTP API).

``mqlogging rabbitmq setup`` (or :func:`setup`) declares, on one vhost:

- the logging exchange (durable, ``topic`` by default) and the durable queue bound to it, with
  ``x-dead-letter-exchange`` set so that messages a collector rejects are kept, not dropped;
  a quorum queue (``--queue-type quorum``, the one to use on a cluster: replicated, fsynced)
  also gets ``x-delivery-limit`` (20 by default), so a poison message that makes every
  collector crash before it acks is dead-lettered after that many deliveries instead of
  circling forever;
- the dead-letter exchange (``fanout``: rejected records keep their routing key) and its
  durable dead-letter queue;
- a **producer** user that may only publish to the logging exchange: permissions
  ``configure=^$ write=^<exchange>$ read=^$``;
- a **collector** user that may only consume the queue (and publish dead-letter copies to the
  dead-letter exchange): ``configure=^$ write=^<dead-letter exchange>$ read=^<queue>$``.

Everything is a PUT (or an idempotent binding POST), so running the command twice changes
nothing, except that the users' passwords are set again to the given ones.

Because neither user may *configure* anything, clients must not declare topology: use
``declare=false`` on their endpoint URLs (``amqp://logger@host/?exchange=logs&declare=false``).
With ``declare=false`` the AMQP backend only checks the exchange and the queue passively,
which RabbitMQ allows without the configure permission. Over STOMP, publish to
``/exchange/<exchange>/<routing key>`` and consume from ``/amq/queue/<queue>``: the plain
``/queue/<name>`` destinations declare a queue and so need ``configure``.

Passwords come from files or environment variables, never only from the command line (where
``ps`` and shell history would show them); none is ever printed. The management URL may carry
the admin password, but ``--admin-password-file``/``--admin-password-env`` are preferred.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import ssl
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit

from .backends._urls import redact_url
from .backends.endpoints import Secret
from .errors import BackendError, ConfigurationError, ConnectError

__all__ = [
    "DEFAULT_DELIVERY_LIMIT",
    "ManagementAPI",
    "Permissions",
    "Topology",
    "add_arguments",
    "run_command",
    "setup",
    "topology_from_args",
]

#: Deliveries of one message after which a quorum queue made by ``setup`` dead-letters it:
#: far above what outages cause (each collector crash or lost connection costs one), low
#: enough that a poison message stops circling within minutes.
DEFAULT_DELIVERY_LIMIT = 20


@dataclass(frozen=True, slots=True)
class Permissions:
    """RabbitMQ permission regexes of one user on one vhost."""

    configure: str
    write: str
    read: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """What :func:`setup` declares. Names are validated (non-empty, no ``amq.`` prefix)."""

    vhost: str = "/"
    exchange: str = "logs"
    exchange_type: str = "topic"
    queue: str = "logs"
    binding_key: str = "#"
    queue_type: str = "classic"
    dead_letter_exchange: str = "logs.dlx"
    dead_letter_queue: str = "logs.dead"
    delivery_limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("exchange", "queue", "dead_letter_exchange", "dead_letter_queue"):
            value = getattr(self, name)
            if not value or value.startswith("amq."):
                msg = f"{name} {value!r}: give a non-empty name that does not start with 'amq.'"
                raise ConfigurationError(msg)
        if self.exchange_type not in ("topic", "direct", "fanout", "headers"):
            msg = f"exchange_type {self.exchange_type!r} is not an AMQP exchange type"
            raise ConfigurationError(msg)
        if self.queue_type not in ("classic", "quorum"):
            msg = f"queue_type must be 'classic' or 'quorum', not {self.queue_type!r}"
            raise ConfigurationError(msg)
        if self.delivery_limit is not None and (
            self.queue_type != "quorum" or self.delivery_limit < 1
        ):
            msg = (
                f"delivery_limit {self.delivery_limit}: give a whole number >= 1, with "
                "queue_type quorum (classic queues do not count deliveries)"
            )
            raise ConfigurationError(msg)

    def queue_arguments(self) -> dict[str, Any]:
        """The logging queue's ``x-`` arguments: dead letters, type and delivery limit."""
        arguments: dict[str, Any] = {"x-dead-letter-exchange": self.dead_letter_exchange}
        if self.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        if self.delivery_limit is not None:
            arguments["x-delivery-limit"] = self.delivery_limit
        return arguments

    def producer_permissions(self) -> Permissions:
        """Publish to the logging exchange; nothing else (no configure, no read)."""
        return Permissions(configure="^$", write=f"^{re.escape(self.exchange)}$", read="^$")

    def collector_permissions(self) -> Permissions:
        """Consume the queue; publish only dead-letter copies; configure nothing."""
        return Permissions(
            configure="^$",
            write=f"^{re.escape(self.dead_letter_exchange)}$",
            read=f"^{re.escape(self.queue)}$",
        )


class ManagementAPI:
    """A minimal client of the RabbitMQ management HTTP API (stdlib ``urllib``).

    ``url`` is ``http(s)://user[:password]@host:15672[/prefix]``; ``password`` overrides the
    URL's. Errors are :class:`~mqlogging.errors.ConnectError` (unreachable),
    :class:`~mqlogging.errors.BackendError` (refused request) with one line and no password.
    Not thread-safe (no shared state, but meant for one command run).
    """

    def __init__(
        self,
        url: str,
        *,
        password: Secret | None = None,
        ca_certs: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        parts = _split(url)
        self.username = unquote(parts.username or "guest")
        url_password = unquote(parts.password) if parts.password is not None else None
        if password is None:
            password = Secret(url_password if url_password is not None else "guest")
        self._password = password
        port = f":{parts.port}" if parts.port else ""  # checked by _split
        self.base = f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}/api"
        self.where = f"{parts.scheme}://{quote(self.username, safe='')}@{parts.hostname}{port}"
        self._timeout = timeout
        self._context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._context = ssl.create_default_context(cafile=ca_certs)

    def __repr__(self) -> str:
        return f"ManagementAPI({self.where!r})"

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; return the decoded JSON answer (``None`` for 404 on GET)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        token = base64.b64encode(f"{self.username}:{self._password.reveal()}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self._timeout, context=self._context) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "GET":
                return None
            raise self._http_error(exc, method, path) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLCertVerificationError):
                reason = f"TLS certificate verification failed: {reason.verify_message}"
            msg = f"cannot reach the RabbitMQ management API at {self.where}: {reason}"
            raise ConnectError(msg, endpoint=self.where) from None
        return json.loads(raw) if raw else None

    def _http_error(self, exc: urllib.error.HTTPError, method: str, path: str) -> BackendError:
        try:
            detail = json.loads(exc.read() or b"{}").get("reason", "")
        except (ValueError, AttributeError, OSError):
            detail = ""
        if exc.code == 401:
            msg = (
                f"management API refused the login of user {self.username!r} (401); "
                "check the admin user and password"
            )
        elif exc.code == 403:
            msg = (
                f"user {self.username!r} may not {method} {unquote(path)} (403); "
                "it needs the 'administrator' tag"
            )
        else:
            msg = f"{method} {unquote(path)} failed: {exc.code} {str(detail)[:300]}".rstrip()
        return BackendError(msg, endpoint=self.where)


def _q(name: str) -> str:
    return quote(name, safe="")


def setup(
    api: ManagementAPI,
    topology: Topology,
    *,
    producer: tuple[str, Secret] | None = None,
    collector: tuple[str, Secret] | None = None,
) -> list[tuple[str, str, str]]:
    """Declare ``topology`` and the two users idempotently; return ``(kind, name, status)``.

    ``status`` is ``"created"``, ``"exists"`` or, for users, ``"updated"`` (password and
    permissions set again). An object that exists with other settings (say, the queue without
    the dead-letter exchange) is a :class:`~mqlogging.errors.BackendError` naming it: RabbitMQ
    cannot change a queue's arguments in place, so delete it or match its settings.
    """
    t = topology
    vh = _q(t.vhost)
    done: list[tuple[str, str, str]] = []

    def put(kind: str, path: str, body: dict[str, Any], name: str) -> None:
        existed = api.request("GET", path) is not None
        try:
            api.request("PUT", path, body)
        except BackendError as exc:
            if "inequivalent" in str(exc) or "PRECONDITION_FAILED" in str(exc):
                msg = (
                    f"{kind} {name!r} already exists on vhost {t.vhost!r} with other settings "
                    f"({exc}); delete it or pass matching options"
                )
                raise BackendError(msg, endpoint=api.where) from None
            raise
        done.append((kind, name, "exists" if existed else "created"))

    def bind(exchange: str, queue: str, key: str) -> None:
        path = f"/bindings/{vh}/e/{_q(exchange)}/q/{_q(queue)}"
        existing = api.request("GET", path) or []
        label = f"{exchange} -> {queue} ({key})"
        if any(b.get("routing_key") == key for b in existing):
            done.append(("binding", label, "exists"))
            return
        api.request("POST", path, {"routing_key": key, "arguments": {}})
        done.append(("binding", label, "created"))

    put("vhost", f"/vhosts/{vh}", {}, t.vhost)
    exchange = {"type": t.exchange_type, "durable": True, "auto_delete": False,
                "internal": False, "arguments": {}}  # fmt: skip
    put("exchange", f"/exchanges/{vh}/{_q(t.exchange)}", exchange, t.exchange)
    dlx = {"type": "fanout", "durable": True, "auto_delete": False, "internal": False,
           "arguments": {}}  # fmt: skip
    put("exchange", f"/exchanges/{vh}/{_q(t.dead_letter_exchange)}", dlx, t.dead_letter_exchange)
    queue = {"durable": True, "auto_delete": False, "arguments": t.queue_arguments()}
    put("queue", f"/queues/{vh}/{_q(t.queue)}", queue, t.queue)
    dlq_args = {"x-queue-type": "quorum"} if t.queue_type == "quorum" else {}
    dlq = {"durable": True, "auto_delete": False, "arguments": dlq_args}
    put("queue", f"/queues/{vh}/{_q(t.dead_letter_queue)}", dlq, t.dead_letter_queue)
    bind(t.exchange, t.queue, t.binding_key)
    bind(t.dead_letter_exchange, t.dead_letter_queue, "#")

    for role, user, perms in (
        ("producer", producer, t.producer_permissions()),
        ("collector", collector, t.collector_permissions()),
    ):
        if user is None:
            continue
        name, password = user
        if not password.reveal():
            msg = f"{role} user {name!r}: the password is empty; give a non-empty one"
            raise ConfigurationError(msg)
        existed = api.request("GET", f"/users/{_q(name)}") is not None
        api.request("PUT", f"/users/{_q(name)}", {"password": password.reveal(), "tags": ""})
        api.request(
            "PUT",
            f"/permissions/{vh}/{_q(name)}",
            {"configure": perms.configure, "write": perms.write, "read": perms.read},
        )
        status = "updated" if existed else "created"
        done.append(
            (f"{role} user", name,
             f"{status} (configure={perms.configure} write={perms.write} read={perms.read})")
        )  # fmt: skip
    return done


# -- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mqlogging rabbitmq setup``."""
    parser.add_argument(
        "--url", required=True, metavar="URL",
        help="management API, e.g. http://admin@broker:15672 (password: --admin-password-*)",
    )  # fmt: skip
    parser.add_argument("--admin-password-file", metavar="FILE")
    parser.add_argument("--admin-password-env", metavar="VAR")
    parser.add_argument("--ca-certs", metavar="PEM", help="CA bundle for an https:// URL")
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--exchange", default="logs")
    parser.add_argument("--exchange-type", default="topic")
    parser.add_argument("--queue", default="logs")
    parser.add_argument("--binding-key", default="#")
    parser.add_argument("--queue-type", default="classic", choices=("classic", "quorum"))
    parser.add_argument(
        "--delivery-limit", type=int, default=None, metavar="N",
        help=f"quorum queues: dead-letter a message after N deliveries (default "
        f"{DEFAULT_DELIVERY_LIMIT}; 0: no limit)",
    )  # fmt: skip
    parser.add_argument("--dead-letter-exchange", default=None, metavar="NAME",
                        help="default: <exchange>.dlx")  # fmt: skip
    parser.add_argument("--dead-letter-queue", default=None, metavar="NAME",
                        help="default: <queue>.dead")  # fmt: skip
    for role in ("producer", "collector"):
        parser.add_argument(f"--{role}-user", metavar="NAME")
        parser.add_argument(f"--{role}-password-file", metavar="FILE")
        parser.add_argument(f"--{role}-password-env", metavar="VAR")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")


def _password(args: argparse.Namespace, prefix: str, *, required: bool) -> Secret | None:
    path = getattr(args, f"{prefix}_password_file")
    var = getattr(args, f"{prefix}_password_env")
    option = prefix.replace("_", "-")
    if path and var:
        msg = f"give only one of --{option}-password-file and --{option}-password-env"
        raise ConfigurationError(msg)
    if path:
        try:
            return Secret(Path(path).read_text(encoding="utf-8").strip())
        except OSError as exc:
            msg = f"cannot read --{option}-password-file {path!r}: {exc.strerror}"
            raise ConfigurationError(msg) from None
    if var:
        if var not in os.environ:
            msg = f"--{option}-password-env {var!r}: that environment variable is not set"
            raise ConfigurationError(msg)
        return Secret(os.environ[var])
    if required:
        msg = (
            f"--{option}-user needs a password: --{option}-password-file FILE or "
            f"--{option}-password-env VAR (never on the command line)"
        )
        raise ConfigurationError(msg)
    return None


def _delivery_limit(args: argparse.Namespace) -> int | None:
    """``--delivery-limit``: the default for a quorum queue, none for a classic one, 0 none."""
    if args.delivery_limit is None:
        return DEFAULT_DELIVERY_LIMIT if args.queue_type == "quorum" else None
    if args.delivery_limit == 0:
        return None
    return int(args.delivery_limit)


def topology_from_args(args: argparse.Namespace) -> Topology:
    """The :class:`Topology` that ``mqlogging rabbitmq setup`` declares for ``args``."""
    return Topology(
        vhost=args.vhost,
        exchange=args.exchange,
        exchange_type=args.exchange_type,
        queue=args.queue,
        binding_key=args.binding_key,
        queue_type=args.queue_type,
        dead_letter_exchange=args.dead_letter_exchange or f"{args.exchange}.dlx",
        dead_letter_queue=args.dead_letter_queue or f"{args.queue}.dead",
        delivery_limit=_delivery_limit(args),
    )


def run_command(args: argparse.Namespace) -> int:
    """Run ``mqlogging rabbitmq setup`` from parsed ``args``; print one line per object."""
    admin = _password(args, "admin", required=False)
    api = ManagementAPI(args.url, password=admin, ca_certs=args.ca_certs, timeout=args.timeout)
    topology = topology_from_args(args)
    users: dict[str, tuple[str, Secret] | None] = {}
    for role in ("producer", "collector"):
        name = getattr(args, f"{role}_user")
        secret = _password(args, role, required=bool(name))
        if secret is not None and not name:
            msg = f"--{role}-password-* given without --{role}-user"
            raise ConfigurationError(msg)
        users[role] = (name, secret) if name and secret is not None else None
    results = setup(api, topology, producer=users["producer"], collector=users["collector"])
    width = max(len(kind) for kind, _, _ in results)
    for kind, name, status in results:
        print(f"{kind:<{width}}  {name}: {status}")
    print(
        "clients must not declare topology under these permissions: add declare=false to "
        "their AMQP URLs",
        file=sys.stderr,
    )
    return 0


def _split(url: str) -> SplitResult:
    """``url`` split, its port read once: a malformed URL (``http://h:None``, a port above
    65535, an unclosed ``[``) is a one-line ConfigurationError, never urllib's ValueError
    escaping as a traceback from the CLI."""
    usage = "must be http(s)://user@host:15672 (the RabbitMQ management plugin)"
    try:
        parts = urlsplit(url)
        _ = parts.port  # urllib checks the port only when it is read
    except ValueError as exc:
        msg = f"management URL {redact_url(url)!r} is not a valid URL ({exc}); it {usage}"
        raise ConfigurationError(msg) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = f"management URL {redact_url(url)!r} {usage}"
        raise ConfigurationError(msg)
    return parts
