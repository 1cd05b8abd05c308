"""The HTTPS ingest source (``[[sources]] type = "http"``) in a real collector process, with a
``broker`` sink publishing with confirms to the private RabbitMQ, fed by the real handler over
``https://`` (token or RFC 3820 proxy certificate) and by raw httpx requests for the hostile
cases. The PKI (CA, user, proxy, expired, stranger) is made in the session with
``cryptography`` (:mod:`harness.pilot_pki`)."""

from __future__ import annotations

import gzip
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
def ingest(
    request: pytest.FixtureRequest, tmp_path: Path, grid: PilotPKI, rabbitmq: Any, queue_name: str
) -> Iterator[Ingest]:
    """A collector: HTTPS ingest (tokens file, client certificates with proxies) -> RabbitMQ
    queue ``queue_name`` with confirms; ``timeout = 2`` so a broker outage answers 503 fast.
    A test changes source options with ``@pytest.mark.parametrize("ingest", [{...}],
    indirect=True)``."""
    overrides = getattr(request, "param", {})
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
                **overrides,
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


def _refused_tls(ingest: Ingest, **kwargs: Any) -> bool:
    """True if the TLS handshake (or the first read after it) fails."""
    try:
        ingest.post(b'{"m": 1}', **kwargs)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return True
    return False


def test_wrong_ca_expired_cert_and_revoked_token_are_refused(ingest: Ingest) -> None:
    """A certificate from another CA and an expired one fail the handshake; a token removed
    from the tokens file is refused (401) from the next request on, without a restart; no
    credentials at all is 401 with a Bearer challenge (counted in the metrics by status); a
    pilot trusting the wrong CA does not talk to the ingest at all."""
    assert _refused_tls(ingest, token=None, cert=ingest.grid.stranger)
    assert _refused_tls(ingest, token=None, cert=ingest.grid.expired)
    ok = ingest.post(b'{"m": 1}', token=None, cert=ingest.grid.user)
    assert ok.status_code == 200, ok.text

    anonymous = ingest.post(b'{"m": 1}', token=None)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert ingest.post(b'{"m": 1}').status_code == 200
    ingest.tokens.write_text("other:another-token-0123456789\n")  # pilots' token revoked
    assert ingest.post(b'{"m": 1}').status_code == 401
    assert ingest.post(b'{"m": 1}', token="another-token-0123456789").status_code == 200

    assert ingest.proc.metric("ingest_requests", status="401") >= 2  # counted, by status
    wrong_ca = ssl.create_default_context(cafile=ingest.grid.stranger)
    with pytest.raises(httpx.ConnectError), httpx.Client(verify=wrong_ca) as client:
        client.post(ingest.url, content=b"{}")


