"""The size limit of an app directory: over ``max_bytes`` of undelivered records, the
oldest segments go first, this process's own (never the one being written, nor one whose
records are in flight) and dead processes' (claimed first, so never a segment another
live process holds), oldest modification time first.

Bytes already acknowledged do not count: they are deleted as soon as a segment is done
(see ``EventLog``), and counting them would drop undelivered events to make room for
delivered ones.
"""

from __future__ import annotations

from typing import Protocol

from klime_mp.spool.files import Listing, list_directory, unlink
from klime_mp.spool.orphans import Orphan, claim, is_stray


class Own(Protocol):
    """What the limit needs of this process's own log."""

    @property
    def app_dir(self) -> str: ...
    @property
    def log_id(self) -> str: ...
    def acknowledged_bytes(self) -> int: ...
    def drop_own(self, seq: int) -> list[bytes] | None: ...


def enforce(own: Own, max_bytes: int) -> list[list[bytes]]:
    """Delete the oldest segments until the undelivered bytes fit in ``max_bytes``; the
    unacknowledged records of each deleted segment (to report as lost)."""
    try:
        listing = list_directory(own.app_dir)
    except OSError:
        return []
    total = listing.total_bytes() - own.acknowledged_bytes()
    if total <= max_bytes:
        return []
    oldest = sorted(
        (found.mtime, seq, log_id, found.size)
        for log_id, files in listing.segments.items()
        for seq, found in files.items()
    )
    orphans: dict[str, Orphan | None] = {}
    losses: list[list[bytes]] = []
    try:
        for _, seq, log_id, size in oldest:
            if total <= max_bytes:
                break
            lost = _drop(own, listing, orphans, log_id, seq)
            if lost is not None:
                total -= size
                losses.append(lost)
    finally:
        for orphan in orphans.values():
            if orphan is not None:
                orphan.release()
    return losses


def _drop(
    own: Own, listing: Listing, orphans: dict[str, Orphan | None], log_id: str, seq: int
) -> list[bytes] | None:
    """Delete one segment; its unacknowledged records, or None if it must stay."""
    if log_id == own.log_id:
        return own.drop_own(seq)
    if log_id not in listing.ledgers:
        found = listing.segments[log_id][seq]
        if not is_stray(own.app_dir, listing, log_id, found):
            return None
        unlink(found.path)
        return []  # an acknowledged leftover: nothing is lost
    if log_id not in orphans:
        orphans[log_id] = claim(own.app_dir, log_id, scan=False)
    orphan = orphans[log_id]
    return None if orphan is None else orphan.drop_segment(seq)
