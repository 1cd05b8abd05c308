"""The ``ecs`` schema's plain path (issue #13): a record with a ``str`` message, no exception,
stack, span or context, and extras that are new top-level names, is encoded from cached parts
instead of a dict. It must give the very bytes the dict path gives, for every record, and
leave every other record to the dict path."""

from __future__ import annotations

import decimal
import enum
import json
import logging
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

import pytest

from mqlogging.formatting import JsonFormatter, bound_context

STAMP = {"producer": "host:1:abcd", "seq": 7}


class DictPath(JsonFormatter):
    """The same formatter with an overridden python-json-logger hook, which always takes the
    dict path: the reference the plain path is compared with."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)


def record(
    msg: Any = "job %d done in %.3f ms", args: Any = (7, 12.5), **kw: Any
) -> logging.LogRecord:
    extra = kw.pop("extra", None)
    return logging.getLogger(kw.pop("name", "tests.plain")).makeRecord(
        kw.pop("logger", "tests.plain"), kw.pop("level", logging.INFO), "/srv/app/jobs.py",
        kw.pop("lineno", 42), msg, args, kw.pop("exc_info", None), kw.pop("func", "run"),
        extra, kw.pop("sinfo", None),
    )  # fmt: skip


class Opaque:
    def __str__(self) -> str:
        return "opaque"


def _exc() -> Any:
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        return sys.exc_info()


# name: (record factory, taken by the plain path?)
CASES: dict[str, tuple[Callable[[], logging.LogRecord], bool]] = {
    "no args, no extras": (lambda: record("hello", ()), True),
    "args and extras": (lambda: record(extra={"job": 7, "queue": "default"}), True),
    "nested extras": (
        lambda: record(extra={"req": {"path": "/a", "ids": [1, 2.5, None, True]}}),
        True,
    ),
    "unicode and escapes": (
        lambda: record('naïve "quote" \\ \n\t\x01 ✓ 💥', (), extra={"ünï": "ç\u2028"}),
        True,
    ),
    "mapping argument": (lambda: record("%(a)s and %(b)d", ({"a": "x", "b": 2},)), True),
    "private extras skipped": (lambda: record(extra={"_secret": 1, "job": 2}), True),
    "custom level": (lambda: record("notice", (), level=25), True),
    "no function name": (lambda: record(func=None), True),
    "unknown type, via default": (lambda: record(extra={"obj": Opaque()}), True),
    "NaN": (lambda: record(extra={"ratio": float("nan")}), True),
    "int wider than 64 bits": (lambda: record(extra={"big": 2**70}), False),
    "lone surrogate": (lambda: record("bad \udc80 byte", ()), False),
    "unformattable args": (lambda: record("%d items", ("many",)), True),
    "extra shadows ours": (lambda: record(extra={"host": "web1"}), False),
    "extra is an ECS object": (lambda: record(extra={"user": {"name": "ann"}}), False),
    "dotted extra": (lambda: record(extra={"user.name": "ann"}), False),
    "extra named like the namespace": (lambda: record(extra={"mqlogging": 1}), False),
    "extra named extra": (lambda: record(extra={"extra": 1}), False),
    "dict message": (lambda: record({"message": "m", "k": 1}, ()), False),
    "exception": (lambda: record(exc_info=_exc()), False),
    "stack info": (lambda: record(sinfo="Stack:\n  x"), False),
}


def _pair(**options: Any) -> tuple[JsonFormatter, JsonFormatter]:
    return JsonFormatter(**options), DictPath(**options)


@pytest.mark.parametrize("encoder", ["orjson", "json"])
@pytest.mark.parametrize("case", list(CASES))
def test_plain_path_gives_the_dict_paths_bytes(case: str, encoder: str) -> None:
    """Every case, with either encoder: same bytes from both paths (the record keeps its id,
    so both format the same record), and the plain path is taken exactly for plain records."""
    make, plain = CASES[case]
    formatter, reference = _pair(encoder=encoder, static_fields={"service": "billing", "site": "x"})
    rec = make()
    got = formatter.format_message(rec, STAMP)
    assert got == reference.format_message(rec, STAMP)
    assert got == reference.format_message(rec, STAMP)  # a second formatting: same again
    taken = formatter._schema.encode_plain(rec, got.id, STAMP) is not None
    if encoder == "json" and case == "NaN":
        plain = False  # the stdlib encoder refuses NaN: the dict path's fallback writes it
    if encoder == "json" and case == "int wider than 64 bits":
        plain = True  # the stdlib encoder writes any int
    assert taken is plain


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"static_fields": {"event.dataset": "billing.log"}},  # merged into a per-record object
        {"static_fields": {"mqlogging.seq": "USER"}},  # moved under extra per record
        {"static_fields": {"labels": {"site": "x"}, "service": "api"}},
        {"hostname": 'höst "1"'},
        {"max_bytes": 1024},
    ],
    ids=["none", "per-record static", "namespace static", "ecs objects", "odd hostname", "cut"],
)
@pytest.mark.parametrize("stamp", [None, {}, STAMP, {**STAMP, "dropped": [{"first": 1}]}])
def test_options_and_stamps(options: dict[str, Any], stamp: dict[str, Any] | None) -> None:
    """Formatter options and handler stamps (none, empty, producer/seq, a drop marker's),
    and a record too large for ``max_bytes`` (the dict path truncates it): same bytes."""
    formatter, reference = _pair(**options)
    for rec in (record(extra={"job": 1, "service2": "y"}), record("x" * 3000, ())):
        assert formatter.format_message(rec, stamp) == reference.format_message(rec, stamp)


def test_context_fields_and_user_ids() -> None:
    """Context fields and a caller's own id (short: kept; too long: refused and kept under
    ``extra``) give the same bytes as the dict path."""
    formatter, reference = _pair()
    with bound_context(request="r-1"):
        rec = record()
        assert formatter.format_message(rec, STAMP) == reference.format_message(rec, STAMP)
    for rid in ("my-own-id", "x" * 300):
        rec = record()
        rec.mqlogging_id = rid
        assert formatter.format_message(rec, STAMP) == reference.format_message(rec, STAMP)


def test_call_sites_and_threads_do_not_mix() -> None:
    """The cached ``log`` and ``process`` parts belong to one call site and one thread: records
    from other lines, loggers, levels, templates and threads each get their own."""
    formatter, reference = _pair()
    records = [
        record(lineno=1),
        record(lineno=2),
        record(logger="other"),
        record(level=logging.ERROR),
        record("another %s", ("template",)),
    ]
    thread = threading.Thread(target=lambda: records.append(record()))
    thread.start()
    thread.join()
    bodies = set()
    for rec in records * 2:
        got = formatter.format_message(rec, STAMP)
        assert got == reference.format_message(rec, STAMP)
        bodies.add(got.body)
    assert len(bodies) == len(records)


def test_caches_stay_bounded() -> None:
    """A program with more call sites than the cache holds: the cache starts over, records
    stay right, memory stays bounded."""
    formatter, reference = _pair()
    for line in range(5000):
        rec = record(lineno=line)
        assert formatter.format_message(rec) == reference.format_message(rec)
    assert len(formatter._schema._log_cache) <= 4096


def test_messages_without_arguments_are_not_kept() -> None:
    """A message without arguments may be one of a kind (an f-string): its ``log`` object is
    encoded for the record and not kept, so such messages neither fill the cache nor stay in
    memory."""
    formatter, reference = _pair()
    for i in range(100):
        rec = record(f"job {i} done", ())
        assert formatter.format_message(rec) == reference.format_message(rec)
    assert len(formatter._schema._log_cache) == 0


def test_stamp_of_any_mapping() -> None:
    """A stamp that is a ``Mapping`` but not a ``dict`` (``format_message`` takes any) is
    merged into ``mqlogging`` as the dict path merges it, never written as its ``str``."""
    formatter, reference = _pair()
    rec = record()
    stamp = types.MappingProxyType(STAMP)
    got = formatter.format_message(rec, stamp)
    assert got == reference.format_message(rec, stamp)
    assert json.loads(got.body)["mqlogging"] == {"schema": "ecs", **STAMP}


def test_get_message_is_the_records_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The message is what ``record.getMessage()`` returns, as in the dict path: a program
    that patches ``LogRecord.getMessage`` (brace-style messages, redaction) or a record whose
    ``getMessage`` attribute is an ``extra`` value gets the same message either way."""
    formatter, reference = _pair()
    original = logging.LogRecord.getMessage
    monkeypatch.setattr(logging.LogRecord, "getMessage", lambda self: "[x] " + original(self))
    for rec in (record(), record("no arguments", ())):
        got = formatter.format_message(rec, STAMP)
        assert got == reference.format_message(rec, STAMP)
        assert json.loads(got.body)["message"].startswith("[x] ")
    monkeypatch.undo()
    rec = record(extra={"getMessage": "shadowed"})
    assert formatter.format_message(rec, STAMP) == reference.format_message(rec, STAMP)


