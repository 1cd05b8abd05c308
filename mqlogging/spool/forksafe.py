"""Fork safety of spool writers and readers: one WeakSet and one ``os.register_at_fork`` hook.

A child created by ``fork()`` inherits the parent's open segment and claims with their
``flock``s; each registered object closes its copies in the child (never ``LOCK_UN``, which
would release the parent's locks) and starts afresh. This block is to be replaced by the
package-wide fork registry (issue #12 item 5): :func:`track` is the one call the spool makes.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["track"]


class ForkAware(Protocol):
    def after_fork_in_child(self) -> None: ...


_FORK_REGISTRY: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def track(obj: ForkAware) -> None:
    """Call ``obj.after_fork_in_child()`` in every child forked while ``obj`` lives."""
    _FORK_REGISTRY.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_FORK_REGISTRY):
        obj.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
