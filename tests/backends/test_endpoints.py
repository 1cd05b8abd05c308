"""Endpoint URL parsing, validation and redaction (no broker needed)."""

from __future__ import annotations

import pytest

from mqlogging.backends import Endpoint, Host, Secret
from mqlogging.errors import ConfigurationError

SECRET = "s3cr3t-Pa55"


class TestParsing:
    def test_amqp_with_several_hosts_vhost_and_options(self) -> None:
        """Several hosts (with default and explicit ports, IPv6), vhost and query options parse."""
        ep = Endpoint.from_url(
            f"amqp://user:{SECRET}@h1,h2:5673,[::1]:5674/prod?exchange=ex&routing_key=app.logs"
            "&heartbeat=10&connect_timeout=2.5&queue_type=quorum"
        )
        assert ep.transport == "amqp"
        assert ep.hosts == (Host("h1", 5672), Host("h2", 5673), Host("::1", 5674))
        assert ep.vhost == "prod"
        assert (ep.exchange, ep.routing_key, ep.queue_type) == ("ex", "app.logs", "quorum")
        assert (ep.heartbeat, ep.connect_timeout) == (10, 2.5)
        assert ep.credentials() == ("user", SECRET)
        assert ep.tls is None

    def test_default_vhost_and_ports(self) -> None:
        """No path means vhost '/'; amqps defaults to 5671 and turns TLS on with verification."""
        ep = Endpoint.from_url("amqps://broker.example.org")
        assert ep.vhost == "/"
        assert ep.hosts == (Host("broker.example.org", 5671),)
        assert ep.tls is not None
        assert ep.tls.verify is True

    def test_percent_encoded_credentials_and_vhost(self) -> None:
        """Reserved characters in user, password and vhost are percent-decoded."""
        ep = Endpoint.from_url("amqp://us%40er:p%2Fw%3A@h/%2Fprod")
        assert ep.credentials() == ("us@er", "p/w:")
        assert ep.vhost == "/prod"

    def test_stomp_destination(self) -> None:
        """The STOMP path is the destination; queues and topics are both allowed."""
        assert Endpoint.from_url("stomp://h:61613/topic/logs").destination == "/topic/logs"
        assert Endpoint.from_url("stomp://h").destination == "/queue/logs"
        assert Endpoint.from_url("stomp+ssl://h").hosts == (Host("h", 61614),)

    def test_local(self) -> None:
        """local:// URLs carry the spool directory and spool options, and no host."""
        ep = Endpoint.from_url("local:///var/spool/app?fsync=always")
        assert (ep.transport, ep.path) == ("local", "/var/spool/app")
        assert ep.spool_options == {"fsync": "always"}

    def test_keyword_options_override_query(self) -> None:
        """Keyword arguments win over query parameters of the same name."""
        ep = Endpoint.from_url("amqp://h/?exchange=a", exchange="b", heartbeat=0)
        assert (ep.exchange, ep.heartbeat) == ("b", 0)

    def test_default_exchange_routes_to_queue(self) -> None:
        """With the default exchange, the routing key defaults to the queue name."""
        ep = Endpoint.from_url("amqp://h/?exchange=&queue=q1")
        assert (ep.exchange, ep.routing_key) == ("", "q1")

    def test_password_from_file_and_env(self, tmp_path, monkeypatch) -> None:
        """Secrets may come from a file or an environment variable instead of the URL."""
        f = tmp_path / "pw"
        f.write_text(SECRET + "\n")
        assert Endpoint.from_url(f"amqp://u@h/?password_file={f}").credentials() == ("u", SECRET)
        monkeypatch.setenv("MQ_PW", SECRET)
        assert Endpoint.from_url("amqp://u@h/?password_env=MQ_PW").credentials() == ("u", SECRET)

    def test_endpoint_passes_through(self) -> None:
        """An Endpoint is accepted where a URL is, and options make a validated copy."""
        ep = Endpoint.from_url("amqp://h/")
        assert Endpoint.from_url(ep) is ep
        assert Endpoint.from_url(ep, heartbeat=5).heartbeat == 5


