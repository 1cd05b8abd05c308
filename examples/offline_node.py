# An offline node (a grid worker node, a ship, a lab PC): log with no broker at all, then ship
# the spool later with `mqlogging spool replay`.
# Run:  MQLOGGING_URL=amqp://guest:guest@localhost:5672/ python examples/offline_node.py [DIR]
#
# Step 1 runs on the node: the handler's endpoint is local://DIR, a spool directory used as the
# queue (JSON lines, one record per line; `jq . DIR/*.jsonl` reads it). Step 2 runs wherever a
# broker is reachable, on the same node once it is online or on another host the directory was
# copied to (rsync/scp: it holds no absolute paths):
#     mqlogging spool inspect DIR
#     mqlogging spool replay DIR --to amqp://broker/
# replay publishes in order with broker confirms and deletes only what the broker confirmed, so
# an interrupted replay is simply run again.
from __future__ import annotations

import logging
import logging.config
import os
import subprocess
import sys
import tempfile

MQLOGGING_URL = os.environ.get("MQLOGGING_URL", "amqp://guest:guest@localhost:5672/")


def log_offline(spool: str, records: int) -> None:
    """Step 1: the node logs to its spool directory; no network is touched."""
    logging.config.dictConfig(
        {
            "version": 1,
            "formatters": {
                "json": {"()": "mqlogging.JsonFormatter", "static_fields": {"node": "wn-042"}}
            },
            "handlers": {
                "spool": {
                    "class": "mqlogging.MQHandler",
                    "formatter": "json",
                    "endpoints": [f"local://{spool}"],
                    "spool": False,  # the endpoint is already a spool: no failover spool
                }
            },
            "root": {"level": "INFO", "handlers": ["spool"]},
        }
    )
    log = logging.getLogger("pilot")
    for i in range(records):
        log.info("payload step %d", i, extra={"step": i})
    logging.shutdown()


def ship(spool: str) -> None:
    """Step 2: replay the spool to the broker (here, the same machine once online)."""
    cli = [sys.executable, "-m", "mqlogging", "spool"]
    subprocess.run([*cli, "inspect", spool], check=True)
    subprocess.run([*cli, "replay", spool, "--to", MQLOGGING_URL], check=True)


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="offline-node-")
    log_offline(directory, int(os.environ.get("RECORDS", "50")))
    ship(directory)
