# Trace correlation and "what broke in the last hour": records logged inside OpenTelemetry spans
# carry the trace and span ids, every record keeps its message template, and `mqlogging errors`
# groups the errors by template.
# Run:  python examples/what_broke.py [FILE]   (needs opentelemetry-sdk; FILE: JSON lines)
#
# The same command reads Elasticsearch, where the collector stores the records:
#     mqlogging errors --es https://es:9200 --index 'logs-*' --since 1h --api-key-env ES_API_KEY
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from mqlogging import JsonFormatter
from mqlogging.cli import main as mqlogging

trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("billing")
log = logging.getLogger("billing")


def charge(order: int) -> None:
    with tracer.start_as_current_span("charge"):
        if order % 3 == 0:
            log.error("card declined for order %d", order, extra={"order": order})
        elif order % 5 == 0:
            log.warning("slow payment gateway: %d ms", 1200 + order)
        else:
            log.info("charged order %d", order)


def run(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter(schema="ecs"))  # or "otel", "logstash", "flat"
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        for order in range(1, 31):
            charge(order)
    finally:
        log.removeHandler(handler)
        handler.close()
    mqlogging(["errors", "--file", str(path), "--since", "1h"])


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "app.jsonl"
    run(target)
