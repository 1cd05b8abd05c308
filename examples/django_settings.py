# Django settings fragment: ship every log record (yours and Django's) with mqlogging.
# Use: copy LOGGING (and the two variables above it) into your project's settings.py.
# Try: MQLOGGING_URL=amqp://guest:guest@localhost:5672/ python examples/django_settings.py
#      (configures Django with this LOGGING, logs a few records, and exits)
#
# Django applies LOGGING with logging.config.dictConfig at startup, in every process (runserver,
# each gunicorn/uwsgi worker, management commands, celery). MQHandler never blocks a request: it
# queues the record and a background thread publishes it; if the broker is down, records wait
# in the spool directory and are sent, in order, once it is back.
from __future__ import annotations

import os

MQLOGGING_URL = os.environ.get("MQLOGGING_URL", "amqp://guest:guest@localhost:5672/")
MQLOGGING_SPOOL = os.environ.get("MQLOGGING_SPOOL")  # None: ~/.local/state/mqlogging/spool/...

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "mqlogging.JsonFormatter",
            "schema": "ecs",
            "static_fields": {"service": "mysite", "environment": "production"},
        },
        "console": {"format": "{levelname} {name}: {message}", "style": "{"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "console", "level": "WARNING"},
        "mq": {
            "class": "mqlogging.MQHandler",
            "formatter": "json",
            "endpoints": [MQLOGGING_URL],
            "spool": MQLOGGING_SPOOL,
            "level": "INFO",
        },
    },
    "root": {"handlers": ["console", "mq"], "level": "INFO"},
    "loggers": {
        # Django's request errors (500s, with traceback) and security warnings.
        "django": {"handlers": ["console", "mq"], "level": "INFO", "propagate": False},
        # Chatty below WARNING; raise it to INFO to ship SQL timings.
        "django.db.backends": {"level": "WARNING"},
    },
}


if __name__ == "__main__":
    import logging

    import django
    from django.conf import settings

    settings.configure(DEBUG=False, LOGGING=LOGGING, INSTALLED_APPS=[], ALLOWED_HOSTS=["*"])
    django.setup()  # runs logging.config.dictConfig(LOGGING), as in a real project
    logging.getLogger("myapp.views").info("order placed", extra={"order_id": 42})
    logging.getLogger("django.request").error("Internal Server Error: /checkout")
    logging.shutdown()  # delivers what is queued (at most close_timeout), spools the rest
    print("sent 2 records to", MQLOGGING_URL.split("@")[-1])