class TestErrors:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            (
                "amqp://h/?exchnage=x",
                "unknown option 'exchnage' for amqp://h/?exchnage=x (did you mean 'exchange'?",
            ),
            ("amqp://h:99999/", "port '99999' of host 'h' is not a number from 1 to 65535"),
            ("ftp://h/", "unknown URL scheme 'ftp'"),
            ("broker:5672", "is not a URL"),
            ("amqp:///vhost", "no host given"),
            ("amqp://h/?heartbeat=soon", "option heartbeat='soon' is not valid"),
            (
                "amqp://h/?verify=false",
                "TLS options (verify) given for a plain-TCP URL; use amqps://",
            ),
            ("amqps://h/?verify=maybe", "option verify='maybe' is not valid"),
            ("amqps://h/?ca_certs=/nonexistent.pem", "ca_certs='/nonexistent.pem': no such file"),
            ("amqp://h/?queue_type=stream", "queue_type must be 'classic' or 'quorum'"),
            ("stomp://h/?ack=auto2", "ack must be 'client-individual' or 'client'"),
            ("local://host/x", "local URLs have no host"),
            ("local:///", "give the spool directory"),
            ("amqp://u:p@[::1/", "amqp://u:***@[::1/: not a valid URL (Invalid IPv6 URL)"),
            (
                "amqp://u@h/?password_env=MQLOGGING_TEST_UNSET",
                "password_env='MQLOGGING_TEST_UNSET' but that variable is not set",
            ),
        ],
    )
    def test_bad_input_is_one_actionable_line(self, url: str, expected: str) -> None:
        """Every mistake is a ConfigurationError (a ValueError) of one line naming the problem."""
        with pytest.raises(ConfigurationError) as info:
            Endpoint.from_url(url)
        assert expected in str(info.value)
        assert "\n" not in str(info.value)
        assert isinstance(info.value, ValueError)

    def test_error_never_contains_the_password(self) -> None:
        """A bad option in a URL with a password is reported with the password masked."""
        with pytest.raises(ConfigurationError) as info:
            Endpoint.from_url(f"amqp://user:{SECRET}@h/?bogus=1&password={SECRET}")
        assert SECRET not in str(info.value)
        assert "user:***@h" in str(info.value)


class TestRedaction:
    @pytest.mark.parametrize(
        "url",
        [
            f"https://h:8443/ingest?token={SECRET}&tokn=1",
            f"https://h:8443/ingest?token={SECRET}&token_env=X",
            f"https://h:8443/ingest?token={SECRET}&timeout=soon",
            f"elasticsearch+https://h/?index=logs&api_key={SECRET}&bogus=1",
            f"elasticsearch+https://h/?index=logs&api_key={SECRET}&api_key_env=X",
            f"amqp://h/?password={SECRET}&bogus=1",
        ],
    )
    def test_errors_do_not_show_a_secret_given_as_an_option(self, url: str) -> None:
        """A token or API key given in the query (``token=``, ``api_key=``) is masked in the
        error about another option, as a password is: before, the one-line error quoted the
        whole URL, token included (into logs and CI output)."""
        with pytest.raises(ConfigurationError) as info:
            Endpoint.from_url(url)
        assert SECRET not in str(info.value)
        assert "=***" in str(info.value)

    def test_repr_str_and_redacted_hide_the_password(self) -> None:
        """repr, str and redacted() mask the password; credentials() is the one way to read it."""
        ep = Endpoint.from_url(f"stomp://user:{SECRET}@h:61613/queue/logs")
        for text in (repr(ep), str(ep), ep.redacted(), f"{ep}", repr(ep.password)):
            assert SECRET not in text
        assert ep.redacted() == "stomp://user:***@h:61613/queue/logs"
        assert ep.credentials() == ("user", SECRET)

    def test_secret(self) -> None:
        """Secret hides its value in repr/str and reveals it only on request."""
        s = Secret(SECRET)
        assert SECRET not in repr(s) + str(s) + f"{s!r}"
        assert s.reveal() == SECRET


def test_an_option_repeated_in_the_url_is_refused() -> None:
    """``?pack=5&pack=6`` is refused in one line naming the option (taking either value would
    silently override what the user wrote), and the password stays masked."""
    with pytest.raises(ConfigurationError, match=r"option 'pack' given more than once; keep one"):
        Endpoint.from_url("amqp://u:secret@h/?queue=q&pack=5&pack=6")
    with pytest.raises(ConfigurationError) as caught:
        Endpoint.from_url("amqp://u:secret@h/?exchange=a&exchange=b")
    assert "secret" not in str(caught.value)
    assert "\n" not in str(caught.value)
