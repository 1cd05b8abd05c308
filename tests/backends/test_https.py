"""The ``https://`` endpoint (handler -> collector ingest) and the ingest source's config,
without brokers: the ingest runs in this process (plain HTTP on loopback, explicitly allowed)
and a thread plays the collector pipeline, acking what it fetches."""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.brokers import reserve_port
from harness.helpers import wait_until
from harness.pilot_pki import USER_DN, make_pilot_pki
from mqlogging._types import Message
from mqlogging.backends import open_producer
from mqlogging.backends.https import HTTPSEndpoint
from mqlogging.collector.ingest import HttpSourceConfig
from mqlogging.errors import ConfigurationError, ConnectError, NotConfirmed, PartlyRefused

TOKEN = "unit-token-0123456789abcdef"


class TestEndpoint:
    def test_plain_http_needs_an_explicit_option(self) -> None:
        """``http://`` is refused in one line naming the fix; ``allow_http=true`` allows it."""
        with pytest.raises(ConfigurationError, match="allow_http=true"):
            HTTPSEndpoint.from_url("http://127.0.0.1:8080/ingest")
        ep = HTTPSEndpoint.from_url("http://127.0.0.1:8080/ingest?allow_http=true")
        assert ep.path == "/ingest"
        assert ep.tls is None

    def test_token_is_never_shown(self, tmp_path: Path) -> None:
        """A token from ``token_file`` is read at once and appears in no repr, str or
        redacted URL; two token sources are refused."""
        (tmp_path / "t").write_text(TOKEN + "\n")
        ep = HTTPSEndpoint.from_url(f"https://c.example.org:8443/ingest?token_file={tmp_path}/t")
        assert ep.token is not None
        assert ep.token.reveal() == TOKEN
        for text in (repr(ep), str(ep), ep.redacted(), repr(ep.token)):
            assert TOKEN not in text
        assert ep.redacted() == "https://c.example.org:8443/ingest"
        with pytest.raises(ConfigurationError, match="only one of"):
            HTTPSEndpoint.from_url(f"https://c/ingest?token=x&token_file={tmp_path}/t")

    @pytest.mark.parametrize("userinfo", ["pilot:s3cret@", "pilot@"])
    def test_user_info_is_refused_naming_the_ways_to_log_in(self, userinfo: str) -> None:
        """``user:password@`` in the URL was silently ignored (records then went out with no
        credentials): it is a one-line ConfigurationError naming token_file/token_env and
        certfile/keyfile, and the password does not appear in it."""
        with pytest.raises(ConfigurationError) as info:
            HTTPSEndpoint.from_url(f"https://{userinfo}c.example.org:8443/ingest")
        text = str(info.value)
        assert "\n" not in text
        assert "s3cret" not in text
        for option in ("token_file", "token_env", "certfile", "keyfile"):
            assert option in text


class TestSourceConfig:
    def test_refuses_what_would_fail_later(self, tmp_path: Path) -> None:
        """No way to authenticate, HTTPS without a certificate, certificates with
        ``tls = false``, and proxies without a client CA are each one-line errors."""
        tokens = tmp_path / "tokens"
        tokens.write_text(f"{TOKEN}\n")
        with pytest.raises(ConfigurationError, match="no way to authenticate"):
            HttpSourceConfig(tls=False)
        with pytest.raises(ConfigurationError, match="certfile"):
            HttpSourceConfig(tokens_file=str(tokens))
        with pytest.raises(ConfigurationError, match="tls = false"):
            HttpSourceConfig(tls=False, tokens_file=str(tokens), client_ca=str(tokens))
        tokens.write_text("short\n")
        with pytest.raises(ConfigurationError, match="at least 16"):
            HttpSourceConfig(tls=False, tokens_file=str(tokens))

    @pytest.mark.parametrize("port", ["\u00b2", "8_0", "+80", "99999", "None"])
    def test_a_malformed_listen_port_is_one_line(self, tmp_path: Path, port: str) -> None:
        """``listen`` with a port that is not 0-65535 in ASCII digits is a ConfigurationError
        at load (``"\u00b2"`` passed ``isdigit`` and made ``int()`` raise a bare ValueError)."""
        tokens = tmp_path / "tokens"
        tokens.write_text(f"{TOKEN}\n")
        with pytest.raises(ConfigurationError, match="must be host:port"):
            HttpSourceConfig(tls=False, tokens_file=str(tokens), listen=f"0.0.0.0:{port}")

    def test_allowed_subjects_without_client_ca_is_refused(self, tmp_path: Path) -> None:
        """``allowed_subjects`` without ``client_ca`` restricts nothing (no certificate is
        ever asked for): a one-line error instead of an allow-list silently ignored."""
        tokens = tmp_path / "tokens"
        tokens.write_text(f"{TOKEN}\n")
        with pytest.raises(ConfigurationError, match=r"allowed_subjects.*client_ca"):
            HttpSourceConfig(tls=False, tokens_file=str(tokens), allowed_subjects=("CN=a",))


