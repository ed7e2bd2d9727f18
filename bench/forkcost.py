"""What fork safety costs a track() call: ``python -m bench.forkcost [--blocks 20]``;
method in docs/performance.md."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any, Callable

from bench.table import arguments, medians


def without_check(worker: Any) -> SimpleNamespace:
    """The ``ProcessLocal`` interface without the PID check."""
    return SimpleNamespace(get=lambda: worker, peek=lambda: worker)


def per_call_ns(function: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        function()
    return (time.perf_counter_ns() - start) / calls


def main() -> None:
    args = arguments(__doc__, blocks=20, calls=10_000)  # blocks per variant, calls per block
    from klime_mp import KlimeClient

    client = KlimeClient("bench-write-key", endpoint="http://127.0.0.1:9", send=False)
    client.track("Warm Up", user_id="usr_1")
    # The one internal reached: the client's ProcessLocal worker (``_worker``).
    variants: dict[str, Any] = {
        "with": client._worker,
        "without": without_check(client._worker.get()),
    }

    def track() -> None:
        client.track("Report Generated", {"rows": 1}, user_id="usr_1", group_id="org_1")

    def block(worker: Any) -> Callable[[], float]:
        def run() -> float:
            client._worker = worker
            return per_call_ns(track, args.calls)

        return run

    timings = medians({name: block(worker) for name, worker in variants.items()}, args.blocks)
    client._worker = variants["with"]
    checked, unchecked = timings["with"], timings["without"]
    getpid = min(per_call_ns(os.getpid, 100_000) for _ in range(5))
    print(f"track() {checked:,.0f} ns with the PID check, {unchecked:,.0f} ns without:")
    print(f"  {checked - unchecked:,.0f} ns ({(checked / unchecked - 1) * 100:.1f} %)")
    print(f"  os.getpid() {getpid:,.0f} ns; {args.blocks} blocks of {args.calls:,} calls each")


if __name__ == "__main__":
    main()
