"""The collector's config seams: a table read into a config by its fields' real types
(``mqlogging.collector._table``), and the ``SINK_TYPES`` table from a sink ``type`` to the config
that lives beside its sink."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import pytest

from harness.collector import log_through_handler
from harness.helpers import wait_until
from mqlogging.backends.endpoints import Endpoint, Secret
from mqlogging.collector import add_arguments
from mqlogging.collector._table import (
    FromTable,
    PemPath,
    PositiveFloat,
    PositiveInt,
    Table,
    check_fields,
    read_table,
)
from mqlogging.collector.config import LogLevel, PipelineConfig, parse_config
from mqlogging.collector.service import CollectorService
from mqlogging.collector.sinks import SINK_TYPES, Record, Result, Sink, build_sink
from mqlogging.collector.sinks.base import DONE
from mqlogging.collector.sinks.elasticsearch import ElasticsearchSinkConfig
from mqlogging.errors import ConfigurationError


@dataclass(frozen=True, slots=True, kw_only=True)
class Example(FromTable):
    """Every kind of field the reader knows, once."""

    url: Endpoint
    count: PositiveInt = 3
    wait: PositiveFloat = 1.0
    flag: bool = False
    word: str = "w"
    mode: Literal["a", "b"] = "a"
    hosts: tuple[str, ...] = ("h",)
    secret: Secret | None = None
    pem: PemPath | None = None
    limit: int = 0

    def __post_init__(self) -> None:
        check_fields(self)


def _table(values: dict[str, Any], env: dict[str, str] | None = None) -> Table:
    return Table(values, "[example]", env or {}, "MQLOGGING_EXAMPLE")


class TestReadTable:
    def test_file_values_by_type(self, tmp_path: Path) -> None:
        """File values keep their TOML types; an int is accepted for a float, a string becomes
        a one-element list, a URL an Endpoint, a secret a Secret that hides itself."""
        pem = tmp_path / "ca.pem"
        pem.write_text("x")
        got = Example.from_table(
            _table(
                {
                    "url": "amqp://u:pw@h/",
                    "count": 5,
                    "wait": 2,
                    "flag": True,
                    "mode": "b",
                    "hosts": "only",
                    "secret": "s3",
                    "pem": str(pem),
                }
            )
        )
        expected = Example(
            url=Endpoint.from_url("amqp://u:pw@h/"),
            count=5,
            wait=2.0,
            flag=True,
            mode="b",
            hosts=("only",),
            secret=Secret("s3"),
            pem=str(pem),
        )
        assert expected == got
        assert isinstance(got.wait, float)
        assert "s3" not in repr(got)

    def test_environment_text_by_type(self) -> None:
        """``MQLOGGING_<TABLE>_<KEY>`` text is parsed by the field's type with the shared
        spelling rules (``on``/``off``, lists comma-separated) and wins over the file."""
        env = {
            "MQLOGGING_EXAMPLE_COUNT": " 7 ",
            "MQLOGGING_EXAMPLE_WAIT": "0.25",
            "MQLOGGING_EXAMPLE_FLAG": "On",
            "MQLOGGING_EXAMPLE_HOSTS": "a, b,,",
            "MQLOGGING_EXAMPLE_MODE": "b",
            "MQLOGGING_EXAMPLE_LIMIT": "-2",
        }
        got = Example.from_table(_table({"url": "local:///tmp", "count": 1}, env))
        assert (
            got.count,
            got.wait,
            got.flag,
            got.hosts,
            got.mode,
            got.limit,
        ) == (7, 0.25, True, ("a", "b"), "b", -2)

    @pytest.mark.parametrize(
        ("values", "env", "expected"),
        [
            ({"count": "5"}, {}, "[example] count must be an integer, got '5'"),
            ({"count": True}, {}, "[example] count must be an integer, got True"),
            ({"flag": "yes"}, {}, "[example] flag must be true or false, got 'yes'"),
            ({"count": 0}, {}, "[example]: count must be a positive integer, not 0"),
            ({"wait": -1}, {}, "[example]: wait must be a positive number, not -1.0"),
            ({"mode": "c"}, {}, "[example]: mode must be one of a, b, not 'c'"),
            ({"pem": "/nonexistent.pem"}, {}, "[example]: pem='/nonexistent.pem': no such file"),
            ({"secret": 1}, {}, "[example] secret must be a string"),
            ({"hosts": [1]}, {}, "[example] hosts must be a list of strings"),
            ({"cuont": 1}, {}, "[example]: unknown key 'cuont' (did you mean 'count'?"),
            (
                {},
                {"MQLOGGING_EXAMPLE_FLAG": "maybe"},
                "[example] flag (from the environment) must be true or false, got 'maybe'",
            ),
            (
                {},
                {"MQLOGGING_EXAMPLE_COUNT": "1.5"},
                "[example] count (from the environment) must be an integer, got '1.5'",
            ),
        ],
    )
    def test_one_line_errors(
        self, values: dict[str, Any], env: dict[str, str], expected: str
    ) -> None:
        """Each wrong value is refused in one line that names the table and the key."""
        with pytest.raises(ConfigurationError) as info:
            Example.from_table(_table({"url": "local:///tmp", **values}, env))
        assert expected in str(info.value)
        assert "\n" not in str(info.value)

    def test_required_key(self) -> None:
        """A field without a default is a required key."""
        with pytest.raises(ConfigurationError, match=r"\[example\]: required key 'url'"):
            read_table(Example, _table({}))

    def test_direct_construction_is_checked_too(self) -> None:
        """A config built in Python gets the same constraints as one read from a file, the
        message naming the class."""
        with pytest.raises(ConfigurationError, match="PipelineConfig: batch_max_wait must be"):
            PipelineConfig(batch_max_wait=0)
        with pytest.raises(ConfigurationError, match="ElasticsearchSinkConfig: mode must be"):
            ElasticsearchSinkConfig(mode="idx")  # type: ignore[arg-type]

    def test_field_type_without_converter(self) -> None:
        """A field whose type the reader cannot convert is a programming error named at the
        first read, not a KeyError deep inside."""

        @dataclass(frozen=True, slots=True, kw_only=True)
        class Odd(FromTable):
            extra: dict[str, str] | None = None

        with pytest.raises(TypeError, match=r"Odd\.extra: no converter"):
            Odd.from_table(_table({}))

    def test_concurrent_first_reads(self) -> None:
        """Reading one class from many threads at once (the first read works out its fields)
        gives every thread the same value."""

        @dataclass(frozen=True, slots=True, kw_only=True)
        class Fresh(FromTable):
            size: PositiveInt = 1

        results: list[Fresh] = []
        barrier = threading.Barrier(8)

        def read() -> None:
            barrier.wait()
            results.append(Fresh.from_table(_table({"size": 4})))

        threads = [threading.Thread(target=read) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert [Fresh(size=4)] * 8 == results


class TestSinkTypes:
    def test_every_type_reads_its_own_config(self, tmp_path: Path) -> None:
        """Each registered ``type`` is read by a config that accepts that type and builds a
        sink (no client connects until the first write)."""
        for kind, from_table in SINK_TYPES.items():
            needs = {
                "file": {"path": str(tmp_path / "out.jsonl")},
                "broker": {"url": "amqp://127.0.0.1/?queue=q"},
            }
            values = needs.get(kind, {})
            config = from_table(Table({"type": kind, **values}, "[[sinks]] #1", {}, "P"))
            assert kind == config.type
            sink = build_sink(config)
            assert isinstance(sink, Sink)
            sink.close()

    def test_shared_secret_environment(self) -> None:
        """``MQLOGGING_ES_*`` applies to every elasticsearch sink; ``MQLOGGING_SINKS_<N>_*``
        wins over it for one sink."""
        env = {
            "MQLOGGING_ES_USERNAME": "all",
            "MQLOGGING_ES_PASSWORD": "shared",
            "MQLOGGING_SINKS_1_PASSWORD": "own",
        }
        data = {
            "sources": [{"url": "local:///tmp"}],
            "sinks": [
                {"type": "elasticsearch", "name": "a"},
                {"type": "elasticsearch", "name": "b"},
            ],
        }
        a, b = parse_config(data, env=env).sinks
        assert isinstance(a, ElasticsearchSinkConfig)
        assert isinstance(b, ElasticsearchSinkConfig)
        assert a.password is not None
        assert b.password is not None
        assert (
            a.username,
            a.password.reveal(),
            b.username,
            b.password.reveal(),
        ) == ("all", "shared", "all", "own")

    def test_type_that_is_not_a_string(self) -> None:
        """A ``type`` that is a list is a one-line configuration error, not a crash."""
        data = {"sources": [{"url": "local:///tmp"}], "sinks": [{"type": ["file"]}]}
        with pytest.raises(ConfigurationError, match=r"type=\['file'\] is not a sink type"):
            parse_config(data, env={})

    def test_log_level_choices_are_the_config_type(self) -> None:
        """``--log-level`` accepts exactly the levels ``[collector] log_level`` accepts."""
        import argparse

        parser = argparse.ArgumentParser(exit_on_error=False)
        add_arguments(parser)
        for level in get_args(LogLevel):
            assert level == parser.parse_args(["-c", "x", "--log-level", level]).log_level
        with pytest.raises((argparse.ArgumentError, SystemExit)):
            parser.parse_args(["-c", "x", "--log-level", "verbose"])


@dataclass(frozen=True, slots=True, kw_only=True)
class MemorySinkConfig(FromTable):
    """A sink added from outside the package: a config with ``from_table`` and ``build``."""

    type: Literal["memory"] = "memory"
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or "memory"

    def build(self, metrics: Any = None) -> Sink:
        return MemorySink(self.label)


class MemorySink(Sink):
    """Keeps what it is given (for the test below)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.docs: list[dict[str, Any]] = []

    def write(self, records: Sequence[Record]) -> list[Result]:
        self.docs.extend(r.doc for r in records)
        return [DONE] * len(records)


def test_a_new_sink_is_one_registry_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    service: Callable[..., CollectorService],
) -> None:
    """Registering a config class under a new ``type`` is all it takes for ``[[sinks]]`` to
    accept it and for the collector to drain a source into the new sink."""
    monkeypatch.setitem(SINK_TYPES, "memory", MemorySinkConfig.from_table)
    spool = tmp_path / "spool"
    url = f"local://{spool}"
    log_through_handler(url, 200, "collector.test_table")
    svc = service(sources=[{"url": url}], sinks=[{"type": "memory", "name": "mem"}])
    sink = svc.sinks[0]
    assert isinstance(sink, MemorySink)
    wait_until(lambda: svc.metrics.value("acked") == 200, timeout=60)
    assert list(range(200)) == sorted(d["seq"] for d in sink.docs)
    assert dataclasses.is_dataclass(svc.config.sinks[0])
