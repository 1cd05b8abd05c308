"""The README's Monitoring, OpenTelemetry and structlog snippets (``~~~`` fences) work as
written: each TOML snippet is a valid collector config, the structlog snippet delivers its
record as fields (issues #15, #16)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import structlog

from harness.drain import amqp_url, drain_amqp
from mqlogging.collector.config import load_config
from mqlogging.collector.sinks import ElasticsearchSinkConfig, OtlpSinkConfig

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _tilde_blocks(lang: str) -> list[str]:
    return re.findall(rf"~~~{lang}\n(.*?)~~~", README, flags=re.S)


def test_toml_snippets_are_valid_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitoring collector config and the OTLP sink table load (a source is added to the
    sink-only snippet), with the sinks the text describes."""
    monkeypatch.setenv("MQ_PASSWORD", "x")  # the source URL's password_env
    monitoring, otlp = _tilde_blocks("toml")
    path = tmp_path / "monitoring.toml"
    path.write_text(monitoring)
    config = load_config(path, env={"MQ_PASSWORD": "x", "MQLOGGING_ES_API_KEY": "k"})
    (es,) = config.sinks
    assert isinstance(es, ElasticsearchSinkConfig)
    assert es.dataset == "monitoring"
    path = tmp_path / "otlp.toml"
    path.write_text('[[sources]]\nurl = "local:///tmp/q"\n' + otlp)
    (sink,) = load_config(path, env={"MQLOGGING_OTLP_HEADERS": "Authorization=x"}).sinks
    assert isinstance(sink, OtlpSinkConfig)
    assert sink.endpoint == "https://otel-collector:4318/v1/logs"


def test_structlog_snippet_runs(rabbitmq: Any, queue_name: str) -> None:
    """The structlog snippet, pointed at the private broker, delivers its record with the
    event dict's keys as fields."""
    (code,) = _tilde_blocks("python")
    code = code.replace("amqp://localhost/?queue=logs", amqp_url(rabbitmq, queue_name))
    namespace: dict[str, Any] = {}
    try:
        exec(compile(code, "README.md", "exec"), namespace)
        (doc,) = drain_amqp(rabbitmq, queue_name, 1)
    finally:
        structlog.reset_defaults()
    assert (doc["message"], doc["order_id"], doc["amount"]) == ("order placed", 42, 19.99)
