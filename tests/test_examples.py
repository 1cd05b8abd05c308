"""Every file in ``examples/`` runs as documented, against the private brokers of the fixtures.

Examples read the broker URL from ``MQLOGGING_URL``; the tests point it at a per-test queue and
count what arrives there: every record once.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.brokers import RabbitMQ
from harness.drain import amqp_url, drain_amqp
from harness.helpers import free_port, wait_until
from mqlogging.collector.config import load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent


def _env(url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "MQLOGGING_URL": url,
        "MQLOGGING_SPOOL": str(tmp_path / "spool"),
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def _run(args: list[str], env: dict[str, str], timeout: float = 90) -> str:
    result = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _ids_unique(docs: list[dict[str, Any]]) -> None:
    ids = [d["event"]["id"] for d in docs]
    assert len(ids) == len(set(ids))


@pytest.fixture
def root_logging() -> Iterator[None]:
    """dictConfig replaces the root logger's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize("name", ["logging.yaml", "logging.json"])
def test_dictconfig_files(
    name: str, rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path, root_logging: None
) -> None:
    """The YAML and JSON dictConfig examples load as they are (only the broker URL and spool
    directory swapped for the test's) and ship records with their static fields."""
    text = (EXAMPLES / name).read_text()
    config = yaml.safe_load(text) if name.endswith(".yaml") else json.loads(text)
    config["handlers"]["mq"]["endpoints"] = [amqp_url(rabbitmq, queue_name)]
    config["handlers"]["mq"]["spool"] = str(tmp_path / "spool")
    logging.config.dictConfig(config)
    logger = logging.getLogger(f"example.{name}")
    for i in range(20):
        logger.info("record %d", i, extra={"seq": i})
    logging.getLogger().handlers[-1].close()
    docs = drain_amqp(rabbitmq, queue_name, 20)
    assert list(range(20)) == [d["seq"] for d in docs]
    assert {("billing", "production")} == {
        (d["service"]["name"], d["service"]["environment"]) for d in docs
    }


def test_django_settings(rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path) -> None:
    """Django (installed in the dev extra) applies the example's LOGGING: the app's record and
    Django's request error arrive, once each."""
    env = _env(amqp_url(rabbitmq, queue_name), tmp_path)
    out = _run([sys.executable, str(EXAMPLES / "django_settings.py")], env)
    assert "sent 2 records" in out
    docs = drain_amqp(rabbitmq, queue_name, 2)
    assert [(d["log"]["logger"], d["log"]["level"]) for d in docs] == [
        ("myapp.views", "info"),
        ("django.request", "error"),
    ]
    assert docs[0]["order_id"] == 42
    assert {"mysite"} == {d["service"]["name"] for d in docs}


FLASK_DRIVER = """
import logging, sys
sys.path.insert(0, "examples")
import flask_app
client = flask_app.app.test_client()
print(client.get("/").status_code, client.get("/fail").status_code)
logging.shutdown()
"""


def test_flask_app(rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path) -> None:
    """Flask's test client: the view's record carries the request fields bound for the
    request; the unhandled exception arrives as an ERROR record with its traceback."""
    env = _env(amqp_url(rabbitmq, queue_name), tmp_path)
    assert _run([sys.executable, "-c", FLASK_DRIVER], env).split() == ["200", "500"]
    docs = drain_amqp(rabbitmq, queue_name, 2)
    assert len(docs) == 2
    home, error = docs
    assert home["message"] == "home page served"
    assert (home["http"]["request"]["method"], home["url"]["path"]) == ("GET", "/")
    assert error["log"]["level"] == "error"
    assert error["url"]["path"] == "/fail"
    assert error["error"]["type"] == "RuntimeError"
    assert "payment backend unavailable" in error["error"]["stack_trace"]


def test_worker_pool(rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path) -> None:
    """Four forked workers and the parent: every task's record arrives exactly once."""
    env = _env(amqp_url(rabbitmq, queue_name), tmp_path)
    out = _run([sys.executable, str(EXAMPLES / "worker_pool.py"), "300"], env)
    assert "logged 302 records" in out
    docs = drain_amqp(rabbitmq, queue_name, 302)
    assert len(docs) == 302
    _ids_unique(docs)
    tasks = Counter(d["task"] for d in docs if "task" in d)
    assert set(tasks) == set(range(300))
    assert set(tasks.values()) == {1}
    assert len({d["process"]["pid"] for d in docs}) > 1


def test_structlog_app(rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path) -> None:
    """structlog, directly and through the stdlib integration: three records, each with its
    event dict's keys as fields."""
    env = _env(amqp_url(rabbitmq, queue_name), tmp_path)
    out = _run([sys.executable, str(EXAMPLES / "structlog_app.py")], env)
    assert "logged 3 records" in out
    docs = {d["message"]: d for d in drain_amqp(rabbitmq, queue_name, 3)}
    assert tuple(docs["order placed"][k] for k in ("order_id", "tenant", "amount")) == (
        42,
        "acme",
        19.99,
    )
    assert docs["payment failed"]["error"]["type"] == "TimeoutError"
    assert docs["order 42 shipped"]["carrier"] == "ups"


