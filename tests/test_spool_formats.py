"""Every spool file says its format. A newer klime_mp's log is never deleted nor read as
damage: it is left as it is, with a warning, and ``spool status`` shows it. The previous
format (records without sequence numbers, no file header) is still read, from where its
ledger says, so nothing acknowledged is sent again.
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import time
from pathlib import Path
from zlib import crc32

import pytest

from klime_mp import KlimeClient
from klime_mp.collector import Collector
from klime_mp.spool import format as fmt
from klime_mp.spool import log as spool

KEY = "formats-key"
STAMP = "2024-05-01T12:00:00.000Z"


def event(index: int) -> bytes:
    body = {"type": "track", "event": "Old", "userId": "u", "messageId": f"m{index}"}
    return json.dumps({**body, "timestamp": STAMP}).encode()


def leave_orphan(app: Path, count: int) -> Path:
    log = spool.EventLog.open(app, max_bytes=1 << 30, on_loss=lambda reason, records: None)
    for index in range(count):
        log.append(event(index))
    log.close()
    (segment,) = app.glob("*.seg")
    return segment


def make_newer(segment: Path) -> None:
    """Rewrite the segment's header as a version 3 one (a newer klime_mp's)."""
    data = bytearray(segment.read_bytes())
    body = struct.pack("<4sHHQ", fmt.FILE_MAGIC, 3, 0, 1)
    data[: fmt.FILE_HEADER_BYTES] = body + struct.pack("<I", crc32(body))
    segment.write_bytes(bytes(data))


def test_a_log_of_a_newer_format_is_left_as_it_is_and_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    app = spool.app_directory(spool_dir, "http://127.0.0.1:9", KEY)
    segment = leave_orphan(app, 99)
    make_newer(segment)
    before = sorted(path.name for path in app.iterdir())
    with caplog.at_level(logging.WARNING, logger="klime_mp.spool"):
        assert spool.claim_orphan(app) is None  # not ours to read
        assert spool.claim_orphan(app) is None
    assert sorted(path.name for path in app.iterdir()) == before  # nothing deleted
    warnings = [r.getMessage() for r in caplog.records if "newer" in r.getMessage()]
    assert len(warnings) == 1 and "version 3" in warnings[0], warnings
    (state,) = spool.status(spool_dir)
    assert (state.newer, state.orphans, state.torn) == (1, 0, 0)
    shown = subprocess.run(
        [sys.executable, "-m", "klime_mp", "spool", "status", str(spool_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    header, row = shown.stdout.splitlines()
    assert header.split()[-1] == "NEWER" and row.split()[-1] == "1", shown.stdout


def test_a_client_leaves_a_newer_log_alone_sending_and_deleting_nothing_of_it(
    tmp_path: Path, collector: Collector
) -> None:
    spool_dir = tmp_path / "spool"
    app = spool.app_directory(spool_dir, collector.url, KEY)
    segment = leave_orphan(app, 99)
    make_newer(segment)
    client = KlimeClient(KEY, collector.url, spool_dir=spool_dir, shutdown_timeout=10)
    client.track("New", user_id="u")
    assert client.shutdown() is True
    assert client.stats().dropped == {} and client.stats().recovered == 0
    assert segment.exists() and segment.stat().st_size > 99 * fmt.HEADER_BYTES
    assert collector.stats().stored == 1


def v1_segment(records: list[bytes]) -> bytes:
    """Segment bytes as klime_mp wrote them before sequence numbers (format 1)."""
    out = b""
    for data in records:
        out += struct.pack("<4sIId", fmt.MAGIC_V1, crc32(data), len(data), time.time()) + data
    return out


def ledger(position: tuple[int, int]) -> bytes:
    body = struct.pack("<4sQQQQ", b"KSL2", *position, *position)
    return body + struct.pack("<I", crc32(body))


def test_a_log_of_the_previous_format_is_read_from_its_acknowledged_position(
    tmp_path: Path, collector: Collector
) -> None:
    spool_dir = tmp_path / "spool"
    app = spool.app_directory(spool_dir, collector.url, KEY)
    app.mkdir(parents=True, mode=0o700)
    records = [event(index) for index in range(99)]
    data = v1_segment(records)
    acked = sum(20 + len(r) for r in records[:40])  # the first 40 were delivered
    (app / "4242-0badcafe-00000001.seg").write_bytes(data)
    (app / "4242-0badcafe.ledger").write_bytes(ledger((1, acked)))
    (state,) = spool.status(spool_dir)
    assert (state.pending, state.orphans, state.newer) == (59, 1, 0)

    client = KlimeClient(KEY, collector.url, spool_dir=spool_dir, shutdown_timeout=10)
    client.track("New", user_id="u")
    assert client.shutdown() is True
    assert client.stats().recovered == 59
    stored = collector.stats().stored
    assert stored == 60  # the 59 not acknowledged and the new one: none of the first 40
    assert list(app.glob("4242-*")) == []
