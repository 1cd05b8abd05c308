"""``mqlogging rabbitmq setup``: least-privilege topology and users through the management API.

Against a private RabbitMQ node with the management plugin (``mgmt_rabbitmq``), the command
declares the exchange, the queue with its dead-letter exchange and queue, and two users. The
tests then use the *real* backends with those users: the producer (with ``declare=false``) can
publish and cannot consume or declare; the collector can consume and cannot publish to the
logging exchange.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.brokers import RabbitMQ
from harness.helpers import unique_name, wait_until
from mqlogging._ids import new_id
from mqlogging._types import Message
from mqlogging.backends import open_consumer, open_producer
from mqlogging.backends.amqp import AMQPConsumer, AMQPProducer
from mqlogging.cli import main
from mqlogging.errors import ConnectError, NotConfirmed

PRODUCER_PASSWORD = "Prod-Pa55-7f1c0e"
COLLECTOR_PASSWORD = "Coll-Pa55-9a2b4d"


@dataclass
class Setup:
    broker: RabbitMQ
    exchange: str
    queue: str
    dlx: str
    dlq: str
    producer: str
    collector: str
    argv: list[str]
    first_out: str
    first_err: str

    def amqp(self, user: str, password: str, **query: str) -> str:
        params = {"exchange": self.exchange, "queue": self.queue, "routing_key": "app.logs",
                  "declare": "false", **query}  # fmt: skip
        qs = "&".join(f"{k}={v}" for k, v in params.items())
        return f"amqp://{user}:{password}@127.0.0.1:{self.broker.amqp_port}/?{qs}"


def _messages(n: int) -> list[Message]:
    return [Message(new_id(), f'{{"n":{i}}}'.encode()) for i in range(n)]


@pytest.fixture(scope="module")
def setup_done(
    mgmt_rabbitmq: RabbitMQ, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    """One run of ``mqlogging rabbitmq setup`` with unique names; passwords from files and
    the admin password from the environment (none on the command line)."""
    tmp = tmp_path_factory.mktemp("setup")
    (tmp / "producer.pw").write_text(PRODUCER_PASSWORD + "\n")
    (tmp / "collector.pw").write_text(COLLECTOR_PASSWORD + "\n")
    stem = unique_name("lp")
    names = {
        "exchange": f"{stem}.logs",
        "queue": f"{stem}.q",
        "dlx": f"{stem}.logs.dlx",
        "dlq": f"{stem}.q.dead",
        "producer": f"{stem}-logger",
        "collector": f"{stem}-collector",
    }
    argv = [
        "rabbitmq", "setup",
        "--url", f"http://guest@127.0.0.1:{mgmt_rabbitmq.management_port}",
        "--admin-password-env", "MQLT_ADMIN_PASSWORD",
        "--vhost", "/",
        "--exchange", names["exchange"], "--queue", names["queue"],
        "--dead-letter-exchange", names["dlx"], "--dead-letter-queue", names["dlq"],
        "--producer-user", names["producer"], "--producer-password-file", str(tmp / "producer.pw"),
        "--collector-user", names["collector"],
        "--collector-password-file", str(tmp / "collector.pw"),
    ]  # fmt: skip
    mp = pytest.MonkeyPatch()
    mp.setenv("MQLT_ADMIN_PASSWORD", "guest")
    capture = _Capture()
    with capture:
        code = main(argv)
    assert code == 0, capture.err
    yield Setup(mgmt_rabbitmq, argv=argv, first_out=capture.out, first_err=capture.err, **names)
    mp.undo()


class _Capture:
    """Capture sys.stdout/sys.stderr around a block (module-scoped fixtures have no capsys)."""

    def __enter__(self) -> _Capture:
        import io
        import sys

        self._old = sys.stdout, sys.stderr
        self._out, self._err = io.StringIO(), io.StringIO()
        sys.stdout, sys.stderr = self._out, self._err
        return self

    def __exit__(self, *exc: object) -> None:
        import sys

        sys.stdout, sys.stderr = self._old
        self.out, self.err = self._out.getvalue(), self._err.getvalue()


def _mgmt_get(broker: RabbitMQ, path: str) -> object:
    req = urllib.request.Request(f"http://127.0.0.1:{broker.management_port}/api{path}")
    req.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


class TestSetupCommand:
    def test_declares_everything(self, setup_done: Setup) -> None:
        """The first run creates exchange, dead-letter exchange, both queues, both bindings and
        both users, with exactly the advertised permissions; it prints no password."""
        out = setup_done.first_out
        for name in (setup_done.exchange, setup_done.queue, setup_done.dlx, setup_done.dlq,
                     setup_done.producer, setup_done.collector):  # fmt: skip
            assert f"{name}: created" in out or f"{name}: created (" in out, out
        assert "declare=false" in setup_done.first_err
        b = setup_done.broker
        q = _mgmt_get(b, f"/queues/%2F/{setup_done.queue}")
        assert q["durable"] is True  # type: ignore[index]
        assert q["arguments"]["x-dead-letter-exchange"] == setup_done.dlx  # type: ignore[index]
        perms = {p["user"]: p for p in _mgmt_get(b, "/permissions")}  # type: ignore[attr-defined]
        prod, coll = perms[setup_done.producer], perms[setup_done.collector]
        only = lambda name: f"^{re.escape(name)}$"  # noqa: E731
        assert ("^$", only(setup_done.exchange), "^$") == (
            prod["configure"], prod["write"], prod["read"],
        )  # fmt: skip
        assert ("^$", only(setup_done.dlx), only(setup_done.queue)) == (
            coll["configure"], coll["write"], coll["read"],
        )  # fmt: skip
        for secret in (PRODUCER_PASSWORD, COLLECTOR_PASSWORD, "guest:guest"):
            assert secret not in out + setup_done.first_err

    def test_second_run_is_idempotent(
        self, setup_done: Setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Running the same command again succeeds, reports the objects as existing, and
        leaves exactly one binding of the queue to the exchange."""
        monkeypatch.setenv("MQLT_ADMIN_PASSWORD", "guest")
        assert main(setup_done.argv) == 0
        out = capsys.readouterr().out
        assert "created" not in out.replace("updated", ""), out
        assert f"{setup_done.queue}: exists" in out
        bindings = _mgmt_get(
            setup_done.broker, f"/bindings/%2F/e/{setup_done.exchange}/q/{setup_done.queue}"
        )
        assert len(bindings) == 1  # type: ignore[arg-type]

    def test_password_on_command_line_only_is_rejected(
        self, mgmt_rabbitmq: RabbitMQ, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A user without a password file or variable is an error naming both ways (there is
        no option to pass the password itself on the command line)."""
        code = main([
            "rabbitmq", "setup", "--url", f"http://guest:guest@127.0.0.1:{mgmt_rabbitmq.management_port}",
            "--producer-user", "nopass",
        ])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2
        assert "--producer-password-file" in err
        assert "--producer-password-env" in err

    def test_wrong_admin_password_is_one_clear_line(
        self, mgmt_rabbitmq: RabbitMQ, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A refused admin login is a one-line error without the password."""
        code = main([
            "rabbitmq", "setup",
            "--url", f"http://guest:Wr0ng-Admin-PW@127.0.0.1:{mgmt_rabbitmq.management_port}",
        ])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2
        assert "refused the login of user 'guest' (401)" in err
        assert "Wr0ng-Admin-PW" not in err
        assert err.count("\n") == 1


class TestPermissions:
    def test_producer_publishes_with_declare_false(self, setup_done: Setup) -> None:
        """The producer user publishes through AMQPProducer with ``declare=false`` (passive
        checks pass without the configure permission); the collector user receives all 25."""
        s = setup_done
        sent = _messages(25)
        with AMQPProducer(s.amqp(s.producer, PRODUCER_PASSWORD)) as producer:
            producer.publish_batch(sent)
        got: list[str] = []
        with AMQPConsumer(s.amqp(s.collector, COLLECTOR_PASSWORD)) as consumer:

            def more() -> bool:
                batch = consumer.fetch(100, 0.2)
                consumer.ack(batch)
                got.extend(d.id for d in batch)
                return len(got) >= 25

            wait_until(more, timeout=20, interval=0)
        assert [m.id for m in sent] == got

    def test_producer_cannot_declare(self, setup_done: Setup) -> None:
        """With the default ``declare=true`` the producer is refused with a message that says
        to set ``declare=false``: the permissions really exclude configure."""
        s = setup_done
        with pytest.raises(ConnectError, match="set declare=false"):
            AMQPProducer(s.amqp(s.producer, PRODUCER_PASSWORD, declare="true")).publish_batch(
                _messages(1)
            )

    def test_producer_cannot_consume(self, setup_done: Setup) -> None:
        """The producer user may not read the queue: consuming is refused (403)."""
        s = setup_done
        with pytest.raises(ConnectError, match=r"403|ACCESS_REFUSED|access") as info:
            AMQPConsumer(s.amqp(s.producer, PRODUCER_PASSWORD)).fetch(1, 1.0)
        assert PRODUCER_PASSWORD not in str(info.value)

    def test_collector_cannot_publish(self, setup_done: Setup) -> None:
        """The collector user may not write to the logging exchange: the broker refuses the
        batch (403 ACCESS_REFUSED), nothing reaches the queue."""
        s = setup_done
        depth_before = s.broker.queue_depth(s.queue)
        with (
            pytest.raises((NotConfirmed, ConnectError), match=r"403|ACCESS_REFUSED") as info,
            AMQPProducer(s.amqp(s.collector, COLLECTOR_PASSWORD)) as producer,
        ):
            producer.publish_batch(_messages(3))
        assert COLLECTOR_PASSWORD not in str(info.value)
        assert s.broker.queue_depth(s.queue) == depth_before

    def test_rejected_records_go_to_the_dead_letter_queue(self, setup_done: Setup) -> None:
        """A record the collector rejects (nack, no requeue) lands in the dead-letter queue
        through the dead-letter exchange set up by the command."""
        s = setup_done
        sent = _messages(2)
        with AMQPProducer(s.amqp(s.producer, PRODUCER_PASSWORD)) as producer:
            producer.publish_batch(sent)
        dead_before = s.broker.queue_depth(s.dlq)
        with AMQPConsumer(s.amqp(s.collector, COLLECTOR_PASSWORD)) as consumer:
            got = wait_until(lambda: consumer.fetch(10, 0.5), timeout=20)
            consumer.nack(got, requeue=False)
            rest: list[object] = []
            wait_until(lambda: rest.extend(consumer.fetch(10, 0.2)) or len(got) + len(rest) >= 2)
            consumer.nack(rest, requeue=False)  # type: ignore[arg-type]
        wait_until(lambda: s.broker.queue_depth(s.dlq) == dead_before + 2, timeout=10)

    def test_stomp_producer_and_collector(self, setup_done: Setup) -> None:
        """Over STOMP the same users work with destinations that declare nothing: the
        producer SENDs to ``/exchange/<exchange>/<key>``, the collector reads
        ``/amq/queue/<queue>``; 5 records round-trip."""
        s = setup_done
        base = f"127.0.0.1:{s.broker.stomp_port}"
        prod = f"stomp://{s.producer}:{PRODUCER_PASSWORD}@{base}/exchange/{s.exchange}/app.logs"
        coll = f"stomp://{s.collector}:{COLLECTOR_PASSWORD}@{base}/amq/queue/{s.queue}"
        sent = _messages(5)
        with open_producer(prod) as producer:
            producer.publish_batch(sent)
        got: list[str] = []
        with open_consumer(coll) as consumer:

            def more() -> bool:
                batch = consumer.fetch(10, 0.2)
                consumer.ack(batch)
                got.extend(d.id for d in batch)
                return len(got) >= 5

            wait_until(more, timeout=20, interval=0)
        assert sorted(m.id for m in sent) == sorted(got)


def test_setup_module_has_no_password_in_repr(tmp_path: Path) -> None:
    """``ManagementAPI`` shows the admin user, never the password, in repr and errors."""
    from mqlogging.rabbitmq_setup import ManagementAPI

    api = ManagementAPI("http://admin:Sup3r-S3cret@127.0.0.1:1/")
    assert "Sup3r-S3cret" not in repr(api)
    with pytest.raises(ConnectError) as info:
        api.request("GET", "/overview")
    assert "Sup3r-S3cret" not in str(info.value)


@pytest.mark.parametrize(
    "url", ["http://h:None", "http://u:Sup3r-S3cret@h:99999/", "http://[::1:15672/", "ftp://h/"]
)
def test_malformed_management_url_is_one_line(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A management URL whose port is not a number from 0 to 65535 (or with an unclosed
    ``[``) is the usual one-line ConfigurationError, from the class and from the CLI (exit
    2), without the password; before, urllib's ValueError escaped as a traceback."""
    from mqlogging.errors import ConfigurationError
    from mqlogging.rabbitmq_setup import ManagementAPI

    with pytest.raises(ConfigurationError) as info:
        ManagementAPI(url)
    assert "\n" not in str(info.value)
    assert "http(s)://user@host:15672" in str(info.value)
    assert main(["rabbitmq", "setup", "--url", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "management URL" in err
    assert "Sup3r-S3cret" not in err
