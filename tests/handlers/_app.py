"""A small application run in a subprocess by the handler tests (exit, kill -9, fork...).

Usage: python tests/handlers/_app.py MODE URL SPOOL [N] [OPTIONS-JSON]. The repository root is
put on sys.path so the working tree's mqlogging is used. Output lines are for the test to read.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mqlogging.handlers import MQHandler


def _logger(handler: MQHandler) -> logging.Logger:
    logger = logging.getLogger("app")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    return logger


def _exit(logger: logging.Logger, handler: MQHandler, n: int) -> int:
    """Log and leave: logging.shutdown (atexit) must deliver everything."""
    for i in range(n):
        logger.info("record %d", i, extra={"seq": i})
    return 0


def _latency(logger: logging.Logger, handler: MQHandler, n: int) -> int:
    """Per-emit latency against a broker that never answers, then a normal exit."""
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        logger.info("record %d", i, extra={"seq": i})
        lat.append(time.perf_counter() - t0)
    lat.sort()
    result = {
        "p50": lat[len(lat) // 2],
        "p99": lat[int(len(lat) * 0.99)],
        "max": lat[-1],
    }
    print(json.dumps(result), flush=True)
    print("EXITING", flush=True)
    return 0


def _stream(logger: logging.Logger, handler: MQHandler, n: int) -> int:
    """Log until killed; after every 100th record whose emit() returned, say so."""
    i = 0
    while True:
        logger.info("record %d", i, extra={"seq": i})
        if i % 100 == 0:
            print(i, flush=True)
        i += 1
        if n and i >= n:
            time.sleep(0.001)


def _rerun(logger: logging.Logger, handler: MQHandler, n: int) -> int:
    """The next run of the application: log one record, deliver what the spool holds, exit."""
    logger.info("restarted", extra={"seq": -1})
    ok = handler.flush(60)
    print("FLUSHED" if ok else "TIMEOUT", flush=True)
    return 0


def _quiet(logger: logging.Logger, handler: MQHandler, n: int) -> int:
    """A next run that logs nothing at all: the spool must still be shipped."""
    deadline = time.monotonic() + 60
    left = handler.stats()["spool"]["records"]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = handler.stats()["spool"]["records"]
    print(f"LEFT {left}", flush=True)
    return 0


def _fork(logger: logging.Logger, handler: MQHandler, n: int) -> int:
    """Parent logs (still queued at fork time), forks; the child logs its own records and
    exits; the parent logs more. Every record must arrive exactly once."""
    for i in range(n):
        logger.info("parent %d", i, extra={"seq": i})
    pid = os.fork()
    if pid == 0:
        for i in range(n):
            logger.info("child %d", i, extra={"seq": 100_000 + i})
        handler.close()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    for i in range(n, 2 * n):
        logger.info("parent %d", i, extra={"seq": i})
    handler.close()
    print("CHILD", os.waitstatus_to_exitcode(status), flush=True)
    return 0


#: MODE argument -> what the application does with its logger and handler (and N).
MODES: dict[str, Callable[[logging.Logger, MQHandler, int], int]] = {
    "exit": _exit,
    "latency": _latency,
    "stream": _stream,
    "rerun": _rerun,
    "quiet": _quiet,
    "fork": _fork,
}


def main() -> int:
    mode, url, spool = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    handler = MQHandler(url, spool=spool, **options)
    logger = _logger(handler)
    run = MODES.get(mode)
    if run is None:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    return run(logger, handler, n)


if __name__ == "__main__":
    sys.exit(main())
