"""``klime-mp collector``: run the local collector from the command line.

``add_arguments`` and ``run`` let the package's main command mount this as a
subcommand; ``main`` runs it standalone (``python -m klime_mp.collector.cli``).
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import sys
import threading
from types import FrameType

from .faults import FaultPlan
from .service import Collector

DEFAULT_PORT = 8800
DEFAULT_DB = "klime-collector.sqlite3"
DESCRIPTION = f"""\
Run a local Klime-compatible collector for development and tests: point a client at
it with KLIME_ENDPOINT=http://HOST:PORT. Received events are stored in SQLite,
de-duplicated by messageId. Stop it with Ctrl-C or SIGTERM.

Endpoints:
  POST /v1/batch    the Klime ingestion API (Bearer write key)
  GET  /v1/stats    counters: requests, connections, stored, duplicates, rejected
  GET  /v1/events   stored events, oldest first, each with its id, run and receipt
                    time; filters: event, type, user_id, group_id, since, until
                    (ISO 8601, on the event's timestamp), run (a number or latest);
                    pages: limit (at most 1000) and after (the last id you have)
  POST /v1/runs     start a new run, optionally {{"name": ...}}: events stored from
                    now on carry its number (GET /v1/events?run=latest shows them)
  GET  /v1/runs     every run, with its event count

Without --db, events go to ./{DEFAULT_DB} (created if missing), and
stay there from one start to the next: --db :memory: keeps nothing, and a new run
(POST /v1/runs) separates what comes next from what is already there.
Fault rates are fractions from 0 to 1 (0.2 = one batch in five)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--db",
        default=DEFAULT_DB,
        metavar="PATH",
        help="SQLite file for received events, or :memory: (default: %(default)s)",
    )
    parser.add_argument(
        "--write-key",
        action="append",
        default=[],
        dest="write_keys",
        metavar="KEY",
        help="accepted write key; repeatable; without it any Bearer key is accepted",
    )
    faults = parser.add_argument_group(
        "fault injection (POST /v1/batch only; rates are fractions 0-1)"
    )
    faults.add_argument("--seed", type=int, default=0, help="seed of the fault decisions")
    faults.add_argument(
        "--error-rate",
        type=float,
        metavar="FRACTION",
        default=0.0,
        help="fraction 0-1 answered --error-status",
    )
    faults.add_argument(
        "--error-status", type=int, default=503, help="status of those (default: %(default)s)"
    )
    faults.add_argument(
        "--rate-limit-rate",
        type=float,
        metavar="FRACTION",
        default=0.0,
        help="fraction 0-1 answered 429",
    )
    faults.add_argument("--retry-after", default="1", help="Retry-After value sent with 429")
    faults.add_argument(
        "--retry-after-date",
        action="store_true",
        help="send Retry-After as the HTTP date --retry-after seconds ahead",
    )
    faults.add_argument(
        "--drop-rate",
        type=float,
        metavar="FRACTION",
        default=0.0,
        help="fraction 0-1 closed unanswered, nothing stored",
    )
    faults.add_argument(
        "--drop-after-store-rate",
        type=float,
        metavar="FRACTION",
        default=0.0,
        help="fraction 0-1 stored, then closed unanswered",
    )
    faults.add_argument(
        "--garbage-rate",
        type=float,
        metavar="FRACTION",
        default=0.0,
        help="fraction 0-1 stored, answered 200 non-JSON",
    )
    faults.add_argument(
        "--delay", type=float, default=0.0, metavar="SECONDS", help="seconds to wait per batch"
    )
    faults.add_argument(
        "--delay-rate",
        type=float,
        metavar="FRACTION",
        default=1.0,
        help="fraction 0-1 of batches delayed (default: 1, all)",
    )


def fault_plan(args: argparse.Namespace) -> FaultPlan:
    return FaultPlan(
        seed=args.seed,
        error_rate=args.error_rate,
        status=args.error_status,
        rate_limit_rate=args.rate_limit_rate,
        retry_after=args.retry_after,
        retry_after_as_date=args.retry_after_date,
        drop_rate=args.drop_rate,
        drop_after_store_rate=args.drop_after_store_rate,
        garbage_rate=args.garbage_rate,
        delay=args.delay,
        delay_rate=args.delay_rate,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; 0 on a clean stop, 2 on bad options or bind errors."""
    try:
        collector = Collector(args.host, args.port, args.db, args.write_keys, fault_plan(args))
        collector.start()
    except (ValueError, OSError, sqlite3.Error) as exc:  # bad option, port taken, bad --db
        print(f"klime collector: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"klime collector listening on {collector.url}", flush=True)
        earlier = collector.stats().stored
        if earlier:
            print(
                f"klime collector: {args.db} already holds {earlier} events from earlier"
                f" runs; POST {collector.url}/v1/runs to start a new run"
                " (then GET /v1/events?run=latest), or use --db :memory:",
                flush=True,
            )
        stop.wait()
    finally:
        collector.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="klime-mp collector",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
