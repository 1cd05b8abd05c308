"""Collector configuration: every error class is one line, ``--check`` exits 2 on errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.collector import REPO
from mqlogging import cli
from mqlogging.collector.config import (
    ElasticsearchSinkConfig,
    FileSinkConfig,
    LogstashSinkConfig,
    load_config,
    parse_config,
)
from mqlogging.errors import ConfigurationError

GOOD = """
[collector]
shutdown_timeout = 5

[pipeline]
batch_max_count = 500

[[sources]]
url = "amqp://guest:secret@mq1,mq2:5673/?queue=logs"

[[sources]]
url = "local:///tmp"
name = "spool"

[[sinks]]
type = "elasticsearch"
hosts = ["http://127.0.0.1:9200"]

[[sinks]]
type = "logstash"
url = "tcp://127.0.0.1:5000"

[dead_letter]
url = "local:///tmp/dead"

[http]
listen = "127.0.0.1:0"
"""


def _check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "collector.toml"
    path.write_text(text)
    code = cli.main(["collect", "--config", str(path), "--check"])
    captured = capsys.readouterr()
    return code, captured.err


class TestValid:
    def test_good_file_checks_ok(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A valid file passes ``--check`` with exit 0; the summary redacts the password."""
        path = tmp_path / "c.toml"
        path.write_text(GOOD)
        assert cli.main(["collect", "--config", str(path), "--check"]) == 0
        out = capsys.readouterr().out
        assert "OK" in out
        assert "secret" not in out
        assert "guest:***@" in out

    def test_values_and_defaults(self, tmp_path: Path) -> None:
        """Tables become frozen dataclasses with the file's values and documented defaults."""
        path = tmp_path / "c.toml"
        path.write_text(GOOD)
        config = load_config(path, env={})
        assert config.pipeline.batch_max_count == 500
        assert config.collector.shutdown_timeout == 5.0
        assert len(config.sources[0].url.hosts) == 2
        es = config.sinks[0]
        assert isinstance(es, ElasticsearchSinkConfig)
        assert es.mode == "data_stream"
        assert isinstance(config.sinks[1], LogstashSinkConfig)
        assert config.sinks[1].protocol == "tcp"
        assert config.dead_letter is not None

    def test_env_overrides_secrets_and_values(self, tmp_path: Path) -> None:
        """``MQLOGGING_ES_*`` set ES credentials; ``MQLOGGING_<TABLE>_<KEY>`` and
        ``MQLOGGING_SINKS_<N>_<KEY>`` override file values (converted to the key's type)."""
        path = tmp_path / "c.toml"
        path.write_text(GOOD)
        env = {
            "MQLOGGING_ES_API_KEY": "abc123",
            "MQLOGGING_PIPELINE_BATCH_MAX_COUNT": "42",
            "MQLOGGING_PIPELINE_ENRICH": "false",
            "MQLOGGING_SINKS_0_DATASET": "fromenv",
        }
        config = load_config(path, env=env)
        es = config.sinks[0]
        assert isinstance(es, ElasticsearchSinkConfig)
        assert es.api_key is not None
        assert es.api_key.reveal() == "abc123"
        assert "abc123" not in repr(es)
        assert config.pipeline.batch_max_count == 42
        assert config.pipeline.enrich is False
        assert es.dataset == "fromenv"

    def test_default_dead_letter_spool_under_state_dir(self, tmp_path: Path) -> None:
        """Without ``[dead_letter]``, dead letters go to ``<state_dir>/dead-letters``, a spool
        that refuses rather than drops when full; ``state_dir`` may come from the environment;
        the ``--check`` summary names the target."""
        config = parse_config(BASE, env={"MQLOGGING_COLLECTOR_STATE_DIR": str(tmp_path)})
        assert config.dead_letter is None
        target = config.dead_letter_target.url
        assert target.transport == "local"
        assert str(tmp_path / "dead-letters") == target.path
        assert target.spool_options["overflow"] == "refuse"
        assert f"dead letters -> {target.redacted()}" in config.summary()

    def test_source_from_environment_only(self) -> None:
        """A source can come entirely from the environment (``MQLOGGING_SOURCES_0_URL``)."""
        config = parse_config(
            {"sinks": [{"type": "null"}]},
            env={"MQLOGGING_SOURCES_0_URL": "stomp://h:61613/queue/x"},
        )
        assert config.sources[0].url.transport == "stomp"

    def test_stdout_and_file_sinks(self, tmp_path: Path) -> None:
        """``type = "stdout"`` needs no path; a file sink's directory must exist."""
        config = parse_config(
            {
                "sources": [{"url": "local:///tmp"}],
                "sinks": [{"type": "stdout"}, {"type": "file", "path": str(tmp_path / "x.jsonl")}],
            },
            env={},
        )
        assert all(isinstance(s, FileSinkConfig) for s in config.sinks)


BASE: dict[str, Any] = {"sources": [{"url": "amqp://h/?queue=q"}], "sinks": [{"type": "null"}]}

