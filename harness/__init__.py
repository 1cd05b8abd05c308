"""Shared tooling for the tests, the benchmarks and ``make faults`` (not part of the shipped
``mqlogging`` package; imported from the repository root).

One module per job, none of them imports pytest, so a benchmark or a script can use any of them:

- :mod:`harness.brokers` — private RabbitMQ / ActiveMQ / noida-db processes on free loopback
  ports (start, stop, kill, restart with the same ports and data).
- :mod:`harness.cluster` — a three-node RabbitMQ cluster on loopback (kill / stop / restart
  one node, find a quorum queue's leader, drain through a multi-host URL).
- :mod:`harness.tls` — a throwaway CA and the certificates the TLS tests need;
  :mod:`harness.tls_brokers` — the TLS-enabled broker variants built on both.
- :mod:`harness.helpers` — ``wait_until`` (poll, never sleep), ``unique_name``, ``free_port``,
  ``BlackholeServer``, ``die_with_parent``.
- :mod:`harness.drain` — endpoint URLs per test queue; drain AMQP/STOMP queues to count records.
- :mod:`harness.collector` — the collector as a child process, its TOML config, Elasticsearch
  and Logstash stand-ins, publishing helpers.
- :mod:`harness.faults` — the fault-injection runner (``python -m harness.faults``,
  ``make faults``).

How it is found without ``sys.path`` edits: pytest puts the repository root on ``sys.path``
(``pythonpath`` in ``pyproject.toml``); ``python -m harness.faults`` and
``python -m benchmarks.run`` run from the root, which Python puts first; the editable dev
install (``pip install -e .``) adds the root too.
"""
