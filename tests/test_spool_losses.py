"""Losses in a damaged spool are counted in events, not in damaged regions: every record
carries its log's sequence number, and the gap around a damaged region is its cost. An
orphan with nothing readable left is counted before its files go.
"""

from __future__ import annotations

import json
from pathlib import Path

from klime_mp import KlimeClient
from klime_mp.collector import Collector
from klime_mp.spool import format as fmt
from klime_mp.spool import log as spool

KEY = "losses-key"
SIZE = 160  # payload bytes per record
RECORD = fmt.HEADER_BYTES + SIZE  # bytes per record on disk
STAMP = "2024-05-01T12:00:00.000Z"


def event(index: int) -> bytes:
    body = json.dumps(
        {
            "type": "track",
            "event": "Old",
            "userId": "u",
            "messageId": f"m{index}",
            "timestamp": STAMP,
        }
    )
    data = body.encode().ljust(SIZE)  # JSON ignores trailing blanks
    assert len(data) == SIZE
    return data


def leave_orphan(app: Path, count: int) -> Path:
    """A log whose writer closed without acknowledging anything; its one segment."""
    log = spool.EventLog.open(app, max_bytes=1 << 30, on_loss=lambda reason, records: None)
    for index in range(count):
        log.append(event(index))
    log.close()
    (segment,) = app.glob("*.seg")
    return segment


def zero(segment: Path, offset: int, size: int) -> None:
    with open(segment, "r+b") as file:
        file.seek(offset)
        file.write(b"\0" * size)


def test_a_damaged_region_is_counted_in_the_events_it_held(tmp_path: Path) -> None:
    app = tmp_path / "app"
    segment = leave_orphan(app, 100)
    start = fmt.FILE_HEADER_BYTES + 10 * RECORD + 7
    zero(segment, start, 4096)  # records 10 to 31 are hit: 22 events
    hit = range(10, (start + 4096 - 1 - fmt.FILE_HEADER_BYTES) // RECORD + 1)
    assert len(hit) == 22
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert orphan.pending() == 78
    assert orphan.torn == 22  # was 1: one region
    found = []
    while batch := orphan.take(50, 1 << 20):
        found.extend(batch)
        orphan.acknowledge(len(batch))
    assert found == [event(i) for i in range(100) if i not in hit]
    orphan.release()


def test_a_damaged_tail_and_a_damaged_segment_start_are_counted(tmp_path: Path) -> None:
    app = tmp_path / "app"
    segment = leave_orphan(app, 20)
    zero(segment, fmt.FILE_HEADER_BYTES, 3 * RECORD)  # the first three
    zero(segment, fmt.FILE_HEADER_BYTES + 18 * RECORD, 2 * RECORD)  # the last two
    orphan = spool.claim_orphan(app)
    assert orphan is not None
    assert orphan.pending() == 15
    # The head is exact (the file header says the first number); a tail with nothing
    # intact after it costs at least one event, and that is what is counted.
    assert orphan.torn == 3 + 1
    orphan.release()


def test_an_orphan_with_nothing_readable_is_counted_not_silently_deleted(
    tmp_path: Path, collector: Collector
) -> None:
    spool_dir = tmp_path / "spool"
    app = spool.app_directory(spool_dir, collector.url, KEY)
    segment = leave_orphan(app, 10)
    zero(segment, fmt.FILE_HEADER_BYTES, 10 * RECORD)
    client = KlimeClient(KEY, collector.url, spool_dir=spool_dir, shutdown_timeout=10)
    client.track("New", user_id="u")  # starts the sender, which claims the orphan
    assert client.shutdown() is False  # was True: the loss went unseen
    assert client.stats().dropped == {"spool_torn": 1}  # at least one event: counted
    assert collector.stats().stored == 1
    assert list(app.glob("*.seg")) == []  # counted, then deleted


def test_a_client_counts_a_damaged_region_of_an_orphan_in_events(
    tmp_path: Path, collector: Collector
) -> None:
    spool_dir = tmp_path / "spool"
    app = spool.app_directory(spool_dir, collector.url, KEY)
    segment = leave_orphan(app, 100)
    zero(segment, fmt.FILE_HEADER_BYTES + 10 * RECORD + 7, 4096)  # 22 events
    client = KlimeClient(KEY, collector.url, spool_dir=spool_dir, shutdown_timeout=10)
    client.track("New", user_id="u")
    assert client.shutdown() is False
    stats = client.stats()
    assert stats.dropped == {"spool_torn": 22}
    assert stats.recovered == 78
    assert collector.stats().stored == 79