def test_bad_bodies_are_refused_without_harm(
    ingest: Ingest, rabbitmq: Any, queue_name: str
) -> None:
    """Oversized bodies and gzip bombs get 413 (the bomb is never inflated past the limit), a
    non-gzip body labelled gzip 400, an unknown encoding 415; invalid lines get 400 naming
    each line while the valid lines of the same request are handed on (and counted in
    ``accepted``); the server keeps serving throughout."""
    assert ingest.post(b'{"m": "' + b"x" * 300_000 + b'"}').status_code == 413
    bomb = gzip.compress(b"\n" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB of newlines
    assert len(bomb) < 256 * 1024
    assert ingest.post(bomb, headers={"Content-Encoding": "gzip"}).status_code == 413
    assert ingest.post(b"{}", headers={"Content-Encoding": "gzip"}).status_code == 400
    assert ingest.post(b"{}", headers={"Content-Encoding": "br"}).status_code == 415

    mixed = b'{"n": 1}\nnot json\n[1]\n{"n": 2}\n{"mqlogging": "mine"}\n'
    answer = ingest.post(mixed)
    assert answer.status_code == 400
    report = answer.json()
    assert report["accepted"] == 2
    assert [e["line"] for e in report["errors"]] == [2, 3, 5]
    as_array = ingest.post(gzip.compress(b'[{"n": 3}, {"n": 4}]'),
                           headers={"Content-Encoding": "gzip"})  # fmt: skip
    assert as_array.status_code == 200, as_array.text

    docs = drain_amqp(rabbitmq, queue_name, 4)
    assert sorted(d["n"] for d in docs) == [1, 2, 3, 4]
    assert ingest.proc.proc.poll() is None


def test_broker_down_behind_ingest_answers_503_then_delivers_everything_once(
    ingest: Ingest, rabbitmq: Any, queue_name: str, tmp_path: Path
) -> None:
    """With the broker behind the ingest stopped, a request gets 503 with Retry-After (never
    2xx: nothing was handed on); the handler keeps its records (retry, spool) and delivers
    them after the broker is back: every record in the queue, no duplicate id."""
    url = ingest.handler_url(certfile=ingest.grid.proxy)
    _log(url, 100, tmp_path / "before", first=0)  # declares the queue
    rabbitmq.stop()
    try:
        answer = ingest.post(b'{"m": "while down"}')
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "1"
        logger = logging.getLogger(unique_name("ingest"))
        logger.propagate = False
        handler = MQHandler(url, spool=str(tmp_path / "during"), retry_max=0.5,
                            close_timeout=60.0)  # fmt: skip
        logger.addHandler(handler)
        for i in range(100, 1100):
            logger.warning("pilot line %d", i, extra={"seq": i})
    finally:
        rabbitmq.start()
    handler.close()
    docs = drain_amqp(rabbitmq, queue_name, set(range(1100)))
    logged = [d for d in docs if "seq" in d]
    assert sorted(seqs(logged)) == list(range(1100))
    ids = _ids(logged)
    assert len(ids) == len(set(ids)), "a record was published twice"


def test_run_to_https_ships_a_pilot_bootstrap(
    ingest: Ingest, rabbitmq: Any, queue_name: str, tmp_path: Path
) -> None:
    """``mqlogging run --to https://...`` (what a pilot's bootstrap script runs) ships the
    command's lines through the ingest, authenticated by its proxy certificate."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run(
        [sys.executable, "-m", "mqlogging", "run", "--spool", str(tmp_path / "spool"),
         "--to", ingest.handler_url(certfile=ingest.grid.proxy),
         "--", "sh", "-c", "echo booted; echo matched a job"],
        capture_output=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    docs = drain_amqp(rabbitmq, queue_name, 3)
    assert {"booted", "matched a job"} <= {d["message"] for d in docs}
    assert {d["mqlogging"]["ingest"]["identity"] for d in docs} == {USER_DN}


def _stalled_upload(ingest: Ingest) -> ssl.SSLSocket:
    """An authenticated gzip upload that announces 200 000 bytes, sends 3 and goes silent (a
    pilot killed mid-request leaves such a half-open connection behind)."""
    import socket

    ctx = ssl.create_default_context(cafile=ingest.grid.ca)
    host, port = ingest.url.split("/")[2].split(":")
    sock = ctx.wrap_socket(socket.create_connection((host, int(port))), server_hostname=host)
    head = (
        f"POST /ingest HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Encoding: gzip\r\nContent-Length: 200000\r\n\r\n"
    )
    sock.sendall(head.encode() + b"\x1f\x8b\x08")
    return sock


@pytest.mark.parametrize(
    "ingest", [{"max_inflight_bytes": 512 * 1024, "body_timeout": 1.0}], indirect=True
)
def test_stalled_uploads_are_cut_off_and_do_not_lock_out_other_pilots(ingest: Ingest) -> None:
    """Uploads whose body stops arriving hold their reservation of ``max_inflight_bytes``
    only until ``body_timeout``: they get 408 and their connection is closed, and other
    pilots' requests are taken again (before, two stalled gzip uploads answered every later
    gzip request 429 until TCP gave up on them, hours later)."""
    stalled = [_stalled_upload(ingest), _stalled_upload(ingest)]
    gz = {"Content-Encoding": "gzip"}

    def taken() -> bool:
        return ingest.post(gzip.compress(b'{"m": 1}'), headers=gz).status_code == 200

    wait_until(taken, timeout=10, message="a gzip request taken while uploads are stalled")
    for sock in stalled:
        sock.settimeout(10)
        assert sock.recv(4096).startswith(b"HTTP/1.1 408"), "the stalled upload got no 408"
        sock.close()
