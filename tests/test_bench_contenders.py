"""benchmarks/bench_contenders.py's own machinery: records are counted at the destination, and
a contender runs in a fresh process through the parent/child protocol."""

from __future__ import annotations

import socket

from benchmarks._receivers import TcpLineCounter, records_in
from benchmarks.bench_contenders import Contender, measure


def test_packed_messages_count_their_records() -> None:
    """A packed message counts as the records its header names; any other as one."""
    assert records_in({"mqlogging-count": 200}) == 200
    assert records_in({}) == 1
    assert records_in(None) == 1
    assert records_in({"mqlogging-count": "not a number"}) == 1


def test_tcp_destination_counts_lines() -> None:
    """The Logstash-like TCP destination counts newline-terminated records as they arrive."""
    counter = TcpLineCounter()
    try:
        with socket.create_connection(("127.0.0.1", counter.port)) as sock:
            sock.sendall(b'{"a": 1}\n{"a": 2}\n{"a": 3}\n')
        assert counter.counter.wait(3, 10.0, 10.0)
        assert counter.counter.count == 3
    finally:
        counter.close()


def test_a_contender_runs_in_a_fresh_process() -> None:
    """The NullHandler row end to end: child started, warm-up, tight loop, CPU, paced phase,
    close; every record delivered and the figures positive."""
    result = measure(Contender("NullHandler", {"kind": "null"}), 300)
    assert (result.emitted, result.delivered) == (300, 300)
    assert result.caller_us > 0
    assert result.cpu_us > 0
    assert result.p99 >= result.p50 > 0
