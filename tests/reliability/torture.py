"""The torture test's machinery (test_torture.py): the writers' processes, the schedule of
faults, the byte flipped on disk, and the reading of the writers' records.

The test module keeps the scenario and the identity it checks; this one the moving parts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from klime_mp.spool import format as fmt
from klime_mp.spool.files import EVERYTHING, SEGMENT_NAME
from tests.reliability.support import SCRIPTS, script_env

WRITER = SCRIPTS / "torture_writer.py"


class Writer:
    """One writer process (or the drain): its own session, its record, its stderr."""

    def __init__(self, endpoint: str, spool: Path, records: Path, name: str, *extra: str) -> None:
        self.name = name
        self.record = records / f"{name}.rec"
        self._stderr: IO[bytes] = open(records / f"{name}.err", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(WRITER), endpoint, str(spool), str(self.record), name, *extra],
            env=script_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            start_new_session=True,
        )

    def sigkill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._close()

    def stop(self) -> None:
        """Ask for a clean exit (shutdown(), then its counters)."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(b"stop\n")
            self.proc.stdin.flush()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.sigkill()
            raise AssertionError(
                f"{self.name} did not exit in {timeout} s:\n{self.stderr()}"
            ) from None
        finally:
            self._close()

    def stderr(self) -> str:
        path = Path(self._stderr.name)
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def _close(self) -> None:
        for stream in (self.proc.stdin, self._stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


# -- the schedule ---------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """When each fault starts and stops, in seconds from the start, drawn from the seed.

    The chaos (503s, dropped connections, kills) lasts ``chaos`` seconds, in cycles of at
    most 40 s, each with a 404 window, a full disk and a byte flipped in a dead writer's
    log. The last kill flips a byte too, inside a last 404 window (so that the log has
    records nobody could deliver yet) and with no kill after it: whoever claims that
    log exits cleanly, so its ``spool_torn`` count must be there at the end.
    """

    chaos: float
    kills: list[float]
    windows_404: list[tuple[float, float]]
    full_disk: list[tuple[float, float]]
    flips: list[float]  # kill-and-flip moments during the chaos (the last one follows)

    @classmethod
    def draw(cls, rng: random.Random, chaos: float) -> Schedule:
        cycles = max(1, round(chaos / 40.0))
        period = chaos / cycles
        windows, disks, flips = [], [], []
        for c in range(cycles):
            start = c * period
            w = start + rng.uniform(0.10, 0.20) * period
            windows.append((w, w + rng.uniform(0.08, 0.12) * period))
            d = start + rng.uniform(0.35, 0.45) * period
            disks.append((d, d + rng.uniform(0.10, 0.15) * period))
            flips.append(start + rng.uniform(0.60, 0.75) * period)
        windows.append((chaos - 3.0, chaos + 0.5))  # the last flip happens in it
        kills, t = [], 0.5
        while True:
            t += rng.uniform(0.2, 0.6)  # "a random writer every few hundred ms"
            if t >= chaos:
                break
            kills.append(t)
        return cls(chaos, kills, windows, disks, flips)

    def in_404(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.windows_404)

    def disk_full(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.full_disk)


# -- the full disk ----------------------------------------------------------------------


def fill(disk: Path) -> Path:
    """Write a file until the filesystem is full (ENOSPC): every append fails after it.
    Called again while the window lasts, it tops the file up: space freed meanwhile (a
    delivered segment deleted, a dead writer's log drained) is taken back at once."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)  # a short write fills the last pages; the next fails
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    return filler


# -- a byte flipped in a dead writer's log -----------------------------------------------


def flip_a_byte(app_dir: Path, pid: int, rng: random.Random) -> str | None:
    """Flip one byte in a record the dead process ``pid`` wrote and nobody acknowledged;
    the flipped event's message id, or None when its log has no such record (or another
    process holds it already).

    The flip is made holding the log's ledger lock, as a claimer would hold it: nobody
    reads the log meanwhile, so the record is damaged before anyone sends it. The byte
    is in the payload, low bit flipped: still ASCII (never the framing's 0xFF magic), so
    the checksum fails for that record alone."""
    ledgers = [p for p in app_dir.glob(f"{pid}-*.ledger")]
    if not ledgers:
        return None
    log_id = ledgers[0].name[: -len(".ledger")]
    fd = os.open(ledgers[0], os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None  # claimed already by a live writer
        marks = fmt.unpack_ledger_marks(os.pread(fd, fmt.LEDGER_BYTES + 1, 0))
        acked = fmt.START if marks is None else marks[0]
        candidates = []
        for path in sorted(app_dir.glob(f"{log_id}-*.seg")):
            match = SEGMENT_NAME.match(path.name)
            if match is None or int(match[2]) < acked.segment:
                continue
            start = acked.offset if int(match[2]) == acked.segment else 0
            seg = os.open(path, os.O_RDWR)
            try:
                batch = fmt.Batch()
                fmt.read(seg, start, os.fstat(seg).st_size, EVERYTHING, EVERYTHING, batch)
            finally:
                os.close(seg)
            candidates += [(path, e, p) for e, p in zip(batch.ends, batch.payloads)]
        if not candidates:
            return None
        path, end, payload = rng.choice(candidates)
        at = end - len(payload) + len(payload) // 2
        seg = os.open(path, os.O_RDWR)
        try:
            os.pwrite(seg, bytes([payload[len(payload) // 2] ^ 0x01]), at)
        finally:
            os.close(seg)
        message_id: str = json.loads(payload)["messageId"]
        return message_id
    finally:
        os.close(fd)  # drops the lock


# -- what the writers recorded -----------------------------------------------------------


@dataclass
class Process:
    """One writer's record, read back."""

    name: str
    intents: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    in_memory: list[str] = field(default_factory=list)  # accepted while the spool failed
    reports: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] | None = None  # None: it never exited cleanly (SIGKILLed)
    spool_failed: bool = False  # at some point
    notices: int = 0  # on_error calls that reported no loss (the spool stopped working)

    @classmethod
    def read(cls, path: Path) -> Process:
        process = cls(path.stem)
        in_memory = False
        for line in path.read_bytes().decode().splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "i":
                process.intents.append(rest)
            elif kind == "a":
                process.accepted.append(rest)
                if in_memory:
                    process.in_memory.append(rest)
            elif kind == "m":
                process.spool_failed = in_memory = True
            elif kind == "d":
                in_memory = False
            elif kind == "n":
                process.notices += 1
            elif kind == "e":
                process.reports.append(json.loads(rest))
            elif kind == "s":
                process.stats = json.loads(rest)
            else:
                raise AssertionError(f"{path}: unreadable line {line!r}")
        return process

    def lost_in_stats(self) -> Counter[str]:
        return Counter(self.stats["dropped"] if self.stats else {})

    def lost_reported(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for report in self.reports:
            counts[report["reason"]] += report["count"]
        return counts
