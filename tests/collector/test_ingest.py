"""The HTTPS ingest source (``[[sources]] type = "http"``) in a real collector process, with a
``broker`` sink publishing with confirms to the private RabbitMQ, fed by the real handler over
``https://`` (token or RFC 3820 proxy certificate) and by raw httpx requests for the hostile
cases. The PKI (CA, user, proxy, expired, stranger) is made in the session with
``cryptography`` (:mod:`harness.pilot_pki`)."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.brokers import reserve_port
from harness.collector import CollectorProcess, amqp_queue_url, write_config
from harness.drain import drain_amqp, seqs
from harness.helpers import unique_name, wait_until
from harness.pilot_pki import USER_DN, PilotPKI, make_pilot_pki
from mqlogging import MQHandler

TOKEN = "pilot-token-0123456789abcdef"


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> PilotPKI:
    """CA, ingest server certificate, user, proxy, expired and stranger certificates."""
    return make_pilot_pki(tmp_path_factory.mktemp("grid"))


class Ingest:
    """A collector process whose only source is the HTTPS ingest."""

    def __init__(self, proc: CollectorProcess, port: int, tokens: Path, grid: PilotPKI) -> None:
        self.proc = proc
        self.url = f"https://127.0.0.1:{port}/ingest"
        self.tokens = tokens
        self.grid = grid

    def post(self, body: bytes, *, token: str | None = TOKEN, cert: str | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:  # fmt: skip
        ctx = ssl.create_default_context(cafile=self.grid.ca)
        if cert is not None:
            ctx.load_cert_chain(cert, None if cert == self.grid.proxy else cert[:-4] + ".key")
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        with httpx.Client(verify=ctx, timeout=30.0) as client:
            return client.post(self.url, content=body, headers=all_headers)

    def handler_url(self, **options: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"ca_certs": self.grid.ca, **options}.items())
        return f"{self.url}?{query}"


@pytest.fixture
def ingest(tmp_path: Path, grid: PilotPKI, rabbitmq: Any, queue_name: str) -> Iterator[Ingest]:
    """A collector: HTTPS ingest (tokens file, client certificates with proxies) -> RabbitMQ
    queue ``queue_name`` with confirms; ``timeout = 2`` so a broker outage answers 503 fast."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# name:token\npilots:{TOKEN}\nother:another-token-0123456789\n")
    port = reserve_port()
    http_port = reserve_port({port})
    config = write_config(
        tmp_path / "collector.toml",
        sources=[
            {
                "type": "http",
                "listen": f"127.0.0.1:{port}",
                "certfile": grid.server,
                "keyfile": grid.server_key,
                "client_ca": grid.ca,
                "allow_proxy_certs": True,
                "tokens_file": str(tokens),
                "timeout": 2.0,
                "retry_after": 1,
                "max_body_bytes": 256 * 1024,
            }
        ],
        sinks=[{"type": "broker", "url": amqp_queue_url(rabbitmq, queue_name)}],
        pipeline={"batch_max_wait": 0.05, "retry_initial": 0.1, "retry_max": 0.5},
        http={"listen": f"127.0.0.1:{http_port}"},
    )
    proc = CollectorProcess(config, http_port, tmp_path / "collector.log")
    try:
        proc.wait_http()
        ready = Ingest(proc, port, tokens, grid)
        wait_until(lambda: _answers(ready), timeout=15, message="ingest listening")
        yield ready
    finally:
        proc.close()


def _answers(ingest: Ingest) -> bool:
    try:
        return ingest.post(b"", token=None).status_code == 401
    except httpx.TransportError:
        return False


def _log(url: str, count: int, spool: Path, first: int = 0) -> None:
    """Log ``count`` records with ``extra={"seq": i}`` through an MQHandler to ``url``."""
    logger = logging.getLogger(unique_name("ingest"))
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = MQHandler(url, spool=str(spool), retry_max=0.5,
                        close_timeout=60.0)  # fmt: skip
    logger.addHandler(handler)
    try:
        for i in range(first, first + count):
            logger.info("pilot line %d", i, extra={"seq": i})
    finally:
        logger.removeHandler(handler)
        handler.close()


def _ids(docs: list[dict[str, Any]]) -> list[str]:
    return [d["_mid"] for d in docs]


def test_pilots_with_token_and_proxy_arrive_once_with_identity(
    ingest: Ingest, rabbitmq: Any, queue_name: str, tmp_path: Path
) -> None:
    """Records logged over https:// with a bearer token and with an RFC 3820 proxy
    certificate each reach the broker queue exactly once, stamped with the identity (token
    name; the end-entity subject, the proxy CN stripped); a client's own
    ``mqlogging.ingest`` cannot spoof it and its record id is kept."""
    (tmp_path / "pilot.token").write_text(TOKEN + "\n")
    _log(ingest.handler_url(token_file=str(tmp_path / "pilot.token")), 300, tmp_path / "s1")
    _log(ingest.handler_url(certfile=ingest.grid.proxy), 200, tmp_path / "s2", first=300)
    spoof = {"message": "hi", "event": {"id": "client-id-1"},
             "mqlogging": {"schema": "ecs", "ingest": {"identity": "CN=root"}}}  # fmt: skip
    assert ingest.post(json.dumps(spoof).encode()).status_code == 200

    docs = drain_amqp(rabbitmq, queue_name, 501)
    assert sorted(seqs([d for d in docs if "seq" in d])) == list(range(500))
    assert len(set(_ids(docs))) == len(docs) == 501
    who = {d["seq"]: d["mqlogging"]["ingest"] for d in docs if "seq" in d}
    assert who[0] == {"identity": "token:pilots", "auth": "token"}
    assert who[300] == {"identity": USER_DN, "auth": "x509"}
    spoofed = next(d for d in docs if d.get("message") == "hi")
    assert spoofed["mqlogging"]["ingest"]["identity"] == "token:pilots"
    assert spoofed["_mid"] == "client-id-1"
