"""The AMQP producer's own ``basic.publish`` frames are byte for byte pika's (issue #13)."""

from __future__ import annotations

import pytest

pika = pytest.importorskip("pika")

from pika import frame, spec  # noqa: E402

from mqlogging.backends.amqp import _PublishFrames  # noqa: E402


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
    ],
)
def test_frames_equal_pika(exchange: str, key: str, rid: str, body: bytes, mode: int) -> None:
    """For any exchange, routing key, record id, body size (incl. bodies split over several
    body frames) and delivery mode, the producer writes exactly pika's bytes."""
    frames = _PublishFrames(
        channel=3, exchange=exchange, routing_key=key, delivery_mode=mode, frame_max=131072
    )
    expected = _pika_bytes(3, exchange, key, rid, body, mode, 131072)
    assert expected == frames.message(rid, body)
