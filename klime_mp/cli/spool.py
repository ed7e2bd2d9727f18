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

from klime_mp.spool import log as spool

# argparse's sub-parser registry has no public type name; Any keeps the signature honest.
SubParsers = Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="spool_command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)


def add_status(commands: SubParsers) -> None:
    status = commands.add_parser(
        "status",
        help="per app: its endpoint, segments, events pending, bytes, oldest, live, orphans",
        epilog=(
            "TORN: events lost in damaged records of dead processes' logs. NEWER: logs"
            " written by a newer klime_mp, left as they are (upgrade to send them)."
        ),
        description=(
            "What is waiting in a spool directory, per app directory (read-only). An app"
            " directory is named by a digest of endpoint and write key; ENDPOINT says where"
            " its events go (the key is never written down; '?' for a directory that"
            " klime_mp 0.1.0 made)."
        ),
    )
    status.add_argument("directory", metavar="DIR", help="the spool directory (spool_dir)")
    status.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    status.set_defaults(run=run_status)


def add_drain(commands: SubParsers) -> None:
    drain = commands.add_parser(
        "drain",
        help="send what dead processes of one app left in DIR, then exit",
        description=(
            "Claim the logs that dead processes of one app (this write key and endpoint) "
            "left in DIR and send them, then exit: for a Kubernetes preStop hook, a cron "
            "job, or after an outage. Logs of live processes are theirs to send. Exit "
            "status 0 when nothing of this app is left waiting, 1 otherwise, 2 when DIR "
            "holds no app of this key and endpoint (the apps found are listed)."
        ),
    )
    drain.add_argument("directory", metavar="DIR", help="the spool directory (spool_dir)")
    drain.add_argument("--write-key", help="the app's write key (default: $KLIME_WRITE_KEY)")
    drain.add_argument("--endpoint", help="the app's endpoint (default: $KLIME_ENDPOINT)")
    drain.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to keep sending (default: 60)"
    )
    drain.set_defaults(run=run_drain)


SUBCOMMANDS: list[Callable[[SubParsers], None]] = [add_status, add_drain]

COLUMNS = (
    "APP",
    "ENDPOINT",
    "SEGMENTS",
    "PENDING",
    "BYTES",
    "OLDEST",
    "LIVE",
    "ORPHANS",
    "TORN",
    "NEWER",
)


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


def run_drain(args: argparse.Namespace) -> int:
    from klime_mp.client import KlimeClient  # the sender, only for this command
    from klime_mp.options import build_options

    try:
        options = build_options(args.write_key, args.endpoint, spool_dir=args.directory)
    except (TypeError, ValueError) as exc:
        print(f"klime-mp spool drain: {exc}", file=sys.stderr)
        return 2
    app = spool.app_directory(args.directory, options.endpoint, options.write_key)
    if not app.is_dir():  # a wrong key or endpoint: say so, and create nothing
        return _no_such_app(args.directory, app.name)
    try:
        client = KlimeClient(
            args.write_key,
            args.endpoint,
            spool_dir=args.directory,
            shutdown_timeout=args.timeout,
        )
    except (TypeError, ValueError) as exc:
        print(f"klime-mp spool drain: {exc}", file=sys.stderr)
        return 2
    client.shutdown()  # with nothing of its own queued, shutdown sends the orphans
    left = [state for state in spool.status(args.directory) if state.app == app.name]
    orphans = left[0].orphans if left else 0
    stats = client.stats()
    print(f"sent {stats.recovered} events left by dead processes; {orphans} logs still waiting")
    return 0 if orphans == 0 else 1


def _no_such_app(directory: str, wanted: str) -> int:
    print(
        f"klime-mp spool drain: no app {wanted} in {directory} for this write key and "
        "endpoint (check --write-key/--endpoint); nothing sent, nothing created",
        file=sys.stderr,
    )
    try:
        states = spool.status(directory)
    except OSError as exc:
        print(f"cannot read {directory}: {exc}", file=sys.stderr)
        return 2
    if not states:
        print(f"no app directories in {directory}", file=sys.stderr)
    for state in states:
        oldest = "-" if state.oldest_pending_age is None else _age(state.oldest_pending_age)
        where = f" ({state.endpoint})" if state.endpoint else ""
        print(
            f"found app {state.app}{where}: {state.pending} events pending, oldest {oldest}",
            file=sys.stderr,
        )
    return 2


def _as_json(state: spool.AppStatus) -> dict[str, Any]:
    fields = asdict(state)
    fields["path"] = str(state.path)
    return fields


def _row(state: spool.AppStatus) -> tuple[str, ...]:
    return (
        state.app,
        state.endpoint or "?",
        str(state.segments),
        str(state.pending),
        _size(state.bytes),
        "-" if state.oldest_pending_age is None else _age(state.oldest_pending_age),
        str(state.live),
        str(state.orphans),
        str(state.torn),
        str(state.newer),
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
