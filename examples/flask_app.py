# A Flask app whose logs (its own, Flask's request errors with tracebacks) go through mqlogging.
# Run:  MQLOGGING_URL=amqp://guest:guest@localhost:5672/ python examples/flask_app.py
#       then open http://127.0.0.1:5000/ and http://127.0.0.1:5000/fail
# Or:   gunicorn -c examples/gunicorn_conf.py --chdir examples flask_app:app
#
# Configure logging *before* creating the app (Flask's docs say so): app.logger then propagates
# to the root logger and its MQHandler. Each record carries the request's method, path and a
# request id, bound with mqlogging.bind_context for the duration of the request.
from __future__ import annotations

import logging
import logging.config
import os
import uuid

from flask import Flask, g, request

import mqlogging

MQLOGGING_URL = os.environ.get("MQLOGGING_URL", "amqp://guest:guest@localhost:5672/")

# Under gunicorn (examples/gunicorn_conf.py) the server has configured logging already.
if not logging.getLogger().handlers:
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "json": {"()": "mqlogging.JsonFormatter", "static_fields": {"service": "shop"}}
            },
            "handlers": {
                "mq": {
                    "class": "mqlogging.MQHandler",
                    "formatter": "json",
                    "endpoints": [MQLOGGING_URL],
                    "spool": os.environ.get("MQLOGGING_SPOOL"),
                },
                "console": {"class": "logging.StreamHandler", "level": "WARNING"},
            },
            "root": {"level": "INFO", "handlers": ["mq", "console"]},
        }
    )

app = Flask("shop")
log = logging.getLogger("shop.views")


@app.before_request
def bind_request_fields() -> None:
    request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
    g.mqlogging_token = mqlogging.bind_context(
        http={"request": {"method": request.method, "id": request_id}},
        url={"path": request.path},
    )


@app.teardown_request
def unbind_request_fields(_exc: BaseException | None) -> None:
    token = g.pop("mqlogging_token", None)
    if token is not None:
        token.reset()


@app.route("/")
def index() -> str:
    log.info("home page served", extra={"visitor": request.remote_addr})
    return "hello\n"


@app.route("/fail")
def fail() -> str:
    # Unhandled: Flask logs "Exception on /fail [GET]" with the traceback on app.logger (ERROR)
    # and answers 500; the record carries error.type/message/stack_trace.
    raise RuntimeError("payment backend unavailable")


if __name__ == "__main__":
    app.run()
