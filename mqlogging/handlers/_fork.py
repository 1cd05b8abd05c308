"""Reset every live handler in a forked child (CPython's own recipe for handler locks).

A child created by ``fork()`` inherits the parent's handlers with their queues, locks (possibly
held by a thread that does not exist in the child) and broker connections (sockets shared with
the parent). :func:`register` puts a handler in a :class:`weakref.WeakSet`; one
``os.register_at_fork(after_in_child=...)`` hook calls ``_after_fork_in_child()`` on each of them,
which gives the child fresh locks and an empty queue (the parent sends its own records) and makes
the sender thread start again lazily on the child's first record.

The hook never closes anything inherited: closing a pika or stomp.py connection in the child
would write frames on the parent's socket. Handlers keep the stale objects referenced instead.

:func:`close_on_sigterm` covers children that are terminated: ``Pool.terminate()`` (and so
``with multiprocessing.Pool() as p:``) sends SIGTERM to its workers, whose default action ends
them with the sender's batch half confirmed and no exit hook run (issue #11, defect 4). Where
SIGTERM still has its default action, a handler closes the registered handlers within a bound,
then restores the default action and raises SIGTERM again, so the process still dies of it.
Billiard's pool workers (Celery prefork) have billiard's own exit handler instead; that one is
chained to (called after the bound), never replaced (issue #11, defect 16).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

__all__ = ["close_on_sigterm", "in_pool_child", "register"]

# Longest time SIGTERM waits for the handlers to deliver or spool before the process dies.
TERM_GRACE = 2.0


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


class _Closable(Protocol):
    def _close_before_exit(self, timeout: float) -> None: ...


_HANDLERS: weakref.WeakSet[_ForkAware] = weakref.WeakSet()
_ON_SIGTERM: weakref.WeakSet[_Closable] = weakref.WeakSet()
# The SIGTERM disposition _on_sigterm replaced: SIG_DFL or billiard's exit handler.
_previous: list[Callable[[int, FrameType | None], Any] | int | None] = [signal.SIG_DFL]


def register(handler: _ForkAware) -> None:
    """Reset ``handler`` in every child forked from now on (until it is garbage-collected)."""
    _HANDLERS.add(handler)


def _after_fork_in_child() -> None:
    for handler in list(_HANDLERS):
        try:
            handler._after_fork_in_child()
        except Exception as exc:  # a broken handler must not break the child process
            print(f"mqlogging: cannot reset {handler!r} after fork: {exc}", file=sys.stderr)


def in_pool_child() -> bool:
    """True in a process that ``multiprocessing`` (any start method) or billiard started.

    A handler built there (in a pool ``initializer``, Celery's ``worker_process_init``, any
    ``spawn``/``forkserver`` child) needs the same care as one inherited through ``fork()``:
    such processes end with ``os._exit()`` or SIGTERM, where no exit hook runs.
    """
    mp = sys.modules.get("multiprocessing")
    if mp is not None and mp.parent_process() is not None:
        return True
    billiard = sys.modules.get("billiard.process")
    return billiard is not None and billiard.current_process().name != "MainProcess"


def close_on_sigterm(handler: _Closable) -> None:
    """Close ``handler`` (within :data:`TERM_GRACE`) when this process receives SIGTERM.

    Installs the signal handler only while SIGTERM has its default action, and only from the
    main thread: an application's (or billiard's, or gunicorn's) own SIGTERM handler is never
    replaced. Call it in a child process that may be terminated before any exit hook runs.
    """
    _ON_SIGTERM.add(handler)
    try:
        current = signal.getsignal(signal.SIGTERM)
        if current is signal.SIG_DFL or _is_billiard_exit(current):
            _previous[0] = current
            signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave SIGTERM alone
        pass


def _is_billiard_exit(handler: object) -> bool:
    """True for billiard's worker exit handler (``billiard.common._shutdown_cleanup``), which
    a billiard pool worker installs after the fork: it raises ``SystemExit`` and the worker
    ends with ``os._exit()``, so chaining to it keeps billiard's behaviour."""
    return (
        getattr(handler, "__module__", None) == "billiard.common"
        and getattr(handler, "__name__", None) == "_shutdown_cleanup"
    )


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Close the handlers, then die of SIGTERM as the default action would have done.

    The closing runs on a helper thread joined with a deadline: the main thread was
    interrupted at an arbitrary point and may hold a lock the close needs, so the process
    never hangs here longer than :data:`TERM_GRACE` (what is not delivered is in the spool).
    """
    handlers = list(_ON_SIGTERM)
    closer = threading.Thread(target=_close_all, args=(handlers,), name="mqlogging-sigterm")
    closer.daemon = True
    closer.start()
    closer.join(TERM_GRACE + 0.5)
    previous = _previous[0]
    if callable(previous):
        previous(signum, frame)  # billiard's: raises SystemExit, the worker exits its way
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _close_all(handlers: list[_Closable]) -> None:
    for handler in handlers:
        try:
            handler._close_before_exit(TERM_GRACE)
        except Exception as exc:  # one broken handler must not keep the others open
            print(f"mqlogging: cannot close {handler!r} on SIGTERM: {exc}", file=sys.stderr)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
