"""``klime-mp import FILE``: send a file of past events, with progress and a summary.

Bad lines and progress go to stderr, the summary to stdout. Exit status: 0 when every
event was sent (duplicate lines skipped), 1 when some lines were invalid, refused by
the server or not sent, 2 for usage and I/O errors, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from typing import IO, Callable, TextIO

from klime_mp.errors import HeaderError, ImportStopped
from klime_mp.importer import engine as importer
from klime_mp.options import BeforeSend, Options, build_options
from klime_mp.wire import MAX_BATCH_SIZE

DESCRIPTION = """\
Send a file of past events to Klime: JSON Lines (one event per line, in the wire
format's keys -- userId, messageId -- or the Python API's -- user_id, message_id) or
CSV with a header (type,event,user_id,group_id,timestamp,message_id plus
properties.NAME / traits.NAME columns, or a properties / traits column holding a JSON
object). FILE '-' reads stdin. Every line needs a timestamp with an offset or Z.

Every line is validated before anything is sent; each bad line is reported with its
number and skipped. Each event's messageId is the line's own, or derived from its
content, so running the same import again (after a crash or Ctrl-C too) never counts
an event twice: the server keeps one event per messageId.

Exit status: 0 all sent; 1 some lines invalid, refused or not sent; 2 usage or I/O
errors; 130 interrupted."""

TTY_EVERY_S = 0.2  # progress redraws on a terminal
PLAIN_EVERY_S = 5.0  # progress lines when stderr is a file or a pipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the file to import; - for stdin")
    parser.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        help="default: csv for a FILE ending in .csv, else jsonl",
    )
    parser.add_argument("--write-key", help="default: $KLIME_WRITE_KEY")
    parser.add_argument("--endpoint", help="default: $KLIME_ENDPOINT or https://i.klime.com")
    parser.add_argument("--check", action="store_true", help="validate every line, send nothing")
    parser.add_argument("--strict", action="store_true", help="send nothing if any line is invalid")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=MAX_BATCH_SIZE,
        help=f"events per request, 1-{MAX_BATCH_SIZE} (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per HTTP attempt (default: 10)"
    )
    parser.add_argument(
        "--retry-max-attempts",
        type=int,
        default=None,
        metavar="N",
        help="HTTP attempts per batch before the import stops (default: 5)",
    )
    parser.add_argument(
        "--progress-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"progress interval (default: {TTY_EVERY_S} on a terminal, else {PLAIN_EVERY_S:g})",
    )
    parser.add_argument(
        "--before-send",
        metavar="MODULE:FUNCTION",
        help="pass every event (a dict) through FUNCTION, as the client's before_send: "
        "it returns the event to send, changed or not, or None to skip it",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        return _usage(f"--batch-size must be 1 to {MAX_BATCH_SIZE}, got {args.batch_size}")
    options: Options | None = None
    if not args.check:
        try:
            options = build_options(
                args.write_key,
                args.endpoint,
                retry_max_attempts=args.retry_max_attempts,
                timeout=args.timeout,
            )
        except (ValueError, TypeError) as exc:
            return _usage(str(exc))
    try:
        before_send = load_hook(args.before_send)
    except (ValueError, ImportError, AttributeError) as exc:
        return _usage(f"--before-send: {exc}")
    fmt = args.format or ("csv" if args.file.lower().endswith(".csv") else "jsonl")
    name = "<stdin>" if args.file == "-" else args.file
    try:
        source: IO[bytes] = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115  # closed by the with below
    except OSError as exc:
        return _usage(f"cannot open {args.file}: {exc.strerror}")
    status = Status(sys.stderr, args.quiet, args.progress_every)
    counts = importer.Counts()
    try:
        with source, tempfile.TemporaryDirectory(prefix="klime-import-") as directory:
            work = importer.ImportWork(directory)
            try:
                return _import(args, source, fmt, name, work, options, status, counts, before_send)
            finally:
                work.close()
    except HeaderError as exc:
        return _usage(f"{name}: {exc}")
    except OSError as exc:
        return _usage(f"{name}: {exc}")
    except KeyboardInterrupt:
        status.done()
        print_summary(counts, sys.stdout)
        print(
            "interrupted: run the same command again to send the rest "
            "(events already sent are kept once by their messageId)",
            file=sys.stderr,
        )
        return 130


def _import(
    args: argparse.Namespace,
    source: IO[bytes],
    fmt: str,
    name: str,
    work: importer.ImportWork,
    options: Options | None,
    status: Status,
    counts: importer.Counts,
    before_send: BeforeSend | None,
) -> int:
    def report(line: int, reason: str) -> None:
        status.line(f"{name}:{line}: {reason}")

    lines = importer.parsed_lines(source, fmt)
    importer.validate(lines, work, report, status.checked, counts, before_send)
    status.done()
    if args.check or (args.strict and counts.invalid):
        print_summary(counts, sys.stdout)
        if args.strict and counts.invalid and not args.check:
            print(f"--strict: {counts.invalid} invalid line(s), nothing sent", file=sys.stderr)
        return 1 if counts.invalid else 0
    assert options is not None  # built unless --check
    try:
        importer.send(work, options, report, status.sent, counts, args.batch_size)
        stopped = None
    except ImportStopped as exc:
        stopped = str(exc)
    status.done()
    print_summary(counts, sys.stdout)
    if stopped is not None:
        print(
            f"stopped: {stopped}; {counts.unsent} event(s) not sent. Run the same command "
            "again to send them (what was sent is kept once by its messageId)",
            file=sys.stderr,
        )
    return 1 if counts.invalid or counts.rejected or counts.unsent else 0


def print_summary(counts: importer.Counts, out: TextIO) -> None:
    rows = [
        ("lines", counts.lines),
        ("invalid", counts.invalid),
        ("duplicates skipped", counts.duplicates),
    ]
    if counts.filtered:
        rows.append(("skipped by hook", counts.filtered))
    if counts.started:
        rows += [("sent", counts.sent), ("rejected", counts.rejected), ("not sent", counts.unsent)]
    for label, value in rows:
        print(f"{label + ':':<20}{value}", file=out)
    if counts.started:
        elapsed = time.monotonic() - counts.started
        rate = counts.sent / elapsed if elapsed > 0 else 0.0
        print(f"{'sending took:':<20}{elapsed:.1f} s ({rate:,.0f} events/s)", file=out)


class Status:
    """Progress on stderr: one redrawn line on a terminal, a plain line every few
    seconds otherwise; bad lines printed above it."""

    def __init__(self, stream: TextIO, quiet: bool, every: float | None = None) -> None:
        self._stream = stream
        self._quiet = quiet
        self._tty = stream.isatty()
        if every is None:
            every = TTY_EVERY_S if self._tty else PLAIN_EVERY_S
        self._every = every
        self._next = time.monotonic() + self._every
        self._drawn = False  # a progress line without a newline is on the terminal

    def line(self, text: str) -> None:
        self._clear()
        print(text, file=self._stream)

    def checked(self, counts: importer.Counts) -> None:
        self._show(counts, lambda: f"validated {counts.lines:,} lines, {counts.invalid:,} invalid")

    def sent(self, counts: importer.Counts) -> None:
        def text() -> str:
            done = counts.sent + counts.rejected
            elapsed = max(time.monotonic() - counts.started, 1e-9)
            rate = done / elapsed
            eta = (counts.to_send - done) / rate if rate > 0 else 0.0
            percent = 100.0 * done / counts.to_send if counts.to_send else 100.0
            return (
                f"sent {done:,} of {counts.to_send:,} ({percent:.0f} %), "
                f"{rate:,.0f} events/s, ETA {_duration(eta)}"
            )

        self._show(counts, text)

    def done(self) -> None:
        self._clear()

    def _show(self, counts: importer.Counts, text: Callable[[], str]) -> None:
        now = time.monotonic()
        if self._quiet or now < self._next:
            return
        self._next = now + self._every
        message = text()
        if self._tty:
            self._stream.write(f"\r\x1b[K{message}")
            self._stream.flush()
            self._drawn = True
        else:
            print(f"klime-mp import: {message}", file=self._stream, flush=True)

    def _clear(self) -> None:
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._drawn = False


def load_hook(spec: str | None) -> BeforeSend | None:
    """``package.module:function`` as a callable (the module imported from sys.path,
    the current directory first, as ``python -m`` would)."""
    if spec is None:
        return None
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected MODULE:FUNCTION, got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    hook = getattr(importlib.import_module(module_name), attribute)
    if not callable(hook):
        raise ValueError(f"{spec} is a {type(hook).__name__}, not a function")
    return hook  # type: ignore[no-any-return]  # callable(): its signature is the user's promise


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _usage(message: str) -> int:
    print(f"klime-mp import: {message}", file=sys.stderr)
    return 2
