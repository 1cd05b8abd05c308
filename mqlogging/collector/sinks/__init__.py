"""Collector sinks: where records go. Each sink module keeps its config beside its code.

:data:`SINK_TYPES` is the one table from a ``[[sinks]]`` ``type`` to the config that reads
it: adding a sink is one new module (a config with ``from_table`` and ``build``, and the sink)
plus one line here. :func:`build_sink` turns a sink config into a sink.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .._table import Table
from .base import Outcome, Record, Result, Sink, SinkConfig
from .broker import BrokerSinkConfig
from .elasticsearch import ElasticsearchSinkConfig
from .file import FileSinkConfig, NullSinkConfig
from .logstash import LogstashSinkConfig
from .otlp import OtlpSinkConfig

if TYPE_CHECKING:  # the metrics module needs prometheus-client; sinks alone do not
    from ..metrics import CollectorMetrics

__all__ = [
    "SINK_TYPES",
    "BrokerSinkConfig",
    "ElasticsearchSinkConfig",
    "FileSinkConfig",
    "LogstashSinkConfig",
    "NullSinkConfig",
    "OtlpSinkConfig",
    "Outcome",
    "Record",
    "Result",
    "Sink",
    "SinkConfig",
    "build_sink",
]

SINK_TYPES: Final[dict[str, Callable[[Table], SinkConfig]]] = {
    "elasticsearch": ElasticsearchSinkConfig.from_table,
    "logstash": LogstashSinkConfig.from_table,
    "otlp": OtlpSinkConfig.from_table,
    "file": FileSinkConfig.from_table,
    "stdout": FileSinkConfig.from_table,
    "null": NullSinkConfig.from_table,
    "broker": BrokerSinkConfig.from_table,
}
"""``type`` of a ``[[sinks]]`` table -> the constructor of its config, in the order the
"known:" list of an error message shows them. A plugin or a test adds a sink type by adding an
entry (before the configuration is read)."""


def build_sink(config: SinkConfig, metrics: CollectorMetrics | None = None) -> Sink:
    """Instantiate the sink for ``config`` (imports the optional client library lazily);
    ``metrics`` receives the sink's own counters."""
    return config.build(metrics)
