"""The package's one fork registry (as :mod:`logging` keeps one ``WeakSet`` and one
``os.register_at_fork``), and the SIGTERM hook for pool children.

A child created by ``fork()`` inherits every object of the parent: handlers with their queues,
locks (possibly held by a thread that does not exist in the child), spool segments with their
``flock``-ed descriptors, and broker connections whose sockets are shared with the parent.
:func:`register` remembers an object weakly; one ``os.register_at_fork(after_in_child=...)``
hook calls its ``after_fork_in_child()`` in every child forked from then on, in registration
order (so a spool or a connection built before the handler that uses it is reset before it).
That hook runs in the child before any other code of the child does, which is why no object
needs to compare ``os.getpid()`` with the pid it was built in.

An object's hook must never close anything inherited: closing a pika or stomp.py connection
in the child would write frames on the parent's socket, and ``flock(LOCK_UN)`` would release
the parent's lock. It forgets (or keeps referenced, untouched) what belongs to the parent and
starts afresh.

:func:`close_on_sigterm` covers children that are terminated: ``Pool.terminate()`` (and so
``with multiprocessing.Pool() as p:``) sends SIGTERM to its workers, whose default action ends
them with the sender's batch half confirmed and no exit hook run (issue #11, defect 4). Where
SIGTERM still has its default action, a handler closes the registered objects within a bound,
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

__all__ = [
    "TERM_GRACE",
    "ForkAware",
    "SigtermClosable",
    "close_on_sigterm",
    "in_pool_child",
    "register",
]

# Longest time SIGTERM waits for the handlers to deliver or spool before the process dies.
TERM_GRACE = 2.0


class ForkAware(Protocol):
    """What :func:`register` needs: a reset for the forked child (never raises in practice;
    if it does, the error is printed and the other objects are still reset)."""

    def after_fork_in_child(self) -> None: ...


class SigtermClosable(Protocol):
    """What :func:`close_on_sigterm` needs: deliver or persist within ``timeout`` seconds."""

    def close_before_exit(self, timeout: float) -> None: ...


# A WeakKeyDictionary, not a WeakSet: it keeps registration order (see the module docstring).
_REGISTERED: weakref.WeakKeyDictionary[ForkAware, None] = weakref.WeakKeyDictionary()
_ON_SIGTERM: weakref.WeakSet[SigtermClosable] = weakref.WeakSet()
# The SIGTERM disposition _on_sigterm replaced: SIG_DFL or billiard's exit handler.
_previous: list[Callable[[int, FrameType | None], Any] | int | None] = [signal.SIG_DFL]


def register(obj: ForkAware) -> None:
    """Call ``obj.after_fork_in_child()`` in every child forked from now on (until ``obj`` is
    garbage-collected). Registering an object twice keeps its first place."""
    _REGISTERED.setdefault(obj)


def _after_fork_in_child() -> None:
    for obj in list(_REGISTERED.keys()):
        try:
            obj.after_fork_in_child()
        except Exception as exc:  # one broken object must not break the child process
            print(f"mqlogging: cannot reset {obj!r} after fork: {exc}", file=sys.stderr)


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


def close_on_sigterm(obj: SigtermClosable) -> None:
    """Close ``obj`` (within :data:`TERM_GRACE`) when this process receives SIGTERM.

    Installs the signal handler only while SIGTERM has its default action, and only from the
    main thread: an application's (or billiard's, or gunicorn's) own SIGTERM handler is never
    replaced. Call it in a child process that may be terminated before any exit hook runs.
    """
    _ON_SIGTERM.add(obj)
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
    """Close the registered objects, then die of SIGTERM as the default action would have.

    The closing runs on a helper thread joined with a deadline: the main thread was
    interrupted at an arbitrary point and may hold a lock the close needs, so the process
    never hangs here longer than :data:`TERM_GRACE` (what is not delivered is in the spool).
    """
    objs = list(_ON_SIGTERM)
    closer = threading.Thread(target=_close_all, args=(objs,), name="mqlogging-sigterm")
    closer.daemon = True
    closer.start()
    closer.join(TERM_GRACE + 0.5)
    previous = _previous[0]
    if callable(previous):
        previous(signum, frame)  # billiard's: raises SystemExit, the worker exits its way
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _close_all(objs: list[SigtermClosable]) -> None:
    for obj in objs:
        try:
            obj.close_before_exit(TERM_GRACE)
        except Exception as exc:  # one broken object must not keep the others open
            print(f"mqlogging: cannot close {obj!r} on SIGTERM: {exc}", file=sys.stderr)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
