"""Secrets never leak: a full run with distinctive passwords and an API key, then a grep of
everything it wrote.

The run: ``mqlogging rabbitmq setup`` creates a producer and a collector user whose passwords
are the secrets; ``MQHandler`` (``durability="spool"``, so spool files exist) logs through the
producer user to RabbitMQ; a :class:`CollectorService` consumes as the collector user into
Elasticsearch (noida-db) with an API key from the environment and dead-letters a poison
message into a ``local://`` spool; a second handler points at a dead port with the password in
its URL; the CLI runs ``spool inspect``, ``spool replay`` to a dead URL, ``collect --check``
and ``rabbitmq setup``; failing connections (refused port, wrong password) raise errors.

Everything written is collected — captured stdout/stderr (file descriptors, so child output and
the handler's stderr complaints too), every log record at DEBUG from every logger, exception
strings, reprs and formatted tracebacks, ``stats()``, the spool and dead-letter files,
``/metrics``, ``/readyz`` and ``/healthz``, the documents stored in Elasticsearch — and searched
for each secret, also URL-encoded and base64-encoded.
"""

from __future__ import annotations

import base64
import json
import logging
import traceback
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from harness.brokers import NoidaES, RabbitMQ
from harness.helpers import unique_name, wait_until
from mqlogging import MQHandler
from mqlogging._ids import new_id
from mqlogging._types import Message
from mqlogging.backends import Endpoint, open_consumer, open_producer
from mqlogging.backends.endpoints import Secret
from mqlogging.cli import main
from mqlogging.collector.config import parse_config
from mqlogging.collector.service import CollectorService
from mqlogging.errors import MQLoggingError
from mqlogging.rabbitmq_setup import ManagementAPI, Topology, setup

PRODUCER_SECRET = "Pr0d-S3CRET-q8Zx"
COLLECTOR_SECRET = "C0ll-S3CRET-w4Yv"
API_KEY_SECRET = "ApiK3y-S3CRET-m2Tn"
ES_PASSWORD_SECRET = "EsPw-S3CRET-k7Lr"
ADMIN_SECRET = "guest"  # the management node's admin; too common a word to grep for

SECRETS = (PRODUCER_SECRET, COLLECTOR_SECRET, API_KEY_SECRET, ES_PASSWORD_SECRET)


def _variants(secret: str) -> list[str]:
    """The secret as it could appear: plain, URL-encoded, base64 (alone, or in user:secret)."""
    out = {secret, quote(secret, safe="")}
    for text in (secret, f"logger:{secret}", f"collector:{secret}", f"elastic:{secret}"):
        encoded = base64.b64encode(text.encode()).decode()
        out.add(encoded.rstrip("="))
    return sorted(out)


class _Everything(logging.Handler):
    """Keeps every record of every logger, formatted with its exception, at DEBUG."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
            self.lines.append(repr(record.__dict__))
        except Exception as exc:  # a record that cannot be formatted is itself evidence
            self.lines.append(f"unformattable record: {exc!r}")


def _http(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())


def _files(root: Path) -> str:
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in sorted(root.rglob("*")) if p.is_file()
    )


def _error_text(exc: BaseException) -> str:
    """str, repr and the full formatted traceback (chained causes included)."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


