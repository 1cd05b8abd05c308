"""MQHandler configuration: dictConfig (dict, YAML, JSON, Django-style), strategies, validation.

Each delivery test counts the records that reached the broker queue(s) end to end.
"""

from __future__ import annotations

import json
import logging
import logging.config
from pathlib import Path
from typing import Any

import pytest
import yaml

import mqlogging
from harness.brokers import ActiveMQ, RabbitMQ
from harness.drain import amqp_url, drain_amqp, drain_stomp, record_id, seqs, stomp_url
from mqlogging.handlers import MQHandler

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SECRET = "never-Show-th1s"


def _dict_config(logger: str, handler: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"mq": {"class": "mqlogging.MQHandler", **handler}},
        "loggers": {logger: {"handlers": ["mq"], "level": "INFO", "propagate": False}},
        **extra,
    }


def _log(logger_name: str, n: int) -> MQHandler:
    logger = logging.getLogger(logger_name)
    for i in range(n):
        logger.info("record %d", i, extra={"seq": i})
    (handler,) = logger.handlers
    assert isinstance(handler, MQHandler)
    return handler


def _close(logger_name: str) -> None:
    logger = logging.getLogger(logger_name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture
def logger_name(queue_name: str) -> Any:
    name = f"cfg.{queue_name}"
    yield name
    _close(name)


class TestDictConfig:
    def test_one_amqp_endpoint(
        self, rabbitmq: RabbitMQ, queue_name: str, logger_name: str, spool_dir: Path
    ) -> None:
        """dictConfig with one AMQP URL: every record arrives once, in order, as ECS JSON whose
        event.id is the AMQP message_id."""
        url = amqp_url(rabbitmq, queue_name)
        logging.config.dictConfig(
            _dict_config(logger_name, {"endpoints": url, "spool": str(spool_dir)})
        )
        handler = _log(logger_name, 1000)
        assert handler.flush(30)
        docs = drain_amqp(rabbitmq, queue_name, 1000)
        assert list(range(1000)) == seqs(docs)
        assert all(record_id(d) == d["_mid"] for d in docs)
        assert docs[0]["message"] == "record 0"
        assert handler.stats()["confirmed"] == 1000

    def test_one_stomp_endpoint_rabbitmq(
        self, rabbitmq: RabbitMQ, queue_name: str, logger_name: str, spool_dir: Path
    ) -> None:
        """dictConfig with one STOMP URL on RabbitMQ: every record arrives once, in order."""
        url = stomp_url(rabbitmq, queue_name)
        logging.config.dictConfig(
            _dict_config(logger_name, {"endpoints": [url], "spool": str(spool_dir)})
        )
        handler = _log(logger_name, 1000)
        assert handler.flush(30)
        docs = drain_amqp(rabbitmq, queue_name, 1000)
        assert list(range(1000)) == seqs(docs)

    def test_one_stomp_endpoint_activemq(
        self, activemq: ActiveMQ, queue_name: str, logger_name: str, spool_dir: Path
    ) -> None:
        """dictConfig with one STOMP URL on ActiveMQ: every record arrives once, in order, with
        its record id in the mqlogging-id header."""
        url = stomp_url(activemq, queue_name)
        logging.config.dictConfig(
            _dict_config(logger_name, {"endpoints": url, "spool": str(spool_dir)})
        )
        handler = _log(logger_name, 1000)
        assert handler.flush(30)
        docs = drain_stomp(url, 1000)
        assert list(range(1000)) == seqs(docs)
        assert all(record_id(d) == d["_mid"] for d in docs)

    @pytest.mark.parametrize("strategy", ["failover", "roundrobin", "all"])
    def test_two_endpoints(
        self,
        strategy: str,
        rabbitmq: RabbitMQ,
        activemq: ActiveMQ,
        queue_name: str,
        logger_name: str,
        spool_dir: Path,
    ) -> None:
        """Two endpoints (RabbitMQ AMQP + ActiveMQ STOMP): failover sends everything to the
        first, roundrobin splits batches between both (each in order, together complete),
        all sends every record to both."""
        first, second = amqp_url(rabbitmq, queue_name), stomp_url(activemq, queue_name)
        n = 2000
        logging.config.dictConfig(
            _dict_config(
                logger_name,
                {
                    "endpoints": [first, second],
                    "strategy": strategy,
                    "batch_size": 100,
                    "spool": str(spool_dir),
                },
            )
        )
        logger = logging.getLogger(logger_name)
        handler = logger.handlers[0]
        assert isinstance(handler, MQHandler)
        for i in range(n):
            logger.info("record %d", i, extra={"seq": i})
            if i % 100 == 99:
                assert handler.flush(30)  # many batches, so roundrobin has something to split
        assert handler.flush(30)
        per_endpoint = [e["confirmed"] for e in handler.stats()["endpoints"].values()]
        expect_first, expect_second = per_endpoint
        a = seqs(drain_amqp(rabbitmq, queue_name, expect_first))
        b = seqs(drain_stomp(second, expect_second)) if expect_second else []
        assert a == sorted(a)
        assert b == sorted(b)
        if strategy == "failover":
            assert (list(range(n)), []) == (a, b)
        elif strategy == "roundrobin":
            assert list(range(n)) == sorted(a + b)
            assert a
            assert b
        else:
            assert (list(range(n)), list(range(n))) == (a, b)


class TestConfigFiles:
    def _load(self, path: Path, url: str, spool: Path, logger_name: str) -> dict[str, Any]:
        text = path.read_text()
        if path.suffix == ".json":
            config: dict[str, Any] = json.loads(text)
        else:
            config = yaml.safe_load(text)
        handler = config["handlers"]["mq"]
        handler["endpoints"] = [url]
        handler["spool"] = str(spool)
        config["loggers"] = {logger_name: {"handlers": ["mq"], "level": "INFO", "propagate": False}}
        config["root"] = {"handlers": [], "level": "WARNING"}
        return config

    @pytest.mark.parametrize("name", ["logging.yaml", "logging.json"])
    def test_example_file(
        self,
        name: str,
        rabbitmq: RabbitMQ,
        queue_name: str,
        logger_name: str,
        spool_dir: Path,
    ) -> None:
        """The shipped examples/logging.{yaml,json} load into dictConfig (endpoint swapped
        for the test broker) and deliver every record, with the example's static fields."""
        url = amqp_url(rabbitmq, queue_name)
        logging.config.dictConfig(self._load(EXAMPLES / name, url, spool_dir, logger_name))
        handler = _log(logger_name, 500)
        assert handler.flush(30)
        docs = drain_amqp(rabbitmq, queue_name, 500)
        assert list(range(500)) == seqs(docs)
        assert docs[0]["service"]["name"] == "billing"

    def test_django_style_logging_dict(
        self, rabbitmq: RabbitMQ, queue_name: str, spool_dir: Path
    ) -> None:
        """A Django settings.LOGGING dict (formatters with '()', filters, a 'django' logger,
        disable_existing_loggers False) configures the handler with a logstash-schema
        JsonFormatter; every record arrives in that schema."""
        logger_name = f"django.{queue_name}"
        logging_dict = {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"require_info": {"()": "logging.Filter", "name": "django"}},
            "formatters": {
                "json": {
                    "()": "mqlogging.JsonFormatter",
                    "schema": "logstash",
                    "static_fields": {"service": "shop"},
                },
            },
            "handlers": {
                "mq": {
                    "class": "mqlogging.MQHandler",
                    "level": "INFO",
                    "formatter": "json",
                    "filters": ["require_info"],
                    "endpoints": [amqp_url(rabbitmq, queue_name)],
                    "spool": str(spool_dir),
                    "close_timeout": 10,
                },
            },
            "loggers": {
                logger_name: {"handlers": ["mq"], "level": "INFO", "propagate": False},
            },
        }
        logging.config.dictConfig(logging_dict)
        try:
            logger = logging.getLogger(logger_name)
            for i in range(300):
                logger.info("request %d", i, extra={"seq": i})
            logger.debug("not sent")
            handler = logger.handlers[0]
            assert isinstance(handler, MQHandler)
            assert handler.flush(30)
            docs = drain_amqp(rabbitmq, queue_name, 300)
            assert list(range(300)) == seqs(docs)
            assert all(d["@version"] == 1 for d in docs)
            assert all(d["id"] == d["_mid"] for d in docs)
        finally:
            _close(logger_name)


