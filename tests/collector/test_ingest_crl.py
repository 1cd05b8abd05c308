"""Revoked client certificates at the HTTPS ingest (``crl_check``): an in-process ingest
(HTTPS, client certificates incl. RFC 3820 proxies) whose records a thread acks, the CRLs of
:mod:`harness.pilot_pki` in a hashed CA directory or a ``crl_file``; no broker is involved."""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness.brokers import reserve_port
from harness.helpers import wait_until
from harness.pilot_pki import PilotPKI, make_crl, make_pilot_pki
from mqlogging.collector.ingest import HttpSourceConfig
from mqlogging.collector.ingest.crl import CrlStore
from mqlogging.errors import ConfigurationError

TOKEN = "crl-token-0123456789abcdef"


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> PilotPKI:
    """The pilot PKI: a CA with a CRL revoking the second user (``revoked``)."""
    return make_pilot_pki(tmp_path_factory.mktemp("grid"))


@dataclass
class Ingest:
    """A running in-process ingest and its copy of the CA directory (tests rewrite it)."""

    url: str
    grid: PilotPKI
    cadir: Path

    def status(self, cert: str) -> tuple[int, str]:
        """POST one record with the client certificate ``cert`` (proxy files hold their
        key); the answer's status and text."""
        ctx = ssl.create_default_context(cafile=self.grid.ca)
        key = None if cert.endswith("proxy.pem") else cert[:-4] + ".key"
        ctx.load_cert_chain(cert, key)
        answer = httpx.post(self.url, content=b'{"n": 1}', verify=ctx, timeout=10.0)
        return answer.status_code, answer.text

    @property
    def r0(self) -> Path:
        """The CA's CRL file in the hashed directory."""
        return next(self.cadir.glob("*.r0"))

    def replace_crl(self, pem: bytes) -> None:
        """Rewrite the CA's CRL as fetch-crl does (a new file renamed over the old one)."""
        tmp = self.r0.with_suffix(".tmp")
        tmp.write_bytes(pem)
        os.replace(tmp, self.r0)


@pytest.fixture
def ingest(request: pytest.FixtureRequest, tmp_path: Path, grid: PilotPKI) -> Iterator[Ingest]:
    """An ingest with client certificates, proxies and ``crl_check = "leaf"`` against a copy
    of the hashed CA directory, re-read every 0.1 s; options by indirect parametrisation
    (``"client_ca": "file"`` uses the CA file and ``crl_file``)."""
    cadir = Path(shutil.copytree(grid.cadir, tmp_path / "certificates"))
    options: dict[str, Any] = {"crl_check": "leaf", **getattr(request, "param", {})}
    if options.get("client_ca") == "file":
        options.update(client_ca=grid.ca, crl_file=grid.crl)
    port = reserve_port()
    consumer = HttpSourceConfig(
        listen=f"127.0.0.1:{port}", certfile=grid.server, keyfile=grid.server_key,
        allow_proxy_certs=True, crl_refresh=0.1, **{"client_ca": str(cadir), **options},
    ).open()  # fmt: skip
    stop = threading.Event()

    def pipeline() -> None:
        while not stop.is_set():
            consumer.ack(consumer.fetch(100, 0.05))

    consumer.fetch(0, 0)  # starts listening
    thread = threading.Thread(target=pipeline, daemon=True)
    thread.start()
    try:
        yield Ingest(f"https://127.0.0.1:{port}/ingest", grid, cadir)
    finally:
        stop.set()
        thread.join(5)
        consumer.close()


@pytest.mark.parametrize(
    "ingest",
    [{}, {"crl_check": "chain"}, {"client_ca": "file"}],
    indirect=True,
    ids=["leaf-cadir", "chain-cadir", "leaf-crl_file"],
)
def test_revoked_user_and_its_proxy_are_refused_good_ones_pass(ingest: Ingest) -> None:
    """With CRL checks on (leaf or chain; CRLs from the hashed directory or a crl_file), a
    revoked user certificate and a proxy made from it get 403 saying it is revoked; the good
    user and its proxy (issued by a user, for whom no CRL exists) still get 200."""
    grid = ingest.grid
    assert ingest.status(grid.user)[0] == 200
    assert ingest.status(grid.proxy)[0] == 200
    for cert in (grid.revoked, grid.revoked_proxy):
        status, text = ingest.status(cert)
        assert status == 403, text
        assert "revoked" in text


def test_crl_rewritten_on_disk_takes_effect_without_restart(
    ingest: Ingest, caplog: pytest.LogCaptureFixture
) -> None:
    """fetch-crl rewriting the CA's CRL is seen within crl_refresh: a CRL that no longer
    lists the user lets it in, the revoking one shuts it out again; a CRL past its next
    update, and no CRL at all, refuse every certificate of that CA (fail closed), naming
    why; a CRL file caught half-written keeps its previous contents."""
    grid = ingest.grid

    def becomes(cert: str, status: int) -> bool:
        return ingest.status(cert)[0] == status

    ingest.replace_crl(Path(grid.crl_empty).read_bytes())
    wait_until(lambda: becomes(grid.revoked_proxy, 200), timeout=10, message="unrevoked")
    ingest.replace_crl(Path(grid.crl).read_bytes())
    wait_until(lambda: becomes(grid.revoked_proxy, 403), timeout=10, message="revoked again")

    caplog.set_level(logging.WARNING, "mqlogging.collector.ingest")
    ingest.replace_crl(Path(grid.crl).read_bytes()[:100])  # a torn write: previous CRL kept

    def torn_seen() -> bool:  # a request after crl_refresh re-reads the file
        return ingest.status(grid.user)[0] == 200 and "cannot be read" in caplog.text

    wait_until(torn_seen, timeout=10, message="torn CRL seen")
    assert ingest.status(grid.user)[0] == 200
    assert ingest.status(grid.revoked)[0] == 403

    old = make_crl(grid.ca, grid.ca_key, [], next_update=-datetime.timedelta(hours=1))
    ingest.replace_crl(old)
    wait_until(lambda: becomes(grid.user, 403), timeout=10, message="expired CRL refuses")
    assert "expired" in ingest.status(grid.proxy)[1]
    ingest.r0.unlink()
    wait_until(lambda: "no CRL" in ingest.status(grid.user)[1], timeout=10, message="no CRL")


