"""One writer of the torture test (test_torture.py), or its final drain.

``torture_writer.py ENDPOINT SPOOL_DIR RECORD NAME [--drain]``

A writer tracks events with message ids it chooses (``NAME-<n>``) until it reads ``stop``
on stdin (or is SIGKILLed by the test, at any moment, start-up included). It keeps a
record of what happened to its events in RECORD, one line per fact, each line one
``os.write`` on an O_APPEND descriptor: the line is in the page cache when the call
returns, so it survives the SIGKILL the test deals (not a power loss, which this test
does not simulate, so no fsync: it would only slow the writers down)::

    i <id>                 about to call track() for <id>: the intent
    a <id>                 track() returned: the event was accepted
    m <why>                the spool failed (a full disk): what follows is kept in memory
    d <why>                the spool works again: what follows is durable again
    e {"reason": ..., "count": ..., "message": ..., "ids": [...]}   one on_error call: a loss
    n {"error": ...}       one on_error call that is a notice, not a loss (the spool failed)
    s {stats()}            a clean exit: the client's counters after shutdown()

An id with ``i`` and no ``a`` was cut short by a kill inside track(): it may or may not
be on disk. ``m`` and ``d`` are written by a log handler from inside the track() whose
spool write failed (or worked again), so they come before that event's ``a``.

``--drain`` is the last process of the run: it tracks one event, waits until the logs of
every dead writer are claimed and delivered (the sender claims them on its own, as any
successor does), shuts down and writes its counters, which hold the ``spool_torn`` count
of the corrupt records it met.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from klime_mp import KlimeClient
from klime_mp.spool.log import app_directory

WRITE_KEY = "torture-key"
EVENT_GAP_S = 0.01  # about 100 events/s per writer: a bounded load for a 2-core box
DRAIN_LIMIT_S = 40.0
CLIENT: dict[str, Any] = {
    "max_batch_size": 20,  # many requests, so that each kind of fault hits them often
    "flush_interval": 100,
    "retry_initial_delay": 50,
    "timeout": 2.0,
    "shutdown_timeout": 10.0,
}


class Record:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()

    def line(self, kind: str, text: str) -> None:
        with self._lock:  # on_error runs on the sender thread
            os.write(self._fd, f"{kind} {text}\n".encode())


class SpoolFallback(logging.Handler):
    """Notes the moments the client stops writing to disk (a full disk) and starts again."""

    def __init__(self, record: Record) -> None:
        super().__init__(logging.WARNING)
        self._record = record

    def emit(self, entry: logging.LogRecord) -> None:
        message = entry.getMessage()
        if "kept in memory" in message or "keeping events in memory" in message:
            self._record.line("m", json.dumps(message))
        elif "the spool works again" in message:
            self._record.line("d", json.dumps(message))


def make_client(endpoint: str, spool_dir: str, record: Record) -> KlimeClient:
    def on_error(error: BaseException, events: list[dict[str, Any]]) -> None:
        if not hasattr(error, "reason"):  # a notice (SpoolUnavailable): nothing lost
            record.line("n", json.dumps({"error": repr(error), "events": len(events)}))
            return
        report = {
            "reason": error.reason,
            "count": getattr(error, "count", len(events)),
            "message": str(error),
            "ids": [event.get("messageId") for event in events],
        }
        record.line("e", json.dumps(report))

    return KlimeClient(WRITE_KEY, endpoint, spool_dir=spool_dir, on_error=on_error, **CLIENT)


def dump_stats(client: KlimeClient, record: Record) -> None:
    stats = client.stats()
    fields = ("enqueued", "sent", "failed", "retries", "recovered", "resent", "queued")
    record.line(
        "s", json.dumps({"dropped": stats.dropped, **{f: getattr(stats, f) for f in fields}})
    )


def write(client: KlimeClient, record: Record, name: str) -> None:
    stop = threading.Event()

    def wait_for_stop() -> None:
        sys.stdin.readline()  # "stop", or EOF when the test goes away
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    n = 0
    while not stop.is_set():
        message_id = f"{name}-{n}"
        record.line("i", message_id)
        client.track("Torture", {"n": n}, user_id=f"usr_{n % 5}", message_id=message_id)
        record.line("a", message_id)
        n += 1
        stop.wait(EVENT_GAP_S)


def others_left(app_dir: Path) -> int:
    """Logs in the app directory that are not this process's own."""
    mine = f"{os.getpid()}-"
    try:
        names = os.listdir(app_dir)
    except FileNotFoundError:
        return 0
    return sum(1 for n in names if n.endswith(".ledger") and not n.startswith(mine))


def drain(client: KlimeClient, record: Record, name: str, endpoint: str, spool_dir: str) -> None:
    record.line("i", name)
    client.track("Torture Drain", user_id="drain", message_id=name)
    record.line("a", name)
    app_dir = app_directory(spool_dir, client.options.endpoint, WRITE_KEY)
    deadline = time.monotonic() + DRAIN_LIMIT_S
    while time.monotonic() < deadline:
        if client.flush(2.0) and others_left(app_dir) == 0:
            break
        time.sleep(0.1)  # the sender claims orphans on its own schedule (every 2 s)


def main() -> None:
    endpoint, spool_dir, record_path, name = sys.argv[1:5]
    record = Record(record_path)
    logging.getLogger().addHandler(SpoolFallback(record))
    client = make_client(endpoint, spool_dir, record)
    if "--drain" in sys.argv[5:]:
        drain(client, record, name, endpoint, spool_dir)
    else:
        write(client, record, name)
    client.shutdown()
    dump_stats(client, record)


if __name__ == "__main__":
    main()