class TestValidation:
    def test_bad_url_in_dictconfig_is_a_valueerror_with_our_message(self, tmp_path: Path) -> None:
        """A bad endpoint fails at configuration time: dictConfig raises ValueError caused by
        our one-line ConfigurationError, and the password is not in it."""
        config = _dict_config(
            "cfg.bad", {"endpoints": f"amqp://u:{SECRET}@host:99999/", "spool": str(tmp_path)}
        )
        with pytest.raises(ValueError, match="mq") as info:
            logging.config.dictConfig(config)
        cause = info.value.__cause__
        assert isinstance(cause, mqlogging.ConfigurationError)
        assert "99999" in str(cause)
        assert "\n" not in str(cause)
        assert SECRET not in str(cause)
        assert SECRET not in str(info.value)

    @pytest.mark.parametrize(
        ("kwargs", "needle"),
        [
            ({"strategy": "random"}, "strategy"),
            ({"overflow": "explode"}, "overflow"),
            ({"durability": "disk"}, "durability"),
            ({"batch_size": 0}, "batch_size"),
            ({"queue_size": 1.5}, "queue_size"),
            ({"flush_interval": "soon"}, "flush_interval"),
            ({"spool": False, "durability": "spool"}, "durability"),
            ({"spool_max_bytes": "lots"}, "max_bytes"),
            ({"schema": "xml"}, "schema"),
        ],
    )
    def test_bad_option(self, kwargs: dict[str, Any], needle: str, tmp_path: Path) -> None:
        """Every option is validated in __init__, with a one-line message naming it."""
        kwargs.setdefault("spool", str(tmp_path))
        with pytest.raises(mqlogging.ConfigurationError) as info:
            MQHandler("amqp://127.0.0.1/", **kwargs)
        assert needle in str(info.value)
        assert "\n" not in str(info.value)

    def test_non_json_formatter_is_refused(self, tmp_path: Path) -> None:
        """A plain logging.Formatter cannot produce the wire format: setFormatter says what to
        use instead; a JsonFormatter is accepted."""
        handler = MQHandler("amqp://127.0.0.1/", spool=str(tmp_path))
        try:
            with pytest.raises(mqlogging.ConfigurationError, match="JsonFormatter"):
                handler.setFormatter(logging.Formatter("%(message)s"))
            from mqlogging.formatting import JsonFormatter

            handler.setFormatter(JsonFormatter(schema="flat"))
            assert handler.formatter is not None
        finally:
            handler.close()

    def test_repr_and_stats_hide_password(self, tmp_path: Path) -> None:
        """The password appears neither in repr() nor in stats()."""
        handler = MQHandler(f"amqp://user:{SECRET}@127.0.0.1:5999/", spool=str(tmp_path))
        try:
            assert SECRET not in repr(handler)
            assert SECRET not in json.dumps(handler.stats())
            assert "***" in repr(handler)
        finally:
            handler.close()

    def test_default_spool_under_state_dir(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without spool=, the spool lives under $XDG_STATE_HOME/mqlogging/spool/<id>, the same
        directory for the same endpoints and a different one for others."""
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
        a = MQHandler("amqp://127.0.0.1/")
        b = MQHandler("amqp://127.0.0.1/")
        c = MQHandler("amqp://127.0.0.2/")
        try:
            dirs = [h.config.spool_dir for h in (a, b, c)]
            assert dirs[0] == dirs[1] != dirs[2]
            assert str(dirs[0]).startswith(str(tmp_path / "mqlogging" / "spool"))
        finally:
            for h in (a, b, c):
                h.close()
