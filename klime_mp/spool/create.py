"""Creating a log's files: the app directory (0700, named by a digest), a ledger that is
locked before it appears under its final name, and segments (0600)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from pathlib import Path

from klime_mp.errors import SpoolUnavailable
from klime_mp.spool import format as fmt
from klime_mp.spool.files import (
    LEDGER_SUFFIX,
    PathLike,
    Segment,
    ledger_path,
    reserve,
    segment_path,
    settle,
    unlink,
)
from klime_mp.spool.format import START


def app_directory(spool_dir: PathLike, endpoint: str, write_key: str) -> Path:
    """The directory of one app's logs: a digest of endpoint and key, never the key."""
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str, got {type(endpoint).__name__}")
    if not isinstance(write_key, str):
        raise TypeError(f"write_key must be a str, got {type(write_key).__name__}")
    digest = hashlib.sha256(f"{endpoint}\0{write_key}".encode()).hexdigest()[:16]
    return Path(spool_dir) / digest


def prepare_directory(app_dir: PathLike) -> str:
    path = os.path.abspath(os.fspath(app_dir))
    try:
        make_directories(path)
        info = os.stat(path)
        if info.st_uid != os.geteuid():  # its owner could read our events, or plant its own
            raise PermissionError(
                f"it belongs to uid {info.st_uid}, not to this process's ({os.geteuid()})"
            )
        if info.st_mode & 0o077:
            os.chmod(path, 0o700)  # another user's process must not read our events
    except OSError as exc:
        raise SpoolUnavailable(f"cannot use {path} as a spool directory: {exc}") from exc
    return os.path.realpath(path)


def make_directories(path: str) -> None:
    """Create ``path`` and its missing parents, each 0700 (``os.makedirs`` gives the
    parents it creates the umask's mode, often 0755: readable by every user)."""
    missing: list[str] = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made meanwhile by another process (or a file: the caller's stat fails)
        os.chmod(directory, 0o700)  # a umask can only take bits away; this says it exactly


def create_ledger(app_dir: str, log_id: str) -> int:
    """A locked ledger that appears under its final name only once it is locked."""
    final = ledger_path(app_dir, log_id)
    temporary = os.path.join(app_dir, f".{log_id}{LEDGER_SUFFIX}.tmp")
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.pwrite(fd, fmt.pack_ledger(START), 0) != fmt.LEDGER_BYTES:
            raise OSError(errno.ENOSPC, "short write of the ledger")
        reserve(final)
        os.rename(temporary, final)
    except OSError:
        settle(final, None)
        unlink(temporary)
        os.close(fd)
        raise
    return fd


def open_segment(app_dir: str, log_id: str, seq: int, *, first_seq: int) -> Segment:
    """A new segment, its file header (format version, first record's number) written."""
    path = segment_path(app_dir, log_id, seq)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        header = fmt.file_header(first_seq)
        if os.write(fd, header) != len(header):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        os.close(fd)
        unlink(path)
        raise
    return Segment(seq, fd, path, len(header), fmt.V2, first_seq)