@pytest.fixture
def everything() -> Any:
    handler = _Everything()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_no_secret_in_anything_a_full_run_writes(
    mgmt_rabbitmq: RabbitMQ,
    elasticsearch: NoidaES,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    everything: _Everything,
) -> None:
    """Handler -> RabbitMQ -> collector -> Elasticsearch with secret passwords and API key,
    plus failing connections and CLI commands: none of the secrets appears anywhere in what
    the run wrote or printed (the records themselves all arrive: 40 in, 40 stored)."""
    written: list[str] = []
    broker = mgmt_rabbitmq
    stem = unique_name("sec")
    topo = Topology(
        exchange=f"{stem}.logs", queue=f"{stem}.q",
        dead_letter_exchange=f"{stem}.dlx", dead_letter_queue=f"{stem}.dead",
    )  # fmt: skip
    api = ManagementAPI(
        f"http://guest@127.0.0.1:{broker.management_port}", password=Secret("guest")
    )
    setup(api, topo, producer=("logger", Secret(PRODUCER_SECRET)),
          collector=("collector", Secret(COLLECTOR_SECRET)))  # fmt: skip
    written.append(repr(api))

    amqp = f"127.0.0.1:{broker.amqp_port}"
    query = f"exchange={topo.exchange}&queue={topo.queue}&routing_key=app&declare=false"
    producer_url = f"amqp://logger:{PRODUCER_SECRET}@{amqp}/?{query}"
    collector_url = f"amqp://collector:{COLLECTOR_SECRET}@{amqp}/?{query}"

    # -- the application: a handler through the spool, and one to a dead port ---------------
    spool = tmp_path / "spool"
    handler = MQHandler(producer_url, spool=str(spool), durability="spool", close_timeout=20.0)
    dead_spool = tmp_path / "dead-spool"
    dead_handler = MQHandler(
        f"amqp://logger:{PRODUCER_SECRET}@127.0.0.1:1/?{query}",
        spool=str(dead_spool), close_timeout=1.0, retry_max=1.0, connect_timeout=1.0,
    )  # fmt: skip
    logger = logging.getLogger(unique_name("mqlt.secrets"))
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.addHandler(dead_handler)
    written += [repr(handler), repr(dead_handler), str(handler.config)]
    for i in range(40):
        if i == 7:
            try:
                raise RuntimeError("something failed")
            except RuntimeError:
                logger.exception("record %d with a traceback", i)
        else:
            logger.info("record %d", i, extra={"seq": i})
    assert handler.flush(20.0)
    wait_until(lambda: dead_handler.stats()["spooled"] >= 40, timeout=20, message="dead spooled")
    written += [
        json.dumps(handler.stats(), default=str),
        json.dumps(dead_handler.stats(), default=str),
    ]
    handler.close()
    dead_handler.close()
    written += [json.dumps(dead_handler.stats(), default=str), _files(spool), _files(dead_spool)]

    # -- a poison message, published by the producer user -------------------------------------
    with open_producer(producer_url) as producer:
        producer.publish_batch([Message(new_id(), b"{not json")])
        written.append(repr(producer))

    # -- the collector: API key from the environment, dead letters to a local spool ---------
    dead_letters = tmp_path / "dead-letters"
    monkeypatch.setenv("MQLOGGING_ES_API_KEY", API_KEY_SECRET)
    monkeypatch.setenv("MQLT_COLLECTOR_PW", COLLECTOR_SECRET)
    dataset = stem.replace("-", "_")
    tables: dict[str, Any] = {
        "sources": [{"url": collector_url}],
        "sinks": [{"type": "elasticsearch", "hosts": [elasticsearch.url], "dataset": dataset,
                   "request_timeout": 5.0}],
        "dead_letter": {"url": f"local://{dead_letters}"},
        "http": {"listen": "127.0.0.1:0"},
        "pipeline": {"batch_max_wait": 0.2},
        "collector": {"shutdown_timeout": 5.0},
    }  # fmt: skip
    import os

    config = parse_config(tables, env=dict(os.environ))
    written += [repr(config), str(config), config.summary()]
    svc = CollectorService(config)
    svc.start()
    try:
        wait_until(lambda: svc.metrics.value("acked") >= 41, timeout=60, message="41 acked")
        assert svc.http is not None
        port = svc.http.address[1]
        for path in ("/metrics", "/readyz", "/healthz"):
            written.append(_http(f"http://127.0.0.1:{port}{path}"))
    finally:
        svc.close()
    assert svc.metrics.value("dead_lettered") == 1
    written.append(_files(dead_letters))
    index = f"logs-{dataset}-default"
    _http(f"{elasticsearch.url}/{index}/_refresh")
    stored = json.loads(_http(f"{elasticsearch.url}/{index}/_search?size=100"))
    written.append(json.dumps(stored))
    assert stored["hits"]["total"]["value"] == 40

    # -- failing connections with the password in the URL --------------------------------------
    failing = [
        f"amqp://logger:{PRODUCER_SECRET}@127.0.0.1:1/?connect_timeout=1",
        f"amqp://logger:{COLLECTOR_SECRET}@{amqp}/?{query}",  # wrong password: login refused
        f"stomp://logger:{PRODUCER_SECRET}@127.0.0.1:1/queue/x?connect_timeout=1",
        f"stomp://logger:{COLLECTOR_SECRET}@127.0.0.1:{broker.stomp_port}/queue/x",
        f"amqp://logger:{PRODUCER_SECRET}@127.0.0.1:1/?bogus_option=1",  # ConfigurationError
        f"amqq://logger:{PRODUCER_SECRET}@127.0.0.1/",  # unknown scheme
    ]
    for url in failing:
        with pytest.raises(MQLoggingError) as info, open_producer(url) as producer:
            producer.publish_batch([Message(new_id(), b"{}")])
        written.append(_error_text(info.value))
    with pytest.raises(MQLoggingError) as info, open_consumer(failing[1]) as consumer:
        consumer.fetch(1, 1.0)
    written.append(_error_text(info.value))
    written.append(repr(Endpoint.from_url(producer_url)))
    written.append(str(Endpoint.from_url(producer_url)))

    # -- CLI commands ----------------------------------------------------------------------
    config_file = tmp_path / "collector.toml"
    config_file.write_text(
        "[[sources]]\n"
        f'url = "amqp://collector@{amqp}/?{query}&password_env=MQLT_COLLECTOR_PW"\n'
        "[[sinks]]\n"
        'type = "elasticsearch"\n'
        f'hosts = ["http://elastic:{ES_PASSWORD_SECRET}@127.0.0.1:1"]\n'
        "[dead_letter]\n"
        f'url = "amqp://collector:{COLLECTOR_SECRET}@{amqp}/?exchange={topo.dead_letter_exchange}&queue={topo.dead_letter_queue}&declare=false"\n'
    )
    monkeypatch.delenv("MQLOGGING_ES_API_KEY")
    (tmp_path / "pw").write_text(PRODUCER_SECRET)
    for argv in (
        ["spool", "inspect", str(dead_spool)],
        ["spool", "inspect", "--json", str(dead_spool)],
        ["spool", "replay", str(dead_spool), "--to",
         f"amqp://logger:{PRODUCER_SECRET}@127.0.0.1:1/?connect_timeout=1"],
        ["spool", "replay", str(dead_spool), "--to", f"bogus://logger:{PRODUCER_SECRET}@h/"],
        ["collect", "--check", "--config", str(config_file)],
        ["rabbitmq", "setup", "--url",
         f"http://guest:{COLLECTOR_SECRET}@127.0.0.1:{broker.management_port}",
         "--exchange", topo.exchange, "--queue", topo.queue],
        ["rabbitmq", "setup", "--url", f"http://guest@127.0.0.1:{broker.management_port}",
         "--admin-password-env", "NOPE_UNSET", "--producer-user", "logger",
         "--producer-password-file", str(tmp_path / "pw")],
    ):  # fmt: skip
        code = main(argv)
        written.append(f"exit {code}")
    written.append(_files(dead_spool))

    # -- the grep ----------------------------------------------------------------------------
    out, err = capfd.readouterr()
    written += [out, err, *everything.lines]
    haystack = "\n".join(written)
    assert "collect" in haystack
    assert "record 7 with a traceback" in haystack
    leaks = {v: haystack.count(v) for s in SECRETS for v in _variants(s) if v in haystack}
    if leaks:
        where = []
        for v in leaks:
            i = haystack.index(v)
            where.append(haystack[max(0, i - 200) : i + 60])
        pytest.fail(f"secrets found: {leaks}\n" + "\n----\n".join(where))


