"""Collector sinks: where records go. :func:`build_sink` turns a sink config into a sink."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import (
    ElasticsearchSinkConfig,
    FileSinkConfig,
    LogstashSinkConfig,
    NullSinkConfig,
    SinkConfig,
)
from .base import Outcome, Record, Result, Sink

if TYPE_CHECKING:  # the metrics module needs prometheus-client; sinks alone do not
    from ..metrics import CollectorMetrics

__all__ = ["Outcome", "Record", "Result", "Sink", "build_sink"]


def build_sink(config: SinkConfig, metrics: CollectorMetrics | None = None) -> Sink:
    """Instantiate the sink for ``config`` (imports the optional client library lazily);
    ``metrics`` receives the sink's own counters."""
    if isinstance(config, ElasticsearchSinkConfig):
        from .elasticsearch import ElasticsearchSink

        counter = None if metrics is None else metrics.index_time_out_of_window.labels(config.label)
        return ElasticsearchSink(config, out_of_window=None if counter is None else counter.inc)
    if isinstance(config, LogstashSinkConfig):
        from .logstash import make_logstash_sink

        return make_logstash_sink(config)
    if isinstance(config, FileSinkConfig):
        from .file import FileSink, StdoutSink

        return StdoutSink(config) if config.type == "stdout" else FileSink(config)
    if isinstance(config, NullSinkConfig):
        from .file import NullSink

        return NullSink(config)
    msg = f"unknown sink configuration {type(config).__name__}"  # pragma: no cover
    raise TypeError(msg)  # pragma: no cover
