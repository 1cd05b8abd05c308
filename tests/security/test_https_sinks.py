"""HTTPS from the collector to Elasticsearch: verification on, hostname checked.

noida-db (the Elasticsearch stand-in) serves plain HTTP only, so :class:`TLSTerminator` — a
small TLS-terminating TCP relay, *not* part of Elasticsearch — presents a test certificate and
forwards the decrypted bytes to noida-db. The sink's client (the official ``elasticsearch``
package) does the real TLS handshake and verification against it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from types import TracebackType

import pytest

from harness.brokers import NoidaES
from harness.helpers import unique_name
from harness.tls import PKI
from mqlogging._ids import new_id
from mqlogging.collector.config import ElasticsearchSinkConfig
from mqlogging.collector.sinks import Outcome, Record, build_sink


class TLSTerminator:
    """Accepts TLS on a loopback port with ``certfile``/``keyfile`` and relays each connection
    to ``127.0.0.1:upstream_port`` in plain TCP. A test stand-in, not a production proxy."""

    def __init__(self, certfile: str, keyfile: str, upstream_port: int) -> None:
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(certfile, keyfile)
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(10)
            tls = self._ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()  # the client refused our certificate: exactly what some tests want
            return
        upstream = socket.create_connection(("127.0.0.1", self._upstream), timeout=10)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=pump, args=(upstream, tls), daemon=True)
        t.start()
        pump(tls, upstream)
        t.join(30)
        tls.close()
        upstream.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._listener.close()

    def __enter__(self) -> TLSTerminator:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@pytest.fixture
def https_es(pki: PKI, elasticsearch: NoidaES) -> Iterator[tuple[int, int]]:
    """(port presenting the valid certificate, port presenting the expired one)."""
    with (
        TLSTerminator(pki.server, pki.server_key, elasticsearch.port) as good,
        TLSTerminator(pki.expired, pki.expired_key, elasticsearch.port) as expired,
    ):
        yield good.port, expired.port


def _records(n: int) -> list[Record]:
    out = []
    for i in range(n):
        rid = new_id()
        doc = {"@timestamp": "2024-05-01T12:00:00.000000Z", "event": {"id": rid}, "seq": i}
        out.append(Record(rid, doc, 100))
    return out


def _write(host: str, **options: object) -> list[tuple[Outcome, str]]:
    dataset = unique_name("https").replace("-", "_")
    config = ElasticsearchSinkConfig(hosts=(host,), dataset=dataset, request_timeout=5.0,
                                     **options)  # type: ignore[arg-type]  # fmt: skip
    sink = build_sink(config)
    try:
        return [(r.outcome, r.reason) for r in sink.write(_records(5))]
    finally:
        sink.close()


def test_es_sink_over_https_with_the_ca(https_es: tuple[int, int], pki: PKI) -> None:
    """With ``ca_certs`` the sink verifies the server and stores all 5 records."""
    results = _write(f"https://127.0.0.1:{https_es[0]}", ca_certs=pki.ca)
    assert [o for o, _ in results] == [Outcome.DONE] * 5


_CASES = [
    ("wrong CA", "CERTIFICATE_VERIFY_FAILED"),
    ("expired", "certificate has expired"),
    ("wrong host", "Hostname mismatch"),
    ("no CA given", "CERTIFICATE_VERIFY_FAILED"),
]


def _case(https_es: tuple[int, int], pki: PKI, case: str) -> list[tuple[Outcome, str]]:
    good, expired = https_es
    host, options = {
        "wrong CA": (f"https://127.0.0.1:{good}", {"ca_certs": pki.other_ca}),
        "expired": (f"https://127.0.0.1:{expired}", {"ca_certs": pki.ca}),
        "wrong host": (f"https://localhost:{good}", {"ca_certs": pki.ca}),
        "no CA given": (f"https://127.0.0.1:{good}", {}),
    }[case]
    return _write(host, **options)


@pytest.mark.parametrize(("case", "expected"), _CASES)
def test_es_sink_refuses_unverified_servers(
    https_es: tuple[int, int], pki: PKI, case: str, expected: str
) -> None:
    """Wrong CA, expired certificate, wrong host name, and the default (system) trust store:
    nothing is stored; every record stays to be retried (never acked)."""
    results = _case(https_es, pki, case)
    assert [o for o, _ in results] == [Outcome.RETRY] * 5
    assert all(r.startswith("unavailable") for _, r in results)


@pytest.mark.parametrize(("case", "expected"), _CASES)
def test_es_sink_tls_reason_names_the_problem(
    https_es: tuple[int, int], pki: PKI, case: str, expected: str
) -> None:
    """The retry reason (logged, and in the dead letter after max_attempts) says what is wrong
    with the certificate, like the broker backends do."""
    reason = _case(https_es, pki, case)[0][1]
    assert expected in reason, reason
