"""The spool at its edges, on a real small filesystem (a tmpfs of a few hundred KiB):
a disk that fills during an outage, a sender that keeps up for a long time on a small
disk. Every event a call accepted is delivered, or counted.

Mounting needs root (CAP_SYS_ADMIN); where it is refused, these tests are skipped and say
so. Real processes, real SIGKILL, a real collector process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from klime_mp.spool.log import status as spool_status
from tests.conftest import CollectorProcess
from tests.test_spool_client import KEY, late_collector  # noqa: F401 (a fixture)

pytestmark = pytest.mark.fork


def mount_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.fixture
def disk_256k(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "disk", "256k")


@pytest.fixture
def disk_512k(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "disk", "512k")


def free_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


# Tracks ``count`` events during an outage (the endpoint has no server yet) until the disk
# is full, then dies of SIGKILL: what reached the disk is all that survives.
FILL_AND_DIE = textwrap.dedent("""
    import os, signal, sys
    from klime_mp import KlimeClient

    endpoint, spool, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = KlimeClient("spool-key", endpoint, spool_dir=spool, retry_initial_delay=50)
    for n in range(count):
        client.track("Filled", {"n": n, "pad": "x" * 100}, user_id="u")
    print("tracked", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")

SUCCESSOR = textwrap.dedent("""
    import sys
    from klime_mp import KlimeClient

    client = KlimeClient("spool-key", sys.argv[1], spool_dir=sys.argv[2], shutdown_timeout=20)
    client.track("Successor", user_id="u")
    client.shutdown()
    print("recovered", client.stats().recovered, flush=True)
""")


@pytest.mark.parametrize("successor", ["spool drain", "a new process"])
def test_a_full_disk_is_emptied_by_a_successor_or_drain(
    tmp_path: Path,
    disk_256k: Path,
    late_collector: tuple[str, Callable[[], CollectorProcess]],  # noqa: F811
    successor: str,
) -> None:
    url, start = late_collector
    spool = disk_256k / "spool"
    filled = subprocess.run(
        [sys.executable, "-c", FILL_AND_DIE, url, str(spool), "3000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "tracked" in filled.stdout, filled.stderr
    (left,) = spool_status(spool)
    assert left.orphans == 1 and left.pending > 500, left
    assert free_bytes(disk_256k) < 8192  # full: no new log can be created here

    collector = start()
    if successor == "spool drain":
        drain = [sys.executable, "-m", "klime_mp", "spool", "drain", str(spool)]
        drain += ["--write-key", KEY, "--endpoint", url, "--timeout", "20"]
        done = subprocess.run(drain, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"sent {left.pending} events" in done.stdout, done.stdout
        expected = left.pending
    else:
        done = subprocess.run(
            [sys.executable, "-c", SUCCESSOR, url, str(spool)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert f"recovered {left.pending}" in done.stdout, done.stdout + done.stderr
        expected = left.pending + 1  # and its own event, kept in memory meanwhile

    assert collector.wait_for(expected)
    assert collector.stats()["stored"] == expected
    (after,) = spool_status(spool)
    assert (after.pending, after.segments, after.orphans) == (0, 0, 0), after


# Keeps up with its sender (a flush every 500 events) for 20,000 events, then waits; the
# test stops the collector; then 200 more events and SIGKILL.
KEEP_UP_THEN_DIE = textwrap.dedent("""
    import os, signal, sys
    from klime_mp import KlimeClient

    endpoint, spool = sys.argv[1], sys.argv[2]
    client = KlimeClient("spool-key", endpoint, spool_dir=spool, retry_initial_delay=50)
    for n in range(20_000):
        client.track("Kept up", {"n": n, "pad": "x" * 100}, user_id="u")
        if n % 500 == 499:
            assert client.flush(30), client.stats()
    print("ready", flush=True)
    sys.stdin.readline()  # the collector is down now
    for n in range(200):
        client.track("Tail", {"n": n}, user_id="u")
    print("tracked", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.timeout(180)
def test_a_sender_that_keeps_up_on_a_small_disk_still_spools_the_next_events(
    tmp_path: Path,
    disk_512k: Path,
    late_collector: tuple[str, Callable[[], CollectorProcess]],  # noqa: F811
) -> None:
    url, start = late_collector
    spool = disk_512k / "spool"
    collector = start()
    proc = subprocess.Popen(
        [sys.executable, "-c", KEEP_UP_THEN_DIE, url, str(spool)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "ready\n", proc.stderr.read() if proc.stderr else ""
        (kept,) = spool_status(spool)
        # delivered records left the disk: less than ROLL_ACKED_BYTES (64 KiB) stays
        assert kept.pending == 0 and kept.bytes < 64 * 1024, kept
        collector.stop()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
        assert "tracked" in out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    (tail,) = spool_status(spool)
    assert tail.pending == 200, tail  # all of them durable, none in memory only

    collector = start()
    drain = [sys.executable, "-m", "klime_mp", "spool", "drain", str(spool)]
    drain += ["--write-key", KEY, "--endpoint", url, "--timeout", "20"]
    done = subprocess.run(drain, capture_output=True, text=True, timeout=60)
    assert "sent 200 events" in done.stdout, done.stdout + done.stderr
    assert collector.wait_for(20_200)
    assert collector.stats()["stored"] == 20_200
