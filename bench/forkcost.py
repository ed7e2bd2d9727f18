"""What fork safety costs a track() call: ``python -m bench.forkcost [--blocks 20]``.

klime_mp's ``track()`` as shipped against the same call with the per-call PID check
removed: the client's process-local worker swapped for a stand-in that returns it
without looking at the PID. ``send=False``: events are built, encoded and counted but
not queued, so no sender thread competes. Blocks of calls alternate between the two
variants, and which goes first alternates too, so noise lands on both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable


class Unchecked:
    """The ``ProcessLocal`` interface without the PID check."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def get(self) -> Any:
        return self._value

    def peek(self) -> Any:
        return self._value


def per_call_ns(function: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        function()
    return (time.perf_counter_ns() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=20, help="blocks per variant")
    parser.add_argument("--calls", type=int, default=10_000, help="calls per block")
    args = parser.parse_args()
    from klime_mp import KlimeClient

    client = KlimeClient("bench-write-key", endpoint="http://127.0.0.1:9", send=False)
    client.track("Warm Up", user_id="usr_1")
    # The one internal reached: the client's ProcessLocal worker (``_worker``).
    variants: dict[str, Any] = {"with": client._worker, "without": Unchecked(client._worker.get())}

    def track() -> None:
        client.track("Report Generated", {"rows": 1}, user_id="usr_1", group_id="org_1")

    timings: dict[str, list[float]] = {name: [] for name in variants}
    for block in range(args.blocks):
        for name in sorted(variants, reverse=block % 2 == 1):
            client._worker = variants[name]
            timings[name].append(per_call_ns(track, args.calls))
    client._worker = variants["with"]
    checked, unchecked = (statistics.median(timings[n]) for n in ("with", "without"))
    getpid = min(per_call_ns(os.getpid, 100_000) for _ in range(5))
    print(f"track() {checked:,.0f} ns with the PID check, {unchecked:,.0f} ns without:")
    print(f"  {checked - unchecked:,.0f} ns ({(checked / unchecked - 1) * 100:.1f} %)")
    print(f"  os.getpid() {getpid:,.0f} ns; {args.blocks} blocks of {args.calls:,} calls each")


if __name__ == "__main__":
    main()
