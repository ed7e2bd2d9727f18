"""track()'s latency with and without a spool, in one run, and the sender's take and ack.

python bench/spool_tail.py [--events 50000] [--rounds 4]   (docs/performance.md)"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.collector import Sink
from bench.table import arguments, percentile
from klime_mp import KlimeClient
from klime_mp.delivery import spooled

MODES = ("memory", "spool", "spool+fsync")
TARGETS = {0.5: 1.35, 0.99: 2.0}  # issue #20 item 10: spool / memory, at most


@contextlib.contextmanager
def timed(owner: type, name: str) -> Iterator[list[float]]:
    """Meanwhile, each call's duration (µs) of the method ``name`` of ``owner``."""
    real: Callable[..., Any] = getattr(owner, name)
    samples: list[float] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter_ns()
        try:
            return real(*args, **kwargs)
        finally:
            samples.append((time.perf_counter_ns() - start) / 1000)

    setattr(owner, name, wrapper)
    try:
        yield samples
    finally:
        setattr(owner, name, real)


def run(mode: str, url: str, events: int, work: Path) -> dict[str, list[float]]:
    disk: dict[str, Any] = {"spool_dir": work / f"{mode}-{time.monotonic_ns()}"}
    sync: dict[str, Any] = {"spool_fsync_interval": 1.0} if mode == "spool+fsync" else {}
    client = KlimeClient(
        "bench-key", url, max_queue_size=events + 1, **(disk if mode != "memory" else {}), **sync
    )
    properties = {"plan": "pro", "pad": "x" * 200}
    calls: list[float] = []
    with timed(spooled.Spool, "take") as take, timed(spooled.Spool, "acknowledge") as ack:
        gc.disable()
        for _ in range(events):
            start = time.perf_counter_ns()
            client.track("Tail", properties, user_id="u")
            calls.append((time.perf_counter_ns() - start) / 1000)
        gc.enable()
        assert client.flush(60), client.stats()
    client.shutdown()
    return {"track": calls, "take": take, "ack": ack}


def main() -> None:
    args = arguments(__doc__, events=50_000, rounds=4)
    found: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
    rounds: dict[str, list[list[float]]] = {m: [] for m in MODES}  # track() per round
    sink = Sink()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):  # alternating: the order reversed every other round
                for mode in MODES[::-1] if r % 2 else MODES:
                    for name, samples in run(mode, sink.url, args.events, Path(tmp)).items():
                        found[mode].setdefault(name, []).extend(samples)
                    rounds[mode].append(sorted(found[mode]["track"][-args.events :]))
    finally:
        sink.stop()
    print(f"{args.events} events x {args.rounds} rounds; load {os.getloadavg()[0]:.1f}; µs")
    print(f"{'mode':<12} {'what':<6} {'calls':>7} {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>9}")
    for mode in MODES:
        for name, samples in ((n, sorted(s)) for n, s in found[mode].items() if s):
            p50, p99, p999 = (percentile(samples, q) for q in (0.5, 0.99, 0.999))
            print(f"{mode:<12} {name:<6} {len(samples):>7} {p50:>8.1f} {p99:>8.1f}", end="")
            print(f" {p999:>8.1f} {samples[-1]:>9.1f}")
    base = rounds["memory"]
    for mode in MODES[1:]:  # all rounds together, then the range of the rounds' own ratios
        for q, target in TARGETS.items():
            whole = [percentile(sorted(found[m]["track"]), q) for m in (mode, "memory")]
            each = [percentile(s, q) / percentile(m, q) for s, m in zip(rounds[mode], base)]
            verdict = "met" if whole[0] / whole[1] <= target else "NOT met"
            print(f"ratio {mode}/memory p{q * 100:g}: {whole[0] / whole[1]:.2f}x (rounds", end="")
            print(f" {min(each):.2f}-{max(each):.2f}x); target <= {target:g}x: {verdict}")


if __name__ == "__main__":
    main()
