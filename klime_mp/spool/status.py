"""``status``: what is waiting in a spool directory, per app (read-only)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from klime_mp.errors import SpoolNewerFormat
from klime_mp.spool import format as fmt
from klime_mp.spool.files import (
    APP_NAME,
    FileInfo,
    Log,
    PathLike,
    Segment,
    held_by,
    ledger_path,
    list_directory,
    load_segment,
    reserve,
    settle,
    warn_once,
)
from klime_mp.spool.format import START, Position
from klime_mp.spool.orphans import Scan, scan

# "<spool_dir>/<app>.endpoint" names the endpoint an app directory sends to: the directory
# name is a digest of endpoint and write key, which tells an operator nothing.
ENDPOINT_SUFFIX = ".endpoint"

# -- status ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppStatus:
    """One app directory, as ``status`` found it."""

    app: str  # the directory name (digest of endpoint and key)
    path: Path
    endpoint: str | None  # where its events go; None when written by klime_mp 0.1.0
    segments: int
    pending: int  # records after each log's acknowledged position (in flight included)
    bytes: int  # size of the segment files
    oldest_pending_age: float | None  # seconds since the oldest pending record was written
    live: int  # logs held by a live process (writers, and claimers of orphans)
    orphans: int  # logs of dead processes waiting for a claimer
    torn: int  # events lost in damaged records of orphans (a live writer's tail may be mid-write)
    newer: int = 0  # logs in a newer klime_mp's format: left as they are, never deleted


def status(spool_dir: PathLike) -> list[AppStatus]:
    """What is in every app directory under ``spool_dir``. Read-only: it takes a shared
    lock on a ledger for an instant (to tell live from dead) and nothing else."""
    return [_app_status(app_dir) for app_dir in app_directories(spool_dir)]


def app_directories(spool_dir: PathLike) -> list[Path]:
    """The app directories under ``spool_dir`` (anything else is skipped with a warning)."""
    found: list[Path] = []
    for entry in sorted(Path(spool_dir).iterdir()):
        if entry.is_dir() and APP_NAME.match(entry.name):
            found.append(entry)
        elif entry.suffix == ENDPOINT_SUFFIX and APP_NAME.match(entry.stem):
            continue
        else:
            warn_once(str(entry), "spool: skipping %s (not an app directory)", entry)
    return found


def _app_status(app_dir: Path) -> AppStatus:
    directory = os.path.realpath(app_dir)
    listing = list_directory(directory)
    live = orphans = pending = torn = newer = 0
    oldest: float | None = None
    for log_id in listing.ledgers:
        alive, acked = _inspect(ledger_path(directory, log_id))
        files = listing.segments.get(log_id, {})
        try:
            found = _scan(files, acked)
        except SpoolNewerFormat:
            newer += 1
            continue
        if acked is None:
            newer += 1
            continue
        live += alive
        orphans += not alive
        pending, torn = pending + found.pending, torn + (0 if alive else found.lost)
        if found.oldest is not None and (oldest is None or found.oldest < oldest):
            oldest = found.oldest
    age = None if oldest is None else max(0.0, time.time() - oldest)
    return AppStatus(
        app=app_dir.name,
        path=app_dir,
        endpoint=endpoint_of(app_dir),
        segments=sum(len(files) for files in listing.segments.values()),
        pending=pending,
        bytes=listing.total_bytes(),
        oldest_pending_age=age,
        live=live,
        orphans=orphans,
        torn=torn,
        newer=newer,
    )


def _scan(files: dict[int, FileInfo], acked: Position | None) -> Scan:
    segments: list[Segment] = []
    try:
        for seq in sorted(files):
            if acked is None or seq >= acked.segment:
                segment = load_segment(files[seq].path, seq)  # SpoolNewerFormat: say so
                if segment is not None:
                    segments.append(segment)
        return scan(segments, acked or START)
    finally:
        for segment in segments:
            os.close(segment.fd)


def remember_endpoint(app_dir: Path, endpoint: str) -> None:
    """Write the app's endpoint (never its key, nor a password in the URL) beside its
    directory, once, for ``status``. Best effort: a spool works without it."""
    path = app_dir.with_name(app_dir.name + ENDPOINT_SUFFIX)
    if path.exists():
        return
    url = urlsplit(endpoint)
    shown = urlunsplit(url._replace(netloc=url.netloc.rpartition("@")[2]))
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, shown.encode("utf-8"))
        finally:
            os.close(fd)
        os.replace(temp, path)  # whole or absent, whoever writes it first
    except OSError:  # a full disk: no note, and no empty temporary file left behind
        with contextlib.suppress(OSError):
            os.unlink(temp)


def endpoint_of(app_dir: Path) -> str | None:
    try:
        return app_dir.with_name(app_dir.name + ENDPOINT_SUFFIX).read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _inspect(ledger: str) -> tuple[bool, Position | None]:
    """Whether a live process holds the ledger, and its acknowledged position (None: the
    ledger is in a newer format)."""
    holder = held_by(ledger)
    if isinstance(holder, Log):
        return True, holder.acknowledged_position()
    if holder is None or not reserve(ledger):  # being claimed by a thread of ours
        return True, START
    try:  # reserved: no thread of ours can lock it while this descriptor is open
        fd = os.open(ledger, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        settle(ledger, None)
        return False, START
    try:
        raw = os.pread(fd, fmt.LEDGER_BYTES + 1, 0)
        acked = None if fmt.ledger_is_newer(raw) else (fmt.unpack_ledger(raw) or START)
        try:  # a shared lock is refused only while some process holds the exclusive one
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True, acked
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False, acked
    finally:
        os.close(fd)
        settle(ledger, None)
