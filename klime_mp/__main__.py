"""``klime-mp`` / ``python -m klime_mp``: the local collector, the demo, the spool, import."""

from __future__ import annotations

import argparse
import sys

from klime_mp._version import __version__

DESCRIPTION = """\
klime_mp command-line tools: a local Klime-compatible collector to send events to
during development and tests; a demo that shows every event arriving exactly once
from a real server's workers (Gunicorn, uWSGI, uvicorn or a Celery worker); the
spool directory's status and drain; and an importer for files of past events.

Run 'klime-mp COMMAND --help' for a command's options."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="klime-mp",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"klime_mp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from klime_mp.collector import cli as collector_cli

    collector = commands.add_parser(
        "collector",
        help="run a local Klime-compatible collector (HTTP + SQLite)",
        description=collector_cli.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    collector_cli.add_arguments(collector)
    collector.set_defaults(run=collector_cli.run)

    from klime_mp import demo  # imports gunicorn only when the demo runs

    demo_parser = commands.add_parser(
        "demo",
        help="serve an example app under Gunicorn, uWSGI, uvicorn or Celery and count what arrives",
        description=demo.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(run=demo.run)

    from klime_mp.cli import spool as spool_cli

    spool_parser = commands.add_parser(
        "spool",
        help="what waits in a spool directory (status), and send what dead processes left (drain)",
        description="Look after a spool directory (spool_dir / KLIME_SPOOL_DIR): what"
        " waits there per app, and sending what dead processes left behind.",
    )
    spool_cli.add_arguments(spool_parser)

    from klime_mp.cli import import_events as import_cli

    import_parser = commands.add_parser(
        "import",
        help="send a file of past events (JSON Lines or CSV), safely re-runnable",
        description=import_cli.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    import_cli.add_arguments(import_parser)
    import_parser.set_defaults(run=import_cli.run)

    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