def _chain(*pems: str) -> list[bytes]:
    """DER certificates of the PEM files, in order (a verified chain, leaf first)."""
    out = []
    for pem in pems:
        for cert in x509.load_pem_x509_certificates(Path(pem).read_bytes()):
            out.append(cert.public_bytes(serialization.Encoding.DER))
    return out


def test_a_crl_not_signed_by_the_ca_is_ignored(tmp_path: Path, grid: PilotPKI) -> None:
    """A CRL that names the CA as issuer but is signed by another key (dropped into the CA
    directory by someone else) neither revokes nor un-revokes: the CA has no valid CRL then,
    so its certificates are refused (fail closed); next to the real CRL it changes nothing."""
    forger = tmp_path / "forger.key"
    forger.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    forged = tmp_path / "forged.pem"
    forged.write_bytes(make_crl(grid.ca, str(forger), []))
    alone = CrlStore(mode="chain", crl_file=str(forged))
    problem = alone.refusal(_chain(grid.revoked, grid.ca))
    assert problem is not None
    assert "no CRL" in problem
    both = tmp_path / "both.pem"
    both.write_bytes(forged.read_bytes() + Path(grid.crl).read_bytes())
    store = CrlStore(mode="leaf", crl_file=str(both))
    assert "revoked" in (store.refusal(_chain(grid.revoked_proxy, grid.ca)) or "")
    assert store.refusal(_chain(grid.proxy, grid.ca)) is None


def test_crl_config_errors_are_one_line(tmp_path: Path, grid: PilotPKI) -> None:
    """Contradictory or unusable CRL options are refused at load time, each in one line
    naming the fix: checks without client_ca, crl_file with checks off, a CA file without
    crl_file, a crl_file that does not load, a CA directory without any CRL, an unknown
    mode."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
    empty_dir = tmp_path / "certificates"
    empty_dir.mkdir()
    shutil.copy(grid.ca, empty_dir / "ca.pem")
    tls = {"certfile": grid.server, "keyfile": grid.server_key, "tokens_file": str(tokens)}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"crl_check": "leaf"}, "needs client_ca"),
        ({"client_ca": grid.ca, "crl_file": grid.crl}, "crl_check = 'off'"),
        ({"client_ca": grid.ca, "crl_check": "leaf"}, "needs crl_file"),
        ({"client_ca": grid.ca, "crl_check": "leaf", "crl_file": str(garbage)}, "cannot be"),
        ({"client_ca": grid.ca, "crl_check": "leaf", "crl_file": "/nonexistent"}, "cannot be"),
        ({"client_ca": str(empty_dir), "crl_check": "chain"}, "no CRL was found"),
        ({"client_ca": grid.ca, "crl_check": "yes"}, "crl_check"),
    ]
    for options, expected in cases:
        with pytest.raises(ConfigurationError, match=expected) as caught:
            HttpSourceConfig(**{**tls, **options})
        assert "\n" not in str(caught.value), options
    with pytest.raises(ConfigurationError, match="needs client_ca"):
        HttpSourceConfig(tls=False, tokens_file=str(tokens), crl_check="chain")


def _write_key(path: Path, key: Any) -> str:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def _issue(subject: str, issuer: Any, issuer_key: Any, *, ca: bool) -> tuple[Any, Any]:
    """A certificate for ``CN=subject`` issued by ``issuer``; (certificate, key)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    return cert, key


def test_chain_mode_checks_intermediate_cas_leaf_mode_only_the_end_entity(
    tmp_path: Path, grid: PilotPKI
) -> None:
    """Under an intermediate CA that the root's CRL revokes, ``crl_check = "chain"`` refuses
    the user (the intermediate is revoked) while ``"leaf"`` checks only the user against the
    intermediate's CRL; the trust anchor itself is never looked up (it has no issuer CRL)."""
    root = x509.load_pem_x509_certificate(Path(grid.ca).read_bytes())
    root_key = serialization.load_pem_private_key(Path(grid.ca_key).read_bytes(), None)
    inter, inter_key = _issue("mqlt intermediate CA", root, root_key, ca=True)
    user, _ = _issue("pilot bob", inter, inter_key, ca=False)
    inter_pem = tmp_path / "inter.pem"
    inter_pem.write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    inter_key_pem = _write_key(tmp_path / "inter.key", inter_key)
    crls = tmp_path / "crls.pem"
    crls.write_bytes(
        make_crl(grid.ca, grid.ca_key, [inter.serial_number])
        + make_crl(str(inter_pem), inter_key_pem, [])
    )
    chain = [c.public_bytes(serialization.Encoding.DER) for c in (user, inter, root)]
    assert CrlStore(mode="leaf", crl_file=str(crls)).refusal(chain) is None
    problem = CrlStore(mode="chain", crl_file=str(crls)).refusal(chain)
    assert problem is not None
    assert "intermediate" in problem
    assert "revoked" in problem