def test_get_message_patched_before_import() -> None:
    """A program that wraps ``LogRecord.getMessage`` (functools.wraps keeps its name) before
    mqlogging is imported gets its own message too."""
    code = """if True:
        import functools, json, logging
        original = logging.LogRecord.getMessage
        @functools.wraps(original)
        def get_message(self):
            return "[x] " + original(self)
        logging.LogRecord.getMessage = get_message
        from mqlogging import JsonFormatter
        record = logging.LogRecord("t", 20, "f.py", 1, "job %d", (7,), None)
        print(json.loads(JsonFormatter().format_message(record).body)["message"])
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    assert out.stdout.strip() == "[x] job 7"


@pytest.mark.parametrize("field", ["lineno", "process", "thread"])
def test_equal_values_of_other_types_are_not_mixed(field: str) -> None:
    """``1``, ``True``, ``1.0`` and ``Decimal(1)`` are equal (and hash alike) but encode
    differently: a record from a factory that sets one of them gets its own ``log`` or
    ``process`` object, not the cached one of a record that had another."""
    formatter, reference = _pair()
    for value in (1, True, 1.0, decimal.Decimal(1), 1):
        rec = record()
        setattr(rec, field, value)
        assert formatter.format_message(rec, STAMP) == reference.format_message(rec, STAMP)


class Uptime:
    """A static field value whose text changes (read at each record by the dict path)."""

    calls = 0

    def __str__(self) -> str:
        Uptime.calls += 1
        return f"{Uptime.calls} s"


def test_static_values_that_change() -> None:
    """Static fields whose value can change after the formatter is made (a list the program
    appends to, an object whose ``str`` changes) are read per record, as in the dict path."""
    tags = ["a"]
    formatter, reference = _pair(static_fields={"tags": tags, "uptime": Uptime()})
    tags.append("b")
    rec = record()
    got = json.loads(formatter.format_message(rec, STAMP).body)
    expected = json.loads(reference.format_message(rec, STAMP).body)
    assert expected["tags"] == got["tags"] == ["a", "b"]
    assert got["uptime"] != expected["uptime"]  # each path read it once more, for this record
    assert formatter.format_message(rec, STAMP).body != formatter.format_message(rec, STAMP).body


def test_truncated_record_with_an_odd_stamp() -> None:
    """A record cut to ``max_bytes`` whose stamp holds a value the strict encoders refuse
    (an int wider than 64 bits, NaN) is still written, as valid JSON: never a raise."""
    for stamp in ({"seq": 2**70}, {"seq": float("nan")}):
        for encoder in ("orjson", "json"):
            formatter, reference = _pair(max_bytes=1024, encoder=encoder)
            rec = record("x" * 3000, ())
            got = formatter.format_message(rec, stamp)
            assert got == reference.format_message(rec, stamp)
            assert json.loads(got.body)["mqlogging"]["truncated"] is True


class FieldName(str, enum.Enum):
    """An extra name that is a ``str`` subclass (equal to ``"job"``, its ``str`` is not)."""

    JOB = "job"


class Renamed(str):
    def __str__(self) -> str:
        return "renamed"


@pytest.mark.parametrize("encoder", ["orjson", "json"])
def test_extra_names_of_str_subclasses(encoder: str) -> None:
    """An ``extra`` name that is a ``str`` subclass (a str enum) equal to a name seen before
    is named by the dict path as ``str(name)``: the plain path neither writes it under the
    equal name nor lets it decide what later plain names are."""
    formatter, reference = _pair(encoder=encoder)
    for extra in ({"job": 1}, {FieldName.JOB: 2}, {Renamed("job"): 3}, {"_job": 4},
                  {Renamed("_job"): 5}, {"job": 6}):  # fmt: skip
        rec = record(extra=extra)
        assert formatter.format_message(rec, STAMP) == reference.format_message(rec, STAMP)
    rec = record(extra={"job": 7})
    assert formatter._schema.encode_plain(rec, formatter.format_message(rec).id, STAMP) is not None


def _user_first(missing: str | None) -> logging.LogRecord:
    """A record whose user attribute comes before the stdlib's own (a factory that sets it
    before ``LogRecord.__init__`` runs), with one of the stdlib's own deleted (or none): the
    last own attribute is then where ``__init__`` puts it, with the user one before it."""
    rec = logging.LogRecord.__new__(logging.LogRecord)
    rec.request_id = "r-1"
    rec.__init__("tests.plain", logging.INFO, "/srv/app/jobs.py", 42, "job %d", (7,), None)  # type: ignore[misc]
    if missing is not None:
        delattr(rec, missing)
    return rec


def _made_user_first() -> logging.LogRecord:
    """``makeLogRecord`` of a dict with a user key first, its keys then put in that order."""
    rec = logging.makeLogRecord({"request_id": "r-1", "msg": "job %d", "args": (7,)})
    attrs = dict(rec.__dict__)
    del attrs["msecs"]
    rec.__dict__ = {"request_id": attrs.pop("request_id"), **attrs}
    return rec


STD_NAMES = list(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)


@pytest.mark.parametrize("missing", [None, *STD_NAMES])
def test_extras_before_the_records_own_attributes(missing: str | None) -> None:
    """Whatever the order of a record's attributes (issue #13 defect: the scan assumed the
    stdlib's own come first), an extra is never skipped: both paths give the same bytes
    with the extra in them, or (an attribute the schema reads is missing) both raise."""
    formatter, reference = _pair()
    rec = _user_first(missing)
    try:
        got = formatter.format_message(rec, STAMP)
    except (AttributeError, TypeError):
        with pytest.raises((AttributeError, TypeError)):
            reference.format_message(rec, STAMP)
        return
    assert got == reference.format_message(rec, STAMP)
    assert json.loads(got.body)["request_id"] == "r-1"


@pytest.mark.parametrize("schema", ["ecs", "logstash", "flat", "otel"])
def test_make_log_record_with_user_keys_first(schema: str) -> None:
    """A record from ``makeLogRecord`` whose user key comes first keeps it in every
    schema (``otel``: as an attribute)."""
    rec = _made_user_first()
    got = JsonFormatter(schema=schema).format_message(rec, STAMP)
    doc = json.loads(got.body)
    assert (doc["attributes"] if schema == "otel" else doc)["request_id"] == "r-1"
    if schema == "ecs":
        assert got == DictPath().format_message(rec, STAMP)
