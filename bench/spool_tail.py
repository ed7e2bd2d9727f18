"""track()'s latency with and without a spool, in one run, and the sender's hold of the lock.

python bench/spool_tail.py [--events 50000] [--rounds 3]   (docs/performance.md)
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.collector import Sink
from bench.table import arguments, percentile
from klime_mp import KlimeClient
from klime_mp.delivery import spooled
from klime_mp.spool import log as spool_log


class Timed:
    """Wraps a method of a class to record each call's duration (µs)."""

    def __init__(self, owner: type, name: str) -> None:
        self.samples: list[float] = []
        self._owner, self._name = owner, name
        self._real: Callable[..., Any] = getattr(owner, name)

    def __enter__(self) -> Timed:
        real, samples = self._real, self.samples

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter_ns()
            try:
                return real(*args, **kwargs)
            finally:
                samples.append((time.perf_counter_ns() - start) / 1000)

        setattr(self._owner, self._name, timed)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self._owner, self._name, self._real)


def run(mode: str, url: str, events: int, work: Path) -> dict[str, list[float]]:
    options: dict[str, Any] = {}
    if mode != "memory":
        options["spool_dir"] = work / f"{mode}-{time.monotonic_ns()}"
    if mode == "spool+fsync":
        options["spool_fsync_interval"] = 1.0
    client = KlimeClient("bench-key", url, max_queue_size=events + 1, **options)
    properties = {"plan": "pro", "pad": "x" * 200}
    calls: list[float] = []
    take, ack = Timed(spooled.Spool, "take"), Timed(spooled.Spool, "acknowledge")
    sync = Timed(spool_log.EventLog, "sync")
    with take, ack, sync:
        gc.disable()
        for _ in range(events):
            start = time.perf_counter_ns()
            client.track("Tail", properties, user_id="u")
            calls.append((time.perf_counter_ns() - start) / 1000)
        gc.enable()
        assert client.flush(60), client.stats()
    client.shutdown()
    return {"track": calls, "take": take.samples, "ack": ack.samples, "sync": sync.samples}


def main() -> None:
    args = arguments(__doc__, events=50_000, rounds=3)
    modes = ("memory", "spool", "spool+fsync")
    found: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    sink = Sink()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                for mode in modes:
                    for name, samples in run(mode, sink.url, args.events, Path(tmp)).items():
                        found[mode].setdefault(name, []).extend(samples)
    finally:
        sink.stop()
    print(f"{args.events} events x {args.rounds} rounds; load {os.getloadavg()[0]:.1f}; µs")
    print(f"{'mode':<12} {'what':<6} {'calls':>7} {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>9}")
    for mode in modes:
        for name, samples in found[mode].items():
            if samples:
                p50, p99, p999 = (percentile(sorted(samples), q) for q in (0.5, 0.99, 0.999))
                print(
                    f"{mode:<12} {name:<6} {len(samples):>7} {p50:>8.1f} {p99:>8.1f}"
                    f" {p999:>8.1f} {max(samples):>9.1f}"
                )


if __name__ == "__main__":
    main()
