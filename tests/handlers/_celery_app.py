"""A small Celery application for tests/handlers/test_pool_children.py (run by a real worker).

The environment names the Celery broker (``MQLT_CELERY_BROKER``), the log endpoint
(``MQLT_LOG_URL``) and the spool (``MQLT_SPOOL``). The handler is built at import, in the
worker's main process, so the prefork children inherit it the way applications configure
logging before Celery forks.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging

from mqlogging import MQHandler

app = Celery("mqlt", broker=os.environ["MQLT_CELERY_BROKER"], backend="rpc://")
app.conf.update(
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

handler = MQHandler(os.environ["MQLT_LOG_URL"], spool=os.environ["MQLT_SPOOL"])
log = logging.getLogger("mqlt.tasks")
log.setLevel(logging.INFO)
log.propagate = False
log.addHandler(handler)
_emitted = itertools.count()  # emit order in this process (tasks run in any order)


@setup_logging.connect
def _keep_our_logging(**kwargs: Any) -> None:
    """Connected so that Celery leaves logging as the application configured it."""


@app.task(name="mqlt.log")
def log_task(i: int) -> int:
    log.info("task %d", i, extra={"seq": i, "worker": os.getpid(), "n": next(_emitted)})
    return i
