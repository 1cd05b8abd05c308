# gunicorn configuration: its own logs (gunicorn.error, gunicorn.access) and the app's through
# mqlogging, configured with gunicorn's logconfig_dict (applied by gunicorn with dictConfig).
# Run:  MQLOGGING_URL=amqp://guest:guest@localhost:5672/ \
#       gunicorn -c examples/gunicorn_conf.py --chdir examples flask_app:app
#
# logconfig_dict also turns on gunicorn's access log (logger gunicorn.access: one record per
# request). The master process configures logging; workers are forked from it and mqlogging
# resets the handler in each of them (own queue, own broker connection). A worker delivers its
# last records when it exits (SIGTERM: graceful shutdown).
from __future__ import annotations

import os

MQLOGGING_URL = os.environ.get("MQLOGGING_URL", "amqp://guest:guest@localhost:5672/")

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
graceful_timeout = 10

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "mqlogging.JsonFormatter", "static_fields": {"service": "shop-web"}},
        "console": {"format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "mq": {
            "class": "mqlogging.MQHandler",
            "formatter": "json",
            "endpoints": [MQLOGGING_URL],
            "spool": os.environ.get("MQLOGGING_SPOOL"),
        },
        "console": {"class": "logging.StreamHandler", "formatter": "console"},
    },
    "root": {"level": "INFO", "handlers": ["mq", "console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["mq", "console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["mq"], "propagate": False},
    },
}
