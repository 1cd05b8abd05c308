"""The direct path of JsonFormatter.format_message and python-json-logger's template method
(``add_fields`` -> ``process_log_record`` -> ``jsonify_log_record``, taken when a subclass
overrides a hook) give identical documents, for every schema and a range of records."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqlogging.formatting import SCHEMAS, JsonFormatter, bound_context

# Names that collide with fields the schemas own, mixed with plain ones.
_KEYS = st.sampled_from(
    ["job", "queue", "host", "log.level", "message", "id", "@timestamp", "service.name",
     "trace_id", "code.file.path", "mqlogging", "extra", "user", "a.b.c", "levelname"]
)  # fmt: skip
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.floats(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=6,
)


class _Template(JsonFormatter):
    """Takes python-json-logger's template method (an overridden hook), changing nothing."""

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return log_data


def _record(msg: Any, args: tuple[Any, ...], extra: dict[str, Any], exc: bool) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("app.mod", logging.WARNING, __file__, 7, msg, args, exc_info)
    for key, value in extra.items():
        if key not in record.__dict__:
            record.__dict__[key] = value
    return record


def _doc(formatter: JsonFormatter, record: logging.LogRecord) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(formatter.format_message(record, {"seq": 1}).body)
    doc.pop("observedTimeUnixNano", None)  # otel: the time of formatting, not of the record
    return doc


@pytest.mark.parametrize("schema", [s for s in SCHEMAS if s != "flat"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    msg=st.one_of(st.just("job %s done"), st.dictionaries(_KEYS, _VALUES, max_size=3)),
    extra=st.dictionaries(_KEYS, _VALUES, max_size=4),
    context=st.dictionaries(_KEYS, _VALUES, max_size=2),
    exc=st.booleans(),
)
def test_direct_and_template_paths_agree(
    schema: str,
    msg: Any,
    extra: dict[str, Any],
    context: dict[str, Any],
    exc: bool,
) -> None:
    """Same record, same id: the direct path's document equals the template method's."""
    static = {"service": "api", "site": "LCG.CERN.ch"}
    direct = JsonFormatter(schema=schema, static_fields=static, hostname="h1")
    template = _Template(schema=schema, static_fields=static, hostname="h1")
    args = () if isinstance(msg, dict) else (42,)
    record = _record(msg, args, extra, exc)
    with bound_context(**context):
        assert _doc(template, record) == _doc(direct, record)
