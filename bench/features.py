"""What before_send and compression="gzip" cost, and what gzip saves (issue #22):
``python -m bench.features [--calls 20000] [--posts 300] [--rounds 7]``; method in
docs/performance.md."""

from __future__ import annotations

import random
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable

from bench.collector import Sink
from bench.table import arguments, medians
from klime_mp import KlimeClient, events
from klime_mp.delivery import transport
from klime_mp.delivery.transport import Transport
from klime_mp.options import build_options
from klime_mp.wire import batch_body

BATCH = 100
NAMES = ["Page Viewed", "Report Generated", "Button Clicked", "Signed In", "Export Started"]


# -- 1. before_send ----------------------------------------------------------------------


def keep(event: dict[str, Any]) -> dict[str, Any]:
    return event


def redact(event: dict[str, Any]) -> dict[str, Any]:
    event["properties"].pop("email", None)
    return event


def track_cpu(client: KlimeClient, calls: int) -> Callable[[], float]:
    track = client.track
    props = {"report_type": "revenue", "rows": 1, "email": "jane@acme.com"}

    def run() -> float:
        start = time.process_time()
        for _ in range(calls):
            track("Report Generated", props, user_id="usr_1", group_id="org_1")
        return (time.process_time() - start) / calls * 1e6

    return run


def before_send_costs(calls: int, rounds: int) -> None:
    hooks = {"no hook": None, "hook returning the event": keep, "hook removing a property": redact}
    clients = {name: KlimeClient("k", send=False, before_send=h) for name, h in hooks.items()}
    result = medians({name: track_cpu(c, calls) for name, c in clients.items()}, rounds)
    base = result["no hook"]
    print(f"track() CPU per call, median of {rounds} rounds of {calls:,}:")
    for name, micros in result.items():
        extra = "" if name == "no hook" else f"  (+{micros - base:.2f} µs)"
        print(f"  {name:<28}{micros:6.2f} µs{extra}")


# -- 2. and 3. gzip ----------------------------------------------------------------------


def bench_events() -> bytes:
    props = [{"report_type": "revenue", "rows": i} for i in range(BATCH)]
    return batch_body([events.encode_track("Report Generated", p, "usr_1", "org_1") for p in props])


def varied_events() -> bytes:
    rnd = random.Random(22)

    def one(i: int) -> bytes:
        props = {
            "path": f"/app/reports/{rnd.randrange(10**6)}",
            "plan": rnd.choice(["free", "pro", "team"]),
            "rows": rnd.randrange(10**5),
            "duration_ms": round(rnd.random() * 1000, 3),
            "browser": rnd.choice(["Chrome 131", "Firefox 133", "Safari 18"]),
        }
        user, org = f"usr_{rnd.randrange(10**6)}", f"org_{rnd.randrange(10**4)}"
        return events.encode_track(rnd.choice(NAMES), props, user, org)

    return batch_body([one(i) for i in range(BATCH)])


def gzip_sizes(bodies: dict[str, bytes], rounds: int) -> None:
    print(f"gzip of one {BATCH}-event batch (compression CPU: median of {rounds} rounds):")
    for label, body in bodies.items():
        for level in (1, 6, 9):
            packed = b""

            def run(level: int = level, body: bytes = body) -> float:
                nonlocal packed
                start = time.process_time()
                for _ in range(50):
                    deflate = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
                    packed = deflate.compress(body) + deflate.flush()
                return (time.process_time() - start) / 50 / BATCH * 1e6

            micros = medians({"": run}, rounds)[""]
            ratio = len(body) / len(packed)
            print(
                f"  {label:<8} level {level}: {len(body):,} -> {len(packed):,} bytes "
                f"({ratio:.1f}x), {micros:.2f} µs per event"
            )


def post_cpu(url: str, body: bytes, compression: str | None, posts: int) -> Callable[[], float]:
    sender = Transport(build_options("bench-key", url, compression=compression))

    def run() -> float:
        start = time.process_time()
        for _ in range(posts):
            attempt = sender.post(body, 10.0)
            assert attempt.status == 200, attempt
        return (time.process_time() - start) / posts / BATCH * 1e6

    return run


def post_costs(bodies: dict[str, bytes], posts: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = Sink(db=str(Path(directory) / "events.sqlite3"))
        try:
            url = server.url
            print(f"Transport.post to the local collector, CPU per event ({posts} POSTs a round):")
            for label, body in bodies.items():
                variants = {
                    "plain": post_cpu(url, body, None, posts),
                    "gzip": post_cpu(url, body, "gzip", posts),
                }
                result = medians(variants, rounds)
                print(
                    f"  {label:<8} plain {result['plain']:.2f} µs, gzip {result['gzip']:.2f} µs "
                    f"(level {transport.GZIP_LEVEL})"
                )
        finally:
            server.stop()


def main() -> None:
    args = arguments(__doc__, calls=20_000, posts=300, rounds=7)
    before_send_costs(args.calls, args.rounds)
    bodies = {"bench": bench_events(), "varied": varied_events()}
    gzip_sizes(bodies, args.rounds)
    post_costs(bodies, args.posts, args.rounds)


if __name__ == "__main__":
    main()
