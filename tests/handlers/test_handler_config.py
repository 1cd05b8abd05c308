"""HandlerConfig: each MQHandler option with its type and default written once, validated and
normalised by ``from_options``."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from mqlogging import run
from mqlogging.errors import ConfigurationError
from mqlogging.formatting import DEFAULT_MAX_RECORD_BYTES
from mqlogging.handlers import MQHandler
from mqlogging.handlers._config import DURABILITIES, OVERFLOWS, STRATEGIES, HandlerConfig

URL = "amqp://127.0.0.1/"


def test_handler_signature_defaults_come_from_the_config() -> None:
    """Every MQHandler keyword that is a HandlerConfig field has the field's default: the
    default is written once, in HandlerConfig."""
    params = inspect.signature(MQHandler.__init__).parameters
    fields = dataclasses.fields(HandlerConfig)
    shared = [f for f in fields if f.name in params and f.default is not dataclasses.MISSING]
    assert len(shared) >= 15
    for f in shared:
        assert params[f.name].default == f.default, f.name
    assert HandlerConfig.max_record_bytes == DEFAULT_MAX_RECORD_BYTES


def test_run_command_uses_the_same_record_limit() -> None:
    """``mqlogging run --max-record-bytes`` defaults to the formatter's limit, not a copy."""
    import argparse

    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    assert parser.parse_args(["--", "true"]).max_record_bytes == DEFAULT_MAX_RECORD_BYTES


def test_choices_are_the_literal_types() -> None:
    """The allowed values of strategy/overflow/durability are their Literal types' values."""
    assert STRATEGIES == ("failover", "roundrobin", "all")
    assert OVERFLOWS == ("spool", "drop", "block")
    assert DURABILITIES == ("auto", "memory", "spool")


def test_from_options_normalises(tmp_path: Path) -> None:
    """Absent options take the defaults; numbers given as strings (YAML, env) are parsed; the
    spool size accepts units and lands in the spool options; the config is frozen."""
    config = HandlerConfig.from_options(
        URL, spool=str(tmp_path), batch_size="50", flush_interval="0.5", spool_max_bytes="64MiB"
    )
    assert (config.batch_size, config.flush_interval) == (50, 0.5)
    assert config.spool_max_bytes == 64 << 20
    assert config.spool_options["max_bytes"] == 64 << 20
    assert config.queue_size == HandlerConfig.queue_size
    assert config.spool_dir == str(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 1  # type: ignore[misc]


def test_without_spool_overflow_can_only_drop() -> None:
    """spool=False turns the default overflow='spool' into 'drop' (explicit 'block' stays)."""
    assert HandlerConfig.from_options(URL, spool=False).overflow == "drop"
    assert HandlerConfig.from_options(URL, spool=False, overflow="block").overflow == "block"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"strategy": "roundrobbin"}, "did you mean 'roundrobin'"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"timeout": 0}, "timeout"),
        ({"flush_intervall": 1}, "unknown option 'flush_intervall'"),
        ({"spool_dir": "/x"}, "unknown option 'spool_dir'"),
    ],
)
def test_bad_options_are_refused_in_one_line(
    options: dict[str, object], needle: str, tmp_path: Path
) -> None:
    """A bad value or an unknown option: one line naming it (and the closest known one)."""
    with pytest.raises(ConfigurationError) as info:
        HandlerConfig.from_options(URL, spool=str(tmp_path), **options)
    assert needle in str(info.value)
    assert str(info.value).startswith("MQHandler")
    assert "\n" not in str(info.value)