def test_gunicorn_logconfig_dict(rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path) -> None:
    """gunicorn with the example config and the Flask app: gunicorn's own records, one access
    record per request and the app's records arrive once each, from master and workers."""
    port = free_port()
    env = _env(amqp_url(rabbitmq, queue_name), tmp_path, GUNICORN_BIND=f"127.0.0.1:{port}")
    proc = subprocess.Popen(
        [str(BIN / "gunicorn"), "-c", str(EXAMPLES / "gunicorn_conf.py"),
         "--chdir", str(EXAMPLES), "flask_app:app"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def get(path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:
                return 0

        wait_until(lambda: get("/") == 200, timeout=30, message="gunicorn serving")
        assert get("/fail") == 500
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    docs = drain_amqp(rabbitmq, queue_name, 8)
    _ids_unique(docs)
    by_logger = Counter(d["log"]["logger"] for d in docs)
    messages = [d["message"] for d in docs]
    assert by_logger["gunicorn.access"] == 2
    assert messages.count("home page served") == 1
    assert messages.count("Exception on /fail [GET]") == 1
    assert any(m.startswith("Listening at") for m in messages)
    assert sum(m.startswith("Booting worker") for m in messages) == 2
    assert any(m.startswith("Shutting down") for m in messages)
    assert {"shop-web"} == {d["service"]["name"] for d in docs}


def test_offline_node(rabbitmq: RabbitMQ, queue_name: str, tmp_path: Path) -> None:
    """The offline node logs to a local:// spool with no broker, then `mqlogging spool replay`
    ships every record once, in order, and empties the spool."""
    spool = tmp_path / "node-spool"
    env = _env(amqp_url(rabbitmq, queue_name), tmp_path, RECORDS="120")
    out = _run([sys.executable, str(EXAMPLES / "offline_node.py"), str(spool)], env)
    assert "120" in out
    docs = drain_amqp(rabbitmq, queue_name, 120)
    assert list(range(120)) == [d["step"] for d in docs]
    _ids_unique(docs)
    assert not list(spool.glob("*.jsonl"))
    assert not list(spool.glob("*.open"))


def test_what_broke(tmp_path: Path) -> None:
    """Records logged in spans carry trace ids and templates; `mqlogging errors` prints the
    groups: 10 declined cards (one template), 4 slow gateways, nothing at INFO."""
    path = tmp_path / "app.jsonl"
    out = _run([sys.executable, str(EXAMPLES / "what_broke.py"), str(path)], _env("", tmp_path))
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(docs) == 30
    assert all(len(d["trace"]["id"]) == 32 and len(d["span"]["id"]) == 16 for d in docs)
    assert docs[2]["log"]["template"] == "card declined for order %d"
    lines = out.splitlines()
    assert any(" 10 " in line and "card declined for order %d" in line for line in lines)
    assert any(" 4 " in line and "slow payment gateway: %d ms" in line for line in lines)
    assert "charged order" not in out


def test_docker_compose_file() -> None:
    """docker-compose.yml parses and wires RabbitMQ (management + STOMP), Elasticsearch,
    Kibana and the collector, whose config validates with the collector's own loader."""
    compose = yaml.safe_load((EXAMPLES / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"rabbitmq", "elasticsearch", "kibana", "collector"}
    assert "management" in services["rabbitmq"]["image"]
    assert "rabbitmq_stomp" in services["rabbitmq"]["command"]
    ports = {p.split(":")[0] for s in services.values() for p in s.get("ports", [])}
    assert {"5672", "61613", "15672", "9200", "5601", "9108"} <= ports
    for service in services.values():
        assert ":" in service["image"]
        for dep in service.get("depends_on", {}):
            assert dep in services
    for volume in services["collector"]["volumes"]:
        name = volume.split(":")[0]
        assert name.startswith("..") or name in compose["volumes"]
    assert "collector-compose.toml" in services["collector"]["command"]
    config = load_config(str(EXAMPLES / "collector-compose.toml"))
    assert [s.url.transport for s in config.sources] == ["amqp"]


def test_every_example_says_how_to_run_it() -> None:
    """Each example file of this issue starts with a comment that tells how to run or use it."""
    names = [
        "django_settings.py", "flask_app.py", "worker_pool.py", "gunicorn_conf.py",
        "offline_node.py", "docker-compose.yml", "collector-compose.toml", "logging.yaml",
        "what_broke.py",
        "structlog_app.py",
    ]  # fmt: skip
    for name in names:
        head = (EXAMPLES / name).read_text().splitlines()[:6]
        assert head[0].startswith("#"), name
        assert any(w in " ".join(head) for w in ("Run:", "Use:", "Load it", "Try:")), name
