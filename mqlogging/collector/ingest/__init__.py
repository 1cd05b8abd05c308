"""HTTPS ingest: a collector source that takes records by ``POST`` (grid pilots, scripts).

::

    [[sources]]
    type = "http"
    listen = "0.0.0.0:8443"
    certfile = "/etc/grid-security/hostcert.pem"
    keyfile = "/etc/grid-security/hostkey.pem"
    client_ca = "/etc/grid-security/certificates"     # X.509 users, a hashed CA directory
    allow_proxy_certs = true                          # RFC 3820 proxies
    tokens_file = "/etc/mqlogging/ingest-tokens"      # and/or bearer tokens

    [[sinks]]
    type = "broker"                                   # published with confirms, then 2xx
    url = "amqps://mq.example.org/?exchange=&routing_key=logs"

``POST /ingest`` takes JSON lines or a JSON array (``Content-Encoding: gzip`` allowed).
The request is answered ``200`` only once every record in it is durably handed on — acked by
the pipeline, which acks only when every sink has the record. Answers and limits:
:mod:`.server`; what happens to each line (ids, the ``mqlogging.ingest`` identity stamp):
:mod:`.body`; authentication: :mod:`.auth`; options: :class:`HttpSourceConfig`.
"""

from __future__ import annotations

from .config import HttpSourceConfig

__all__ = ["HttpSourceConfig"]
