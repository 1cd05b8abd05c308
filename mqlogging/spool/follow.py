"""Following a spool read-only, like ``tail -f``: what ``mqlogging tail local://DIR`` shows.

A :class:`SpoolFollower` takes no claim, writes no ``.ack`` and seals nothing, so the
collector's (or any reader's) progress is untouched: following acknowledges nothing. Segments
are read in name (creation) order. A file descriptor is kept on every segment that may still
grow, so a rename (sealing) or a deletion (consumed by a reader) never loses its tail.
"""

from __future__ import annotations

import contextlib
import os
from types import TracebackType

from ..errors import SpoolError
from . import format as fmt

__all__ = ["SpoolFollower"]

_MID_LINE = b"\0"  # marks a partial line we started inside of: dropped up to its newline


class SpoolFollower:
    """The records written to ``directory`` from now on, as they are written.

    Args:
        directory: an existing spool directory.
        backlog: also return the records already there that no reader has committed yet
            (each segment from its ``.ack`` offset), before the new ones.

    A record is returned once, when its line is complete (a writer's partial line waits for
    its newline). One follower belongs to one thread.

    Raises:
        SpoolError: the directory cannot be listed or a segment cannot be read (also from
            :meth:`read`).
    """

    def __init__(self, directory: str | os.PathLike[str], *, backlog: bool = False) -> None:
        self.directory = os.fspath(directory)
        self._files: dict[str, tuple[int, int, bytes]] = {}  # stem -> (fd, offset, partial)
        self._done: set[str] = set()
        self._scan(start="backlog" if backlog else "end")

    def __repr__(self) -> str:
        return f"SpoolFollower({self.directory!r}, following={len(self._files)})"

    def read(self) -> list[bytes]:
        """The complete lines (record bodies) written since the last call; never blocks."""
        self._scan(start="beginning")
        out: list[bytes] = []
        for stem in sorted(self._files):
            self._read(stem, out)
        return out

    def close(self) -> None:
        """Close every segment file. Idempotent."""
        for fd, _, _ in self._files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files.clear()

    def __enter__(self) -> SpoolFollower:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _scan(self, *, start: str) -> None:
        """Open the segments not followed yet, from their ``start``: ``end`` (what exists when
        the follower opens), ``backlog`` (the committed offset) or ``beginning`` (new ones)."""
        entries = fmt.scan(self.directory, missing_ok=False)
        for stem, entry in sorted(entries.items()):
            if entry.name is None or stem in self._files or stem in self._done:
                continue
            fd = self._open(entry)
            if fd is None:
                continue  # consumed (deleted) meanwhile
            offset = 0
            if start == "end":
                offset = os.fstat(fd).st_size
            elif start == "backlog":
                offset = fmt.read_ack(self.directory, stem)[0]
            partial = b""
            if offset and os.pread(fd, 1, offset - 1) != b"\n":
                partial = _MID_LINE
            self._files[stem] = (fd, offset, partial)
        self._done &= entries.keys()

    def _open(self, entry: fmt.Entry) -> int | None:
        """Open the data file of ``entry``, under its sealed name if it was sealed since it was
        listed (so a segment sealed at that moment is still followed from the right place, not
        shown again from its start at the next scan); ``None`` if it is gone."""
        current: fmt.Entry | None = entry
        for _ in range(2):
            if current is None:
                return None
            try:
                return os.open(fmt.data_path(self.directory, current), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                current = fmt.resolve(self.directory, entry.stem)
            except OSError as exc:
                msg = f"cannot read spool segment {current.name!r}: {exc.strerror}"
                raise SpoolError(msg) from exc
        return None

    def _read(self, stem: str, out: list[bytes]) -> None:
        fd, offset, partial = self._files[stem]
        try:
            offset, partial = _read_lines(fd, offset, partial, out)
            finished = not fmt.is_open(self.directory, stem) and not os.pread(fd, 1, offset)
        except OSError as exc:
            msg = f"cannot read spool segment {stem!r} in {self.directory!r}: {exc.strerror}"
            raise SpoolError(msg) from exc
        if finished:  # sealed or deleted, and read to its end: it cannot grow any more
            os.close(fd)
            del self._files[stem]
            self._done.add(stem)
            return
        self._files[stem] = (fd, offset, partial)


def _read_lines(fd: int, offset: int, partial: bytes, out: list[bytes]) -> tuple[int, bytes]:
    """Append the complete non-blank lines of ``fd`` from ``offset`` to ``out``; return the new
    offset and the partial last line."""
    while True:
        chunk = os.pread(fd, fmt.CHUNK, offset)
        if not chunk:
            return offset, partial
        offset += len(chunk)
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()
        if lines and lines[0].startswith(_MID_LINE):
            lines.pop(0)
        out.extend(line for line in lines if line.strip())