@pytest.fixture
def plain_ingest(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, list[bytes]]]:
    """An in-process ingest on plain HTTP (1 KiB body limit unless the test passes other
    options by indirect parametrisation) whose records a thread acks; yields its URL and the
    list of acked bodies."""
    (tmp_path / "tokens").write_text(f"unit:{TOKEN}\n")
    port = reserve_port()
    options = {"max_body_bytes": 1024, **getattr(request, "param", {})}
    config = HttpSourceConfig(
        tls=False, listen=f"127.0.0.1:{port}", tokens_file=str(tmp_path / "tokens"),
        timeout=5.0, **options,
    )  # fmt: skip
    consumer = config.open()
    acked: list[bytes] = []
    stop = threading.Event()

    def pipeline() -> None:
        while not stop.is_set():
            deliveries = consumer.fetch(100, 0.05)
            acked.extend(d.body for d in deliveries)
            consumer.ack(deliveries)

    consumer.fetch(0, 0)  # starts listening
    thread = threading.Thread(target=pipeline, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/ingest?allow_http=true&gzip=false", acked
    finally:
        stop.set()
        thread.join(5)
        consumer.close()


def test_producer_halves_on_413_and_reports_refused_lines(
    plain_ingest: tuple[str, list[bytes]],
) -> None:
    """A batch above the ingest's body limit is sent again in halves; a single record that
    is too large, and a line the ingest refuses (400), are reported as PartlyRefused with
    exactly their ids, while every other record of the batch was handed on."""
    url, acked = plain_ingest
    messages = [
        Message("a", b'{"n": "a"}'),
        Message("b", b'{"n": "' + b"b" * 2000 + b'"}'),
        Message("c", b'{"n": "c"}'),
        Message("d", b"[1]"),
    ]
    with open_producer(url, token=TOKEN) as producer, pytest.raises(PartlyRefused) as info:
        producer.publish_batch(messages)
    assert info.value.ids == frozenset({"b", "d"})
    wait_until(lambda: len(acked) >= 2, timeout=5)
    assert sorted(b.split(b'"n":"')[1][:1] for b in acked) == [b"a", b"c"]


def test_producer_reports_a_refused_login_as_connect_error(
    plain_ingest: tuple[str, list[bytes]],
) -> None:
    """A token the ingest does not accept is a ConnectError (the login was refused), so the
    handler retries, fails over or spools, as for a broker that refuses a password."""
    url, _ = plain_ingest
    with (
        open_producer(url, token="not-the-token-0123456789") as producer,
        pytest.raises(ConnectError, match="401"),
    ):
        producer.publish_batch([Message("x", b'{"n": 1}')])


def test_pilots_example_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``examples/collector-pilots.toml`` is a valid collector config (its certificate, CA and
    token paths overridden from the environment, as a deployment may do)."""
    from mqlogging.collector.config import load_config

    grid = make_pilot_pki(tmp_path / "grid")
    (tmp_path / "tokens").write_text(f"pilots:{TOKEN}\n")
    env = {
        "MQLOGGING_SOURCES_0_CERTFILE": grid.server,
        "MQLOGGING_SOURCES_0_KEYFILE": grid.server_key,
        "MQLOGGING_SOURCES_0_CLIENT_CA": grid.ca,
        "MQLOGGING_SOURCES_0_TOKENS_FILE": str(tmp_path / "tokens"),
    }
    monkeypatch.setenv("MQ_PASSWORD", "x")  # the broker URL's password_env
    example = Path(__file__).resolve().parents[2] / "examples" / "collector-pilots.toml"
    config = load_config(example, env=env)
    (source,) = config.sources
    assert isinstance(source, HttpSourceConfig)
    assert source.allow_proxy_certs
    assert [s.type for s in config.sinks] == ["broker"]


def test_a_resent_batch_is_not_handed_on_twice(plain_ingest: tuple[str, list[bytes]]) -> None:
    """A client resending records the ingest handed on lately (its earlier answer was lost,
    or a 503 came after part of the batch was published) gets 200 without the records being
    handed on again: the ingest remembers recent ids."""
    url, acked = plain_ingest
    batch = [Message(f"id-{i}", b'{"mqlogging": {"schema": "flat"}, "id": "id-%d"}' % i)
             for i in range(3)]  # fmt: skip
    with open_producer(url, token=TOKEN) as producer:
        producer.publish_batch(batch[:2])
        producer.publish_batch(batch)
    wait_until(lambda: len(acked) >= 3, timeout=5)
    assert len(acked) == 3


def test_full_inflight_bound_is_429_and_a_nack_is_503(tmp_path: Path) -> None:
    """While records the pipeline took are not settled and fill ``max_inflight_bytes``, a new
    request gets 429 with Retry-After (backpressure); when the pipeline gives the records
    back (nack), their request gets 503 with Retry-After: never 2xx for records not handed
    on."""
    (tmp_path / "tokens").write_text(f"unit:{TOKEN}\n")
    port = reserve_port()
    config = HttpSourceConfig(
        tls=False, listen=f"127.0.0.1:{port}", tokens_file=str(tmp_path / "tokens"),
        max_inflight_bytes=200, timeout=10.0, retry_after=7,
    )  # fmt: skip
    consumer = config.open()
    consumer.fetch(0, 0)
    url = f"http://127.0.0.1:{port}/ingest"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    answers: list[httpx.Response] = []
    first = threading.Thread(
        target=lambda: answers.append(httpx.post(url, content=b'{"n": 1}', headers=headers))
    )
    try:
        first.start()
        taken = wait_until(lambda: consumer.fetch(10, 0.1), timeout=10)
        busy = httpx.post(url, content=b'{"n": 2, "pad": "' + b"x" * 60 + b'"}', headers=headers)
        assert busy.status_code == 429
        assert busy.headers["Retry-After"] == "7"
        consumer.nack(taken)
        first.join(10)
        assert answers[0].status_code == 503
        assert answers[0].headers["Retry-After"] == "7"
    finally:
        consumer.close()


@pytest.mark.parametrize(("allowed", "expected"), [(("CN=someone else",), 403), ((USER_DN,), 200)])
def test_certificate_outside_allowed_subjects_is_403(
    tmp_path: Path, allowed: tuple[str, ...], expected: int
) -> None:
    """With ``allowed_subjects``, a verified certificate (here an RFC 3820 proxy, whose
    identity is its user's subject) that is not listed gets 403; a listed one gets in."""
    grid = make_pilot_pki(tmp_path / "grid")
    port = reserve_port()
    consumer = HttpSourceConfig(
        listen=f"127.0.0.1:{port}", certfile=grid.server, keyfile=grid.server_key,
        client_ca=grid.ca, allow_proxy_certs=True, allowed_subjects=allowed,
    ).open()  # fmt: skip
    consumer.fetch(0, 0)
    ctx = ssl.create_default_context(cafile=grid.ca)
    ctx.load_cert_chain(grid.proxy)
    answers: list[int] = []

    def post() -> None:
        url = f"https://127.0.0.1:{port}/ingest"
        answers.append(httpx.post(url, content=b'{"n": 1}', verify=ctx).status_code)

    poster = threading.Thread(target=post)
    try:
        poster.start()
        if expected == 200:
            consumer.ack(wait_until(lambda: consumer.fetch(10, 0.1), timeout=10))
        poster.join(10)
        assert answers == [expected]
    finally:
        consumer.close()


_ROOMY = [{"max_body_bytes": 256 * 1024}]


def _post(url: str, body: bytes) -> httpx.Response:
    return httpx.post(
        url.split("?", maxsplit=1)[0], content=body, headers={"Authorization": f"Bearer {TOKEN}"}
    )


@pytest.mark.parametrize("plain_ingest", _ROOMY, indirect=True)
def test_hostile_lines_are_refused_one_by_one(plain_ingest: tuple[str, list[bytes]]) -> None:
    """JSON lines whose first line is an array, a line nested too deeply to be encoded
    again, and dotted keys that Elasticsearch would
    expand into ``mqlogging.ingest`` (so the identity field would also hold the client's
    claim), are refused as lines (400 naming them); the valid lines of the request are
    handed on with the ingest's stamp. Before, the leading array made the whole body one
    refused "line 1" (so the producer counted every other record as handed on: silent loss),
    the deep line made the whole request a 500 (resent for ever), and the dotted keys were
    handed on."""
    url, acked = plain_ingest
    deep = b'{"a":' * 300 + b"1" + b"}" * 300
    lines = [
        b"[1]",
        b'{"n": 1}',
        deep,
        b'{"n": 2, "mqlogging.ingest.identity": "CN=root"}',
        b'{"n": 3, "mqlogging": {"ingest.identity": "CN=root"}}',
        b'{"n": 4}',
    ]
    answer = _post(url, b"\n".join(lines))
    assert answer.status_code == 400, answer.text
    report = answer.json()
    assert report["accepted"] == 2
    assert [e["line"] for e in report["errors"]] == [1, 3, 4, 5]
    wait_until(lambda: len(acked) >= 2, timeout=5)
    assert len(acked) == 2
    assert all(b"CN=root" not in body and b"token:unit" in body for body in acked)


@pytest.mark.parametrize(
    "plain_ingest", [{"max_body_bytes": 256 * 1024, "max_records": 200_000}], indirect=True
)
def test_many_invalid_lines_get_a_small_answer(plain_ingest: tuple[str, list[bytes]]) -> None:
    """A 200 KB array of 100 000 non-objects gets a 400 that lists the first 100 refused
    lines and counts the rest in ``omitted``: before, the answer listed all of them (4.8 MB,
    and an 8 MiB body would have made an answer of about 200 MB)."""
    url, _ = plain_ingest
    answer = _post(url, b"[" + b",".join([b"1"] * 100_000) + b"]")
    assert answer.status_code == 400
    assert len(answer.content) < 16 * 1024
    report = answer.json()
    assert (len(report["errors"]), report["omitted"]) == (100, 99_900)


@pytest.mark.parametrize("plain_ingest", _ROOMY, indirect=True)
def test_a_capped_400_report_ends_with_every_record_delivered_or_refused(
    plain_ingest: tuple[str, list[bytes]],
) -> None:
    """A batch with more refused lines than the ingest lists (100; the rest counted in
    ``omitted``) ends in one publish_batch call: PartlyRefused with exactly the refused ids and
    every valid record handed on once. Before, such an answer confirmed nothing, so the
    handler sent the same batch again for ever."""
    url, acked = plain_ingest
    flat = b'{"mqlogging": {"schema": "flat"}, "id": "%s"}'
    messages = [
        Message(f"bad-{i}", b"[1]") if i % 2 else Message(f"ok-{i}", flat % b"ok-%d" % i)
        for i in range(500)
    ]
    bad = frozenset(m.id for m in messages if m.id.startswith("bad-"))
    with open_producer(url, token=TOKEN) as producer, pytest.raises(PartlyRefused) as info:
        producer.publish_batch(messages)
    assert info.value.ids == bad
    wait_until(lambda: len(acked) >= 250, timeout=5)
    # Lines after the last listed one are sent again (some were handed on already): the
    # ingest takes each id once, as for any resend.
    assert sorted(json.loads(b)["id"] for b in acked) == sorted(
        m.id for m in messages if m.id not in bad
    )


@pytest.mark.parametrize(
    "report",
    [
        b'{"accepted": 0, "errors": [{"line": 1}], "omitted": 5}',  # counts do not add up
        b'{"accepted": 1, "errors": [{"line": 3}], "omitted": 1}',  # omitted before a listed line
        b'{"accepted": 1, "errors": [{"line": 2}, {"line": 2}]}',  # one line twice
        b'{"error": "bad request"}',
    ],
)
def test_a_400_that_does_not_add_up_confirms_nothing(report: bytes) -> None:
    """A 400 whose counts do not account for every record sent (not the ingest's report: a
    proxy, another service) confirms nothing: NotConfirmed, the batch stays the handler's,
    and no record is counted as handed on or refused."""
    with (
        _answering(400, report) as url,
        open_producer(url, token=TOKEN) as producer,
        pytest.raises(NotConfirmed, match="400"),
    ):
        producer.publish_batch([Message(c, b'{"n": 1}') for c in "abc"])


@contextlib.contextmanager
def _answering(status: int, body: bytes) -> Iterator[str]:
    """A server answering every POST with ``status`` and the JSON ``body``; yields its
    https:// endpoint URL (plain HTTP, allowed)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Fixed(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Fixed)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ingest?allow_http=true&gzip=false"
    finally:
        server.shutdown()
        server.server_close()


def test_a_2xx_that_is_not_the_ingests_answer_confirms_nothing() -> None:
    """A server that answers ``200`` to any POST (a wrong path behind a catch-all web server
    or reverse proxy) does not confirm a batch: only the ingest's ``{"accepted": N}`` for
    every record sent does, so the records stay the handler's (retried, spooled) instead of
    being counted as delivered and lost."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class CatchAll(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = b"<html>welcome</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), CatchAll)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ingest?allow_http=true"
    try:
        with open_producer(url, token=TOKEN) as producer, pytest.raises(NotConfirmed):
            producer.publish_batch([Message("a", b'{"n": 1}'), Message("b", b'{"n": 2}')])
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("plain_ingest", [{"max_records": 100}], indirect=True)
def test_too_many_records_in_one_request_is_413_and_the_producer_halves(
    plain_ingest: tuple[str, list[bytes]],
) -> None:
    """A request with more than ``max_records`` records is 413 before any per-record work
    (before, an 8 MiB body of 2.8 million ``{}`` kept a parser thread busy for a minute); the
    https:// producer sends such a batch again in halves, so every record is handed on."""
    url, acked = plain_ingest
    too_many = _post(url, b"\n".join([b"{}"] * 101))
    assert too_many.status_code == 413
    assert "max_records" in too_many.json()["error"]
    messages = [Message(f"m{i}", b'{"n": %d}' % i) for i in range(150)]
    with open_producer(url, token=TOKEN) as producer:
        producer.publish_batch(messages)
    wait_until(lambda: len(acked) >= 150, timeout=5)
    assert len(acked) == 150


@pytest.mark.parametrize("plain_ingest", [{"idle_timeout": 1.0}], indirect=True)
def test_idle_connections_are_closed_after_idle_timeout(
    plain_ingest: tuple[str, list[bytes]],
) -> None:
    """A connection that sends no request (or only part of its headers) is closed after
    ``idle_timeout``: before, aiohttp's default kept it ~1 hour, so idle or half-open
    connections of many pilots (or anyone, unauthenticated) ran the collector out of file
    descriptors."""
    import socket
    import time

    url, _ = plain_ingest
    host, port = url.split("/")[2].split(":")
    silent = socket.create_connection((host, int(port)))
    partial = socket.create_connection((host, int(port)))
    partial.sendall(b"POST /ingest HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    for sock in (silent, partial):
        sock.settimeout(15)
        with sock:
            while sock.recv(4096):  # whatever the server says, then end of stream
                pass
    assert time.monotonic() - started < 10
