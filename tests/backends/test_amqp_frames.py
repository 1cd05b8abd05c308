"""The AMQP producer's own ``basic.publish`` frames are byte for byte pika's (issue #13)."""

from __future__ import annotations

from typing import Any

import pytest

pika = pytest.importorskip("pika")

from pika import frame, spec  # noqa: E402

from harness.brokers import RabbitMQ  # noqa: E402
from mqlogging._ids import new_id  # noqa: E402
from mqlogging._types import Message  # noqa: E402
from mqlogging.backends.amqp import AMQPProducer, _PublishFrames  # noqa: E402
from mqlogging.errors import NotConfirmed  # noqa: E402


def _pika_bytes(
    channel: int, exchange: str, key: str, rid: str, body: bytes, mode: int, frame_max: int
) -> bytes:
    """What pika's ``Connection._send_message`` writes for the same publish."""
    props = spec.BasicProperties(
        content_type="application/json",
        delivery_mode=mode,
        message_id=rid,
        headers={"mqlogging-id": rid},
    )
    method = spec.Basic.Publish(exchange=exchange, routing_key=key, mandatory=True)
    out = [
        frame.Method(channel, method).marshal(),
        frame.Header(channel, len(body), props).marshal(),
    ]
    step = frame_max - 8
    out += [frame.Body(channel, body[i : i + step]).marshal() for i in range(0, len(body), step)]
    return b"".join(out)


@pytest.mark.parametrize(
    ("exchange", "key", "rid", "body", "mode"),
    [
        ("logs", "app.logs", "0190a1b2c3d4e5f60718293a4b5c6d7e", b'{"a":1}', 2),
        ("", "q", "x", b"", 1),
        ("ex\u00e9", "k" * 255, "\u00e9" * 100, b"z" * 300_000, 2),  # split into body frames
        ("logs", "k", "id", b"b" * (131072 - 8), 2),  # exactly one full body frame
        ("logs", "k", "id", b"b" * (131072 - 7), 2),  # one byte more: two body frames
        ("logs", "k", "id", b"b" * 2 * (131072 - 8), 2),  # exactly two full body frames
    ],
)
def test_frames_equal_pika(exchange: str, key: str, rid: str, body: bytes, mode: int) -> None:
    """For any exchange, routing key, record id, body size (incl. bodies split over several
    body frames) and delivery mode, the producer writes exactly pika's bytes, and counts
    as many frames as pika would (its ``frames_sent``)."""
    frames = _PublishFrames(
        channel=3, exchange=exchange, routing_key=key, delivery_mode=mode, frame_max=131072
    )
    expected = _pika_bytes(3, exchange, key, rid, body, mode, 131072)
    assert expected == frames.message(rid, body)
    assert 2 + len(range(0, len(body), 131072 - 8)) == frames.frame_count(len(body))


@pytest.mark.rabbitmq
def test_frames_follow_each_connections_frame_max(rabbitmq: Any, queue_name: str) -> None:
    """The body frames are cut at the frame_max negotiated on the *current* connection: after a
    failover from a broker with the default frame_max (128 KiB) to one configured with
    ``frame_max = 8192``, records larger than 8 KiB are still published and confirmed (cut
    at the first broker's size, every batch would break the second one's connection)."""
    small = RabbitMQ(extra_config="frame_max = 8192")  # own temp dir: close() just kills it
    small.start()
    try:
        query = f"?exchange=&queue={queue_name}&connect_timeout=1"
        url = f"amqp://guest:guest@{small.host}:{small.amqp_port},{rabbitmq.host}:{rabbitmq.amqp_port}/{query}"
        big = [Message(new_id(), b'{"pad":"' + b"x" * 20_000 + b'"}') for _ in range(3)]
        with AMQPProducer(url) as producer:
            small.freeze()  # accepts TCP, never answers: the producer goes on to the next host
            try:
                producer.publish_batch(big)  # on the default-sized broker
            finally:
                small.thaw()
            _delete_queue(rabbitmq.amqp_url, queue_name)  # unroutable there: fail over
            with pytest.raises(NotConfirmed):
                producer.publish_batch([Message(new_id(), b"{}")])
            producer.publish_batch(big)  # reconnects from the first host: the small broker
        assert small.queue_depth(queue_name) == 3
    finally:
        small.close()


def _delete_queue(url: str, queue: str) -> None:
    """Delete ``queue`` through a connection of its own."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_delete(queue)
    finally:
        connection.close()
