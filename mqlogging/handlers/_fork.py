"""Reset every live handler in a forked child (CPython's own recipe for handler locks).

A child created by ``fork()`` inherits the parent's handlers with their queues, locks (possibly
held by a thread that does not exist in the child) and broker connections (sockets shared with
the parent). :func:`register` puts a handler in a :class:`weakref.WeakSet`; one
``os.register_at_fork(after_in_child=...)`` hook calls ``_after_fork_in_child()`` on each of them,
which gives the child fresh locks and an empty queue (the parent sends its own records) and makes
the sender thread start again lazily on the child's first record.

The hook never closes anything inherited: closing a pika or stomp.py connection in the child
would write frames on the parent's socket. Handlers keep the stale objects referenced instead.
"""

from __future__ import annotations

import os
import sys
import weakref
from typing import Protocol

__all__ = ["register"]


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_HANDLERS: weakref.WeakSet[_ForkAware] = weakref.WeakSet()


def register(handler: _ForkAware) -> None:
    """Reset ``handler`` in every child forked from now on (until it is garbage-collected)."""
    _HANDLERS.add(handler)


def _after_fork_in_child() -> None:
    for handler in list(_HANDLERS):
        try:
            handler._after_fork_in_child()
        except Exception as exc:  # a broken handler must not break the child process
            print(f"mqlogging: cannot reset {handler!r} after fork: {exc}", file=sys.stderr)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