def test_secret_accessors_are_explicit() -> None:
    """A ``Secret`` shows ``***`` in str/repr/f-strings/containers; only ``reveal()`` gives the
    value, and an Endpoint's repr, str, redacted() and dataclass fields never show it."""
    secret = Secret(PRODUCER_SECRET)
    ep = Endpoint.from_url(f"amqps://logger:{PRODUCER_SECRET}@h1,h2/?exchange=x")
    shown = [str(secret), repr(secret), f"{secret}", repr([secret]), repr({"p": secret}),
             repr(ep), str(ep), ep.redacted(), repr(ep.password)]  # fmt: skip
    assert all(PRODUCER_SECRET not in text for text in shown), shown
    assert secret.reveal() == PRODUCER_SECRET
    assert ep.credentials() == ("logger", PRODUCER_SECRET)


def test_stomp_debug_log_has_no_passcode(mgmt_rabbitmq: RabbitMQ, everything: _Everything) -> None:
    """With DEBUG logging on (as in many applications' development settings), connecting over
    STOMP does not put the password into any log record."""
    url = f"stomp://guest:{COLLECTOR_SECRET}@127.0.0.1:{mgmt_rabbitmq.stomp_port}/queue/x"
    with pytest.raises(MQLoggingError), open_producer(url) as producer:
        producer.publish_batch([Message(new_id(), b"{}")])
    leaked = [line for line in everything.lines if COLLECTOR_SECRET in line]
    assert not leaked, leaked[:1]
