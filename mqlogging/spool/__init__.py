"""The on-disk segment spool: the handler's failover buffer and the ``local://`` queue.

A spool is a directory of append-only segments of JSON lines (one record per line, the
record's wire body), rotated by size and age, bounded, shared by any number of writer and
reader processes through file locks. The package is the one owner of that format:

- :mod:`.format` -- file names, ``.ack`` progress files, the drop journal, the ``DESTINATION``
  binding, the line framing, orphan sealing and claims; nothing outside it parses a name;
- :mod:`.writer` -- :class:`Spool`: append, seal, bounds and overflow policy, stats;
- :mod:`.reader` -- :class:`SpoolReader`: claim, read FIFO per writer, commit, rewind;
- :mod:`.follow` -- :class:`SpoolFollower`: a read-only live view (``mqlogging tail``);
- :mod:`.options` -- the options, their defaults and their parsing from text.

How the handler uses it
    (a) Failover, brokers down::

            spool.append([body, ...])               # SpoolError -> count the batch as dropped

    (b)+(c) Replay, FIFO, when a broker is back::

            spool.seal()                            # make this writer's records sealed
            with spool.reader() as reader:
                while records := reader.read(500):
                    producer.publish_batch([Message(record_id(r), r.body) for r in records])
                    reader.commit(records)          # durable; deletes finished segments
                # on a publish failure: reader.rewind() (or close()) and retry later

    (d) ``durability: spool`` (write-ahead): append every batch, and let the sender read it
        back with a reader of the *same* :class:`Spool`::

            reader = spool.reader()                 # or SpoolReader(dir, spool=spool,
            while running:                          #                validate=False)
                records = reader.read(500)          # our appends, in order, from the page cache
                if not records:
                    reader.wait(0.5)                # wakes as soon as this process appends
                    continue
                producer.publish_batch(...)         # failure: reader.rewind(), back off, retry
                reader.commit(records)

        ``read()`` returns records straight from the live open segment (no seal, no fsync
        needed to see them), so nothing is kept in memory twice, and a crash at any point
        replays exactly the uncommitted suffix. The same loop serves (c): records appended
        while the brokers were down are simply read first.
"""

from __future__ import annotations

from .follow import SpoolFollower
from .format import (
    SegmentView,
    bind_destination,
    lane_spools,
    read_journal,
    refuse_lane_root,
    segments,
)
from .options import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_BYTES,
    DEFAULT_SEGMENT_AGE,
    DEFAULT_SEGMENT_BYTES,
    coerce_spool_options,
)
from .reader import EVERY_SEGMENT, Access, SegmentChoice, SpoolReader, SpoolRecord, record_id
from .writer import Spool, SpoolStats

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SEGMENT_AGE",
    "DEFAULT_SEGMENT_BYTES",
    "EVERY_SEGMENT",
    "Access",
    "SegmentChoice",
    "SegmentView",
    "Spool",
    "SpoolFollower",
    "SpoolReader",
    "SpoolRecord",
    "SpoolStats",
    "bind_destination",
    "coerce_spool_options",
    "dropped_totals",
    "lane_spools",
    "record_id",
    "refuse_lane_root",
    "segments",
]


def dropped_totals(directory: str) -> dict[str, int]:
    """Records dropped from ``directory`` by reason, summed over ``dropped.log`` (read-only)."""
    return read_journal(directory)
