"""Where a handler's spool lives: the default directory, its fallback, one per lane, bound to
its destinations (so two applications never ship each other's records)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Sequence

from ..backends.endpoints import Endpoint
from ..errors import ConfigurationError, SpoolError
from ..spool import bind_destination
from ._complain import Complainer

__all__ = ["bind_lane_spool", "default_spool_dir", "lane_directories", "usable_spool_dir"]


def default_spool_dir(endpoints: Sequence[Endpoint], strategy: str) -> str:
    """``$XDG_STATE_HOME/mqlogging/spool/<digest>`` (``~/.local/state`` by default).

    The digest covers the endpoints' destinations (:meth:`Endpoint.destination_key`) and the
    strategy, so two applications sending to different destinations never replay each other's
    records, and the same configuration finds its spool again after a restart.
    """
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    key = "\n".join([strategy, *(ep.destination_key() for ep in endpoints)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(base, "mqlogging", "spool", digest)


def _fallback_spool_dir(default: str) -> str:
    """``<tmp>/mqlogging-<uid>/spool/<digest>``: where the spool goes when the default
    directory cannot be created (a container user with ``HOME=/nonexistent``)."""
    digest = os.path.basename(default)
    return os.path.join(tempfile.gettempdir(), f"mqlogging-{os.getuid()}", "spool", digest)


def _make_private_dir(path: str) -> None:
    """Create ``path`` (0700); refuse a shared temp directory another user prepared for us."""
    top = os.path.dirname(os.path.dirname(path))  # <tmp>/mqlogging-<uid>
    os.makedirs(top, mode=0o700, exist_ok=True)
    st = os.lstat(top)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(f"{top} is not a directory owned by uid {os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)


def usable_spool_dir(default: str, complain: Complainer) -> str:
    """``default`` if it can be created, else a private directory under the temp directory.

    Why (issue #11, defect 11): a non-root container user often has ``HOME=/nonexistent`` and
    no ``XDG_STATE_HOME``; the application must still start. The fallback is said once on
    stderr; it does not survive a reboot, so the message says how to choose a directory.

    Raises:
        ConfigurationError: neither directory can be created (one line, naming ``spool=``).
    """
    try:
        os.makedirs(default, exist_ok=True)
        return default
    except OSError as exc:
        first = f"{default}: {exc.strerror or exc}"
    fallback = "<tmp>/mqlogging-<uid>"
    try:
        fallback = _fallback_spool_dir(default)  # gettempdir() raises if no temp dir is usable
        _make_private_dir(fallback)
    except OSError as exc:
        msg = (
            f"MQHandler: cannot create the default spool directory ({first}) nor {fallback} "
            f"({exc.strerror or exc}); pass spool='/writable/dir' (or spool=False for none)"
        )
        raise ConfigurationError(msg) from exc
    complain(
        "spool_dir",
        f"cannot create the default spool directory ({first}); spooling to {fallback} "
        "instead (set spool= or XDG_STATE_HOME to choose a lasting one)",
    )
    return fallback


def lane_directories(root: str, endpoints: Sequence[Endpoint], strategy: str) -> list[str]:
    """The spool directory of each lane: ``root`` itself, or one sub-directory per endpoint."""
    if strategy != "all":
        return [root]
    out = []
    for ep in endpoints:
        first = ep.hosts[0] if ep.hosts else None
        slug = f"{ep.transport}-{first.host}-{first.port}" if first else ep.transport
        slug = re.sub(r"[^A-Za-z0-9._-]", "_", slug)
        digest = hashlib.sha256(ep.destination_key().encode()).hexdigest()[:8]
        out.append(os.path.join(root, f"{slug}-{digest}"))
    return out


def bind_lane_spool(
    directory: str, endpoints: Sequence[Endpoint], complain: Complainer | None = None
) -> None:
    """Refuse a spool directory that already serves another destination (issue #11, defect 6).

    A lane ships every segment of its directory to its own endpoints, so two applications
    with different destinations sharing one directory would deliver each other's records to
    the wrong place. The key is the sorted set of the lane's destinations: failover order,
    the strategy and credentials do not change where records go. A directory whose binding
    can neither be read nor written (read-only, disk full) is used unbound, with a complaint:
    its writes fail and are counted anyway, and refusing it would stop the application.

    Raises:
        ConfigurationError: the directory is bound to another destination.
    """
    key = "\n".join(sorted({ep.destination_key() for ep in endpoints}))
    try:
        bound = bind_destination(directory, key)
    except SpoolError as exc:
        if complain is not None:
            complain("spool_bind", f"{exc}; the spool is used without a destination check")
        return
    if bound != key:
        msg = (
            f"spool directory {directory!r} holds records for {bound.replace(chr(10), ' + ')}"
            f" (its DESTINATION file), not for {key.replace(chr(10), ' + ')}: give this handler"
            " its own spool= directory, or ship those records with 'mqlogging spool replay"
            f" {directory} --to URL' and remove the directory"
        )
        raise ConfigurationError(msg)
