"""Message ids: random (version 4) UUID strings, made in batches per process.

Making one id costs a system call (``os.urandom``) and the formatting of 36 characters;
making 256 at once costs one system call and a few dozen slice assignments in C, so an
id then costs a ``list.pop()`` (about a fifth of ``str(uuid.uuid4())``).

A pool must never be shared by two processes: a forked child that kept drawing from
its parent's pool would send the parent's next ids, and the API de-duplicates by
``messageId``, so one of the two events would be lost. The pool is therefore keyed by
PID and checked on every call. An at-fork hook would not do: uWSGI forks its workers
from C and runs no Python hooks unless told to, and every worker would then repeat
the ids the master had left in its pool. The bits come from ``os.urandom``, never
from ``random`` (which a C-level fork does not reseed either).
"""

from __future__ import annotations

import os

POOL_SIZE = 256  # ids per refill: 4 KiB of randomness

# Where each of the 32 hex digits of an id goes in its 36-character text.
_COLUMNS = [k + (k >= 8) + (k >= 12) + (k >= 16) + (k >= 20) for k in range(32)]
_ROW = 37  # 36 characters and a space, so that one ``split()`` cuts the rows apart
# RFC 4122 variant: the high two bits of byte 8 are 10, so its first hex digit is 8-b.
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")

# (pid, ids): replaced whole, so a thread never pairs one process's PID with another's ids.
_pool: tuple[int, list[str]] = (0, [])


def _fresh_ids(count: int) -> list[str]:
    """``count`` new version-4 UUID strings, built column by column."""
    digits = os.urandom(16 * count).hex().encode("ascii")
    rows = bytearray(b"-" * (_ROW * count))
    for k, column in enumerate(_COLUMNS):
        rows[column::_ROW] = digits[k::32]
    rows[14::_ROW] = b"4" * count  # the version digit
    rows[19::_ROW] = digits[16::32].translate(_VARIANT)
    rows[36::_ROW] = b" " * count
    return rows.decode("ascii").split()


def new_message_id() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())``, never one that
    another process has drawn."""
    global _pool
    pid = os.getpid()
    owner, ids = _pool
    if owner == pid:
        try:
            return ids.pop()  # atomic: two threads never get the same id
        except IndexError:
            pass
    ids = _fresh_ids(POOL_SIZE)
    message_id = ids.pop()
    _pool = (pid, ids)
    return message_id
