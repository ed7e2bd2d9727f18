"""``klime-mp import``'s engine: validate a whole file, then send it in batches.

Two streaming passes, so memory does not grow with the file:

1. ``validate`` reads the file (or stdin) once, line by line, turns each line into an
   encoded event (``import_lines``), reports each bad line, skips a line whose
   ``messageId`` an earlier line already had, and appends the good ones to a work file
   in a temporary directory (``<line number> TAB <event JSON>``, one per line). The ids
   seen are kept in SQLite in that directory, not in a Python set: a million ids in a
   set take ~100 MB, SQLite's page cache stays at its 2 MB default.
2. ``send`` reads the work file and POSTs batches of up to 100 events (and 10 MB) over
   one keep-alive connection, with the client's own retries, backoff and Retry-After
   (``delivery.Deliverer``). It does not use a ``KlimeClient``: its bounded queue is
   made to drop under a producer faster than the network, and an import is exactly that.

Stdin goes through the same two passes: the work file is the spool a second pass needs.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Callable

from klime_mp.delivery.deliverer import REJECTED, Deliverer
from klime_mp.delivery.transport import Transport
from klime_mp.errors import DeliveryError, ImportStopped, LineError
from klime_mp.importer.lines import Event, Parsed, csv_rows, jsonl_fields, to_event
from klime_mp.options import BeforeSend, Options
from klime_mp.wire import BATCH_BYTES, MAX_BATCH_SIZE, batch_body

# A refusal that every later batch would get too: stop instead of refusing them all.
_FATAL_STATUSES = frozenset({401, 403, 404, 405, 407})
_COMMIT_EVERY = 10_000  # ids per SQLite transaction: one commit per line costs ~50 µs


@dataclass
class Counts:
    """What an import did, line by line; the summary prints these."""

    lines: int = 0  # events in the file (blank lines are not counted)
    invalid: int = 0
    duplicates: int = 0  # lines whose messageId an earlier line of the file had
    filtered: int = 0  # events --before-send dropped (returned None)
    to_send: int = 0
    sent: int = 0  # taken by the server (a resent event it already had included)
    rejected: int = 0  # refused by the server, one by one or as a batch
    started: float = 0.0  # monotonic time the sending began

    @property
    def unsent(self) -> int:
        return self.to_send - self.sent - self.rejected


Report = Callable[[int, str], None]  # (line number, reason): a bad or refused line
Progress = Callable[[Counts], None]


class ImportWork:
    """The temporary directory of one import: the work file and the ids seen."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "events.tsv")
        self._ids = sqlite3.connect(os.path.join(directory, "ids.sqlite3"))
        # A scratch database: nothing to recover after a crash, so no journal, no fsync.
        self._ids.execute("PRAGMA journal_mode=OFF")
        self._ids.execute("PRAGMA synchronous=OFF")
        self._ids.execute("CREATE TABLE seen (id TEXT PRIMARY KEY) WITHOUT ROWID")
        self._pending = 0

    def first_time(self, message_id: str) -> bool:
        """True the first time ``message_id`` is seen in this import."""
        cursor = self._ids.execute("INSERT OR IGNORE INTO seen VALUES (?)", (message_id,))
        self._pending += 1
        if self._pending >= _COMMIT_EVERY:
            self._ids.commit()
            self._pending = 0
        return cursor.rowcount == 1

    def close(self) -> None:
        self._ids.close()


def parsed_lines(source: IO[bytes], fmt: str) -> Iterator[tuple[int, Parsed]]:
    """(line number, fields or error) for each event line of ``source``."""
    if fmt == "csv":
        yield from csv_rows(_text_lines(source))
        return
    for number, raw in enumerate(source, 1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
            raw = raw[3:]
        try:
            fields = jsonl_fields(raw)
        except LineError as error:
            yield number, error
            continue
        if fields is not None:
            yield number, fields


def _text_lines(source: IO[bytes]) -> Iterator[str]:
    # Undecodable bytes become lone surrogates, refused for that line by serialize().
    for number, raw in enumerate(source, 1):
        text = raw.decode("utf-8", "surrogateescape")
        yield text.lstrip("\ufeff") if number == 1 else text


def validate(
    lines: Iterable[tuple[int, Parsed]],
    work: ImportWork,
    report: Report,
    progress: Progress,
    counts: Counts,
    before_send: BeforeSend | None = None,
) -> None:
    """Pass 1: every line checked (and passed through ``before_send``) and reported; the
    good ones, once each, to the work file. ``counts`` is updated as it goes, so a
    Ctrl-C still leaves a true tally."""
    with open(work.path, "wb") as out:
        for number, parsed in lines:
            counts.lines += 1
            event = _event(parsed, before_send)
            if event is None:
                counts.filtered += 1
            elif isinstance(event, LineError):
                counts.invalid += 1
                report(number, str(event))
            elif work.first_time(event.message_id):
                counts.to_send += 1
                out.write(b"%d\t%s\n" % (number, event.data))
            else:
                counts.duplicates += 1
            if counts.lines % 10_000 == 0:
                progress(counts)


def _event(parsed: Parsed, before_send: BeforeSend | None) -> Event | LineError | None:
    if isinstance(parsed, LineError):
        return parsed
    try:
        return to_event(parsed, before_send)
    except LineError as error:
        return error


def send(
    work: ImportWork,
    options: Options,
    report: Report,
    progress: Progress,
    counts: Counts,
    batch_size: int = MAX_BATCH_SIZE,
) -> None:
    """Pass 2: POST the work file's events in order; ImportStopped when the server
    cannot take any more (unreachable after the retries, or a bad write key)."""
    transport = Transport(options)
    deliverer = Deliverer(options, transport, threading.Event())
    counts.started = time.monotonic()
    try:
        for numbers, body in _batches(work.path, batch_size):
            _deliver(deliverer, numbers, body, report, counts)
            progress(counts)
    finally:
        transport.close()


def _batches(path: str, batch_size: int) -> Iterator[tuple[list[int], bytes]]:
    """(line numbers, request body) of each batch: up to ``batch_size`` events and
    BATCH_BYTES (the API's 10 MB less the envelope)."""
    numbers: list[int] = []
    chunk: list[bytes] = []
    size = 0
    with open(path, "rb") as events:
        for line in events:
            number, _, data = line.rstrip(b"\n").partition(b"\t")
            if chunk and (len(chunk) >= batch_size or size + len(data) + 1 > BATCH_BYTES):
                yield numbers, batch_body(chunk)
                numbers, chunk, size = [], [], 0
            numbers.append(int(number))
            chunk.append(data)
            size += len(data) + 1
    if chunk:
        yield numbers, batch_body(chunk)


def _deliver(
    deliverer: Deliverer, numbers: list[int], body: bytes, report: Report, counts: Counts
) -> None:
    delivery = deliverer.send(body, _no_deadline)
    response, error = delivery.response, delivery.error
    if response is not None:
        for problem in response.errors or ():
            if 0 <= problem.index < len(numbers):
                report(numbers[problem.index], f"rejected by the server: {problem.message}")
        failed = min(max(response.failed, 0), len(numbers))
        counts.rejected += failed
        counts.sent += len(numbers) - failed
        return
    if (
        isinstance(error, DeliveryError)
        and error.reason == REJECTED
        and error.status not in _FATAL_STATUSES  # this batch's content: the next may pass
    ):
        counts.rejected += len(numbers)
        for number in numbers:
            report(number, f"rejected by the server with its batch: {error}")
        return
    raise ImportStopped(str(error))


def _no_deadline() -> float | None:
    return None
