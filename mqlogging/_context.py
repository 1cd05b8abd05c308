"""Context fields: key/values bound to the current thread or asyncio task, added to every record.

The fields live in one :class:`contextvars.ContextVar` holding a dict that is never mutated after
it is set (each bind builds a new dict), so a snapshot taken by a formatter can never change
under it, and two threads or two asyncio tasks never see each other's bindings:

- every thread starts with an empty context (``threading`` does not copy contexts into new
  threads; use :func:`contextvars.copy_context` and ``ctx.run`` to carry fields over);
- every asyncio task starts with a *copy* of the context of the code that created it, so fields
  bound before ``create_task`` are inherited, and fields bound inside the task stay inside it;
- thread-pool workers keep their context between work items, so bind inside a worker with
  :func:`bound_context` (which restores on exit) rather than :func:`bind_context`.

The formatter reads the context when it formats the record, which for ``MQHandler`` (and
stdlib's ``QueueHandler``) happens on the thread that logged, at the time of the call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType, TracebackType
from typing import Any

__all__ = [
    "ContextToken",
    "bind_context",
    "bound_context",
    "clear_context",
    "current_fields",
    "get_context",
    "unbind_context",
]

_EMPTY: dict[str, Any] = {}

# One variable for the whole process; its value is a dict nobody mutates (copy-on-bind).
_FIELDS: ContextVar[dict[str, Any]] = ContextVar("mqlogging_context_fields")


class ContextToken:
    """What :func:`bind_context` returns: undoes that bind with :meth:`reset` or ``with``.

    Resetting restores the fields exactly as they were before the bind (later binds made in
    between are undone as well). A token can be reset once, and only in the thread or task
    that made it (a :mod:`contextvars` rule: ``ValueError``/``RuntimeError`` otherwise).
    """

    __slots__ = ("_token",)

    def __init__(self, token: Token[dict[str, Any]]) -> None:
        self._token = token

    def reset(self) -> None:
        """Restore the context fields to what they were before the bind."""
        _FIELDS.reset(self._token)

    def __enter__(self) -> ContextToken:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.reset()

    def __repr__(self) -> str:
        return f"<ContextToken {self._token.var.name}>"


current_fields: Callable[[], dict[str, Any]] = functools.partial(_FIELDS.get, _EMPTY)
"""The bound fields as the (shared, never mutated) dict; for the formatter's hot path (a
partial, not a function: the formatter calls it once per record, as cheaply as ``_FIELDS.get``
itself, without reaching for this module's private variable)."""


def get_context() -> Mapping[str, Any]:
    """Return a read-only view of the fields bound in the current thread or task."""
    return MappingProxyType(_FIELDS.get(_EMPTY))


def bind_context(**fields: Any) -> ContextToken:
    """Add ``fields`` to every record logged from the current thread or asyncio task.

    Later binds override earlier ones key by key. Returns a token that undoes this bind
    (``token.reset()``), and that is also a context manager::

        with bind_context(request_id=rid):
            handle(request)

    Extras passed to a single logging call (``extra={...}``) override context fields of the
    same name.
    """
    return ContextToken(_FIELDS.set({**_FIELDS.get(_EMPTY), **fields}))


def unbind_context(*names: str) -> ContextToken:
    """Remove the named fields from the current context (missing names are ignored)."""
    current = _FIELDS.get(_EMPTY)
    return ContextToken(_FIELDS.set({k: v for k, v in current.items() if k not in names}))


def clear_context() -> ContextToken:
    """Remove every context field of the current thread or task."""
    return ContextToken(_FIELDS.set({}))


@contextmanager
def bound_context(**fields: Any) -> Iterator[Mapping[str, Any]]:
    """Bind ``fields`` for the duration of a ``with`` block, then restore the previous fields.

    The binding happens on entering the block and is undone on leaving it, exception or not.
    Yields a read-only view of the fields in force inside the block.
    """
    token = _FIELDS.set({**_FIELDS.get(_EMPTY), **fields})
    try:
        yield MappingProxyType(_FIELDS.get(_EMPTY))
    finally:
        _FIELDS.reset(token)
