# A multiprocessing worker pool logging through one dictConfig'd MQHandler: every record of
# every worker reaches the broker exactly once.
# Run:  MQLOGGING_URL=amqp://guest:guest@localhost:5672/ python examples/worker_pool.py [TASKS]
#
# Configure logging once in the parent. Forked workers inherit the handler and mqlogging resets
# it in each child (fresh queue, own connection; the parent's queued records are never sent
# twice). A worker's records are delivered when it exits through multiprocessing's finalizers,
# so end the pool with close() + join() (a clean exit), not terminate(). With the "spawn" start
# method the workers import this module, so the configuration below runs in each of them too.
from __future__ import annotations

import logging
import logging.config
import multiprocessing
import os
import sys

MQLOGGING_URL = os.environ.get("MQLOGGING_URL", "amqp://guest:guest@localhost:5672/")

CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "mqlogging.JsonFormatter", "static_fields": {"service": "pool-demo"}}
    },
    "handlers": {
        "mq": {
            "class": "mqlogging.MQHandler",
            "formatter": "json",
            "endpoints": [MQLOGGING_URL],
            "spool": os.environ.get("MQLOGGING_SPOOL"),
        }
    },
    "root": {"level": "INFO", "handlers": ["mq"]},
}

log = logging.getLogger("pool.worker")


def work(task: int) -> int:
    log.info("task %d done", task, extra={"task": task})
    return task * task


def main(tasks: int) -> None:
    logging.config.dictConfig(CONFIG)
    logging.getLogger("pool").info("starting %d tasks", tasks)
    pool = multiprocessing.Pool(processes=4)
    try:
        results = pool.map(work, range(tasks), chunksize=8)
    finally:
        pool.close()  # workers exit cleanly and flush their handlers
        pool.join()
    logging.getLogger("pool").info("finished %d tasks, sum %d", tasks, sum(results))
    logging.shutdown()
    print(f"logged {tasks + 2} records to {MQLOGGING_URL.split('@')[-1]}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
