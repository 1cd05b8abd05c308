# structlog into mqlogging: the event dict's keys arrive as fields, two ways.
# Run: MQLOGGING_URL=amqp://localhost:5672/?exchange=logs python examples/structlog_app.py
"""Log with structlog through :class:`mqlogging.MQHandler`.

1. Directly (``mqlogging.structlog.configure``): structlog hands each event dict to the handler
   without stdlib loggers; every key is a field, ``event`` the message.
2. Through structlog's stdlib integration (``render_to_log_kwargs``), for applications whose
   stdlib handlers should see the same records.
"""

from __future__ import annotations

import logging
import os

import structlog

from mqlogging import MQHandler
from mqlogging.structlog import configure


def main() -> None:
    url = os.environ.get("MQLOGGING_URL", "amqp://guest:guest@localhost:5672/?exchange=logs")
    handler = MQHandler(
        url, spool=os.environ.get("MQLOGGING_SPOOL"), static_fields={"service": "shop"}
    )

    # 1. Direct: structlog -> MQHandler.
    configure(handler, level=logging.INFO)
    log = structlog.get_logger("shop.orders").bind(tenant="acme")
    log.info("order placed", order_id=42, amount=19.99)
    try:
        raise TimeoutError("payment backend timed out")
    except TimeoutError:
        log.exception("payment failed", order_id=42)

    # 2. structlog's stdlib integration: the event dict becomes ``extra``.
    std = logging.getLogger("shop.stdlib")
    std.setLevel(logging.INFO)
    std.addHandler(handler)
    slog = structlog.wrap_logger(
        std,
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.render_to_log_kwargs,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    slog.info("order %d shipped", 42, carrier="ups")

    handler.close()  # flushes: every record is confirmed by the broker (or spooled)
    print("logged 3 records")


if __name__ == "__main__":
    main()