ERRORS = [
    (
        {"sources": [{"url": "amqp://h/?queue=q", "prefech": 5}]},
        "unknown key 'prefech' (did you mean 'prefetch'?",
    ),
    ({"pipline": {}}, "unknown key 'pipline' (did you mean 'pipeline'?"),
    ({"sources": [{"url": "amqq://h/"}]}, "unknown URL scheme 'amqq'"),
    ({"sources": [{"url": "amqp://h:99999/"}]}, "is not a number from 1 to 65535"),
    ({"sources": [{"url": "amqp://h/?exchnage=x"}]}, "did you mean 'exchange'?"),
    ({"sources": [{"url": "amqps://h/?ca_certs=/nonexistent/ca.pem"}]}, "no such file"),
    (
        {"sinks": [{"type": "elasticsearch", "ca_certs": "/nonexistent/ca.pem"}]},
        "ca_certs='/nonexistent/ca.pem': no such file",
    ),
    ({"sinks": [{"type": "elasticsearch", "hosts": ["ftp://x"]}]}, "is not an http(s) URL"),
    ({"sinks": [{"type": "elasticsaerch"}]}, "did you mean 'elasticsearch'?"),
    ({"sinks": [{"type": "logstash", "url": "udp://x:1"}]}, "use http(s)://host:port/"),
    ({"pipeline": {"batch_max_count": 0}}, "batch_max_count must be a positive integer"),
    ({"pipeline": {"batch_max_wait": "soon"}}, "batch_max_wait must be a number, got 'soon'"),
    ({"pipeline": {"enrich": "yes"}}, "enrich must be true or false"),
    ({"http": {"listen": "nohost"}}, "must be host:port"),
    ({"http": {"listen": "0.0.0.0:\u00b2"}}, "must be host:port"),  # isdigit, int() raised
    ({"sources": [{"url": "amqp://h:56_72/"}]}, "is not a number from 1 to 65535"),  # was 5672
    ({"sources": [{"url": "amqp://[::1/"}]}, "not a valid URL (Invalid IPv6 URL)"),
    ({"sinks": [{"type": "logstash", "url": "http://h:None/"}]}, "is not a valid URL"),
    ({"sources": []}, "no [[sources]] configured"),
    ({"sinks": {"type": "null"}}, "must be an array of tables: write [[sinks]]"),
    ({"sinks": [{"type": "elasticsearch", "username": "u"}]}, "username and password go together"),
    ({"sinks": [{"type": "elasticsearch", "dataset": "Bad-Name"}]}, "dataset='Bad-Name'"),
    ({"sinks": [{"type": "file", "path": "/nonexistent/dir/x.jsonl"}]}, "does not exist"),
    ({"pipeline": {"max_inflight_bytes": 0}}, "max_inflight_bytes must be a positive integer"),
    # The source's prefetch within the transport's bounds, at load (not at the worker's start).
    (
        {"sources": [{"url": "kafka://k1/t", "prefetch": 2_000_000}]},
        "prefetch must be at most 1000000 records for Kafka",
    ),
    (
        {"sinks": [{"type": "elasticsearch", "index_window_days_back": 0}]},
        "index_window_days_back must be a positive number",
    ),
]


class TestErrors:
    @pytest.mark.parametrize(("patch", "expected"), ERRORS)
    def test_one_clear_line(self, patch: dict[str, Any], expected: str) -> None:
        """Each kind of mistake is a ConfigurationError of one line containing the fix."""
        data = {**BASE, **patch}
        with pytest.raises(ConfigurationError) as info:
            parse_config(data, env={})
        text = str(info.value)
        assert expected in text
        assert "\n" not in text

    def test_password_never_in_error(self) -> None:
        """A bad option on a URL with a password shows the URL redacted."""
        with pytest.raises(ConfigurationError) as info:
            parse_config({**BASE, "sources": [{"url": "amqp://u:hunter2@h/?bogus=1"}]}, env={})
        assert "hunter2" not in str(info.value)

    def test_check_exits_2_with_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``mqlogging collect --check`` on a bad file: exit 2, one line on stderr, naming the
        file and the place."""
        code, err = _check(tmp_path, GOOD.replace("batch_max_count", "batch_max_cnt"), capsys)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1
        assert "collector.toml: [pipeline]: unknown key 'batch_max_cnt'" in lines[0]
        assert "did you mean 'batch_max_count'?" in lines[0]

    def test_bad_toml_and_missing_file(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Invalid TOML and a missing file are one-line errors with exit 2 as well."""
        code, err = _check(tmp_path, "[pipeline\n", capsys)
        assert code == 2
        assert "not valid TOML" in err
        assert cli.main(["collect", "--config", str(tmp_path / "none.toml"), "--check"]) == 2
        assert "no such configuration file" in capsys.readouterr().err

    def test_python_m_entry_point_exit_code(self, tmp_path: Path) -> None:
        """``python -m mqlogging.collector --check`` exits 2 on an invalid file (subprocess)."""
        path = tmp_path / "c.toml"
        path.write_text(GOOD.replace('type = "logstash"', 'type = "logstsh"'))
        proc = subprocess.run(
            [sys.executable, "-m", "mqlogging.collector", "--config", str(path), "--check"],
            capture_output=True,
            text=True,
            cwd=str(REPO),
            timeout=60,
            check=False,
        )
        assert proc.returncode == 2
        assert "did you mean 'logstash'?" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "name", ["collector-elasticsearch.toml", "collector-logstash.toml", "collector-local.toml"]
)
def test_examples_are_valid(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped example configs validate once their site paths exist (certificate and log
    paths are pointed at temporary files; MQ_PASSWORD is set as the examples expect)."""
    text = (REPO / "examples" / name).read_text()
    pem = tmp_path / "x.pem"
    pem.write_text("dummy")
    for path in ("/etc/mqlogging/ca.pem", "/etc/mqlogging/es-ca.pem"):
        text = text.replace(path, str(pem))
    text = text.replace("/var/log/mqlogging", str(tmp_path))
    monkeypatch.setenv("MQ_PASSWORD", "from-env")
    config_path = tmp_path / name
    config_path.write_text(text)
    config = load_config(config_path)
    assert config.sources
    assert config.sinks
