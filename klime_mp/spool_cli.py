"""``klime-mp spool``: look into a spool directory.

``add_arguments`` mounts the ``spool`` command's sub-commands on a parser; each one is
added by a function in ``SUBCOMMANDS`` (``add_status`` here), so another command (such as
``drain``, which needs the sender) is one more function appended to that list.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from klime_mp import spool

# argparse's sub-parser registry has no public type name; Any keeps the signature honest.
SubParsers = Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="spool_command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)


def add_status(commands: SubParsers) -> None:
    status = commands.add_parser(
        "status",
        help="per app: segments, events pending, bytes, oldest pending age, live, orphans",
        description="What is waiting in a spool directory, per app directory (read-only).",
    )
    status.add_argument("directory", metavar="DIR", help="the spool directory (spool_dir)")
    status.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    status.set_defaults(run=run_status)


SUBCOMMANDS: list[Callable[[SubParsers], None]] = [add_status]

COLUMNS = ("APP", "SEGMENTS", "PENDING", "BYTES", "OLDEST", "LIVE", "ORPHANS", "TORN")


def run_status(args: argparse.Namespace) -> int:
    try:
        states = spool.status(args.directory)
    except OSError as exc:
        print(f"klime-mp spool status: cannot read {args.directory}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([_as_json(state) for state in states], indent=2))
        return 0
    if not states:
        print(f"no app directories in {args.directory}")
        return 0
    rows = [COLUMNS, *(_row(state) for state in states)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _as_json(state: spool.AppStatus) -> dict[str, Any]:
    fields = asdict(state)
    fields["path"] = str(state.path)
    return fields


def _row(state: spool.AppStatus) -> tuple[str, ...]:
    return (
        state.app,
        str(state.segments),
        str(state.pending),
        _size(state.bytes),
        "-" if state.oldest_pending_age is None else _age(state.oldest_pending_age),
        str(state.live),
        str(state.orphans),
        str(state.torn),
    )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
