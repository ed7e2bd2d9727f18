"""The ledgers this process holds a lock on (its own logs and the orphans it claimed), so
that it never opens a file it holds a second time: closing any descriptor of a file drops
the process's POSIX locks on it (see ``klime_mp.spool.log``)."""

from __future__ import annotations

import fcntl
import os
import threading


class _Registry:
    """The ledgers this process holds a lock on (own logs and claimed orphans), by path."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.held: dict[str, object] = {}  # a files.Log; None: being claimed right now


_registry = _Registry()


def _this_process() -> _Registry:
    # A forked child (also one forked from C, which runs no at-fork hook) holds none of
    # its parent's locks: it gets an empty registry and a new lock, never the inherited one.
    global _registry
    if _registry.pid != os.getpid():
        _registry = _Registry()
    return _registry


def reserve(key: str) -> bool:
    registry = _this_process()
    with registry.lock:
        if key in registry.held:
            return False
        registry.held[key] = None
        return True


def settle(key: str, holder: object) -> None:
    registry = _this_process()
    with registry.lock:
        if holder is None:
            registry.held.pop(key, None)
        else:
            registry.held[key] = holder


def held_by(key: str) -> object:
    """The holder in this process, None while it is being claimed, False if not held."""
    registry = _this_process()
    with registry.lock:
        return registry.held.get(key, False)


def lock_existing(path: str) -> int | None:
    """A descriptor holding the exclusive lock on ``path``, or None if it is held elsewhere
    or gone. Only call for a path reserved in the registry (see the module docstring)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    except OSError:  # held by a live process (EAGAIN/EACCES), or deleted meanwhile
        pass
    os.close(fd)
    return None
