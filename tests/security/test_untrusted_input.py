"""Untrusted input at the collector: whatever arrives on a queue, the collector dead-letters
what it cannot store (with the reason), stores the rest, and keeps running.

Two layers:

- end to end, against a real RabbitMQ queue: oversize, invalid UTF-8, invalid JSON, deeply
  nested JSON, a field-count explosion and non-object JSON, interleaved with good records;
- property-based (hypothesis): :func:`mqlogging.collector.service.decode` on arbitrary bytes and
  arbitrary JSON never raises, and what it accepts is a JSON object the sinks can encode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.brokers import RabbitMQ
from harness.helpers import unique_name, wait_until
from mqlogging._ids import new_id
from mqlogging._types import Delivery, Message
from mqlogging.backends import open_producer
from mqlogging.collector.config import parse_config
from mqlogging.collector.service import CollectorService, decode
from mqlogging.collector.sinks.base import dumps

MAX_BYTES = 64 * 1024
MAX_DEPTH = 32


def _good(i: int) -> dict[str, Any]:
    return {"@timestamp": "2024-05-01T12:00:00.000000Z", "event": {"id": new_id()},
            "message": f"good {i}", "seq": i}  # fmt: skip


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


POISON: dict[str, bytes] = {
    "oversize": b'{"message":"' + b"x" * (MAX_BYTES + 10) + b'"}',
    "invalid UTF-8": b'{"message":"\xff\xfe\xc3\x28"}',
    "invalid JSON": b'{"message": "unterminated',
    "nested too deeply": _nested(MAX_DEPTH + 5),
    "nested too deeply (stack bomb)": b"[" * 200_000 + b"]" * 200_000,
    "not a JSON object (array)": b"[1,2,3]",
    "not a JSON object (string)": b'"just a string"',
    "not a JSON object (null)": b"null",
    "not a JSON object (number)": b"12345",
}
# 50k fields in 600 KiB: under the byte limit; Elasticsearch would refuse the mapping (its
# index.mapping.total_fields.limit is 1000) and a wide record costs the sink dearly.
FIELD_BOMB = json.dumps({f"f{i}": i for i in range(50_000)}).encode()


def _letters(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            for line in path.read_bytes().splitlines():
                try:
                    outer = json.loads(line)
                except ValueError:
                    continue
                # the local backend wraps the body: {"id":..., "body": {...}} or similar
                body = outer.get("body", outer) if isinstance(outer, dict) else outer
                if isinstance(body, str):
                    body = json.loads(body)
                out.append(body)
    return out


class TestCollectorSurvivesPoison:
    def _run(
        self, broker: RabbitMQ, tmp_path: Path, bodies: list[bytes], pipeline: dict[str, Any]
    ) -> tuple[CollectorService, list[dict[str, Any]], list[dict[str, Any]]]:
        queue = unique_name("mqlt-poison")
        url = f"{broker.amqp_url}?exchange=&queue={queue}"
        with open_producer(url) as producer:
            producer.publish_batch([Message(new_id(), b) for b in bodies])
        out = tmp_path / "out.jsonl"
        dead = tmp_path / "dead"
        config = parse_config(
            {
                "sources": [{"url": url}],
                "sinks": [{"type": "file", "path": str(out)}],
                "dead_letter": {"url": f"local://{dead}"},
                "pipeline": {"batch_max_wait": 0.2, **pipeline},
                "http": {"listen": ""},
                "collector": {"shutdown_timeout": 5.0},
            },
            env={},
        )
        svc = CollectorService(config)
        svc.start()
        try:
            wait_until(lambda: svc.metrics.value("acked") >= len(bodies), timeout=60)
            assert broker.queue_depth(queue) == 0
        finally:
            svc.close()
        stored = [json.loads(line) for line in out.read_text().splitlines()]
        return svc, stored, _letters(dead)

    def test_poison_is_dead_lettered_with_reasons_and_good_records_land(
        self, mgmt_rabbitmq: RabbitMQ, tmp_path: Path
    ) -> None:
        """Each kind of poison message is dead-lettered with a reason naming it; the 20 good
        records around them are stored once each; every message is acked; the worker is
        still alive afterwards (a record published later is stored too)."""
        good = [_good(i) for i in range(20)]
        bodies = [json.dumps(g).encode() for g in good[:10]]
        bodies += list(POISON.values())
        bodies += [json.dumps(g).encode() for g in good[10:]]
        svc, stored, letters = self._run(
            mgmt_rabbitmq, tmp_path, bodies,
            {"max_message_bytes": MAX_BYTES, "max_depth": MAX_DEPTH},
        )  # fmt: skip
        assert sorted(d["seq"] for d in stored) == list(range(20))
        assert svc.metrics.value("dead_lettered") == len(POISON)
        reasons = sorted(letter["reason"] for letter in letters)
        assert len(reasons) == len(POISON), reasons
        for kind in POISON:
            prefix = kind.split(" (")[0]
            assert any(r.startswith(prefix) for r in reasons), (kind, reasons)
        assert all("\n" not in r and len(r) < 500 for r in reasons), reasons

    def test_field_count_explosion_is_dead_lettered(
        self, mgmt_rabbitmq: RabbitMQ, tmp_path: Path
    ) -> None:
        """An object with 50,000 fields (under the byte limit) is dead-lettered as having too
        many fields instead of being sent to the sinks."""
        _svc, stored, letters = self._run(
            mgmt_rabbitmq, tmp_path, [FIELD_BOMB, json.dumps(_good(0)).encode()],
            {"max_message_bytes": 1024 * 1024, "max_depth": MAX_DEPTH},
        )  # fmt: skip
        assert [d["seq"] for d in stored] == [0]
        assert len(letters) == 1
        assert "fields" in letters[0]["reason"]


# -- property-based ---------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=60,
)


def _check(body: bytes) -> None:
    delivery = Delivery(id=new_id(), body=body, tag=1, headers={}, redelivered=False)
    record, reason = decode(delivery, max_bytes=MAX_BYTES, max_depth=MAX_DEPTH,
                            enrich=[("event.ingested", "2024-01-01T00:00:00Z")])  # fmt: skip
    if record is None:
        assert reason
        assert "\n" not in reason
        assert len(reason) < 1000
        return
    assert reason == ""
    assert isinstance(record.doc, dict)
    assert isinstance(record.id, str)
    assert 0 < len(record.id.encode()) <= 512
    dumps(record.doc)  # whatever is accepted, the sinks can encode


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_decode_never_raises_on_arbitrary_bytes(body: bytes) -> None:
    """Arbitrary bytes: decode() returns a record or a one-line reason, never raises."""
    _check(body)


def _check_json(value: Any, how: str) -> None:
    if how == "wrapped":
        value = {"event": {"id": value}, "id": value, "payload": value}
    text = json.dumps(value, ensure_ascii=(how == "ascii"))
    body = text.encode("utf-8", "surrogatepass")
    if how == "truncated":
        body = body[: len(body) // 2]
    _check(body)


_HOW = st.sampled_from(["plain", "ascii", "truncated", "wrapped"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json, _HOW)
def test_decode_never_raises_on_arbitrary_json(value: Any, how: str) -> None:
    """Arbitrary JSON values (objects, arrays, scalars; unicode, big ints), also truncated or
    nested in an object: decode() returns a record or a one-line reason, never raises, and any
    accepted record can be encoded by the sinks. 200 examples; 1000 in the slow sibling."""
    _check_json(value, how)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json, _HOW)
def test_decode_never_raises_on_arbitrary_json_1000(value: Any, how: str) -> None:
    """The same with 1000 examples (``make test-slow``: ~15 s of the 2-core CI machine)."""
    _check_json(value, how)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=5000), st.sampled_from([b"[", b'{"a":']))
def test_decode_never_raises_on_deep_nesting(depth: int, opener: bytes) -> None:
    """Nesting of any depth (balanced or not) is a reason, not a RecursionError."""
    closer = b"]" if opener == b"[" else b"}"
    _check(opener * depth + b"1" + closer * depth)
    _check(opener * depth)
