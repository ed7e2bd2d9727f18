"""Numbers for docs/fork-safety.md (not a test): ``measure_forksafe.py ENDPOINT``.

* the cost of the PID check: ``ProcessLocal.get()`` against a plain attribute read;
* the time from a forked child's first ``track()`` to the collector's answer, with the
  default flush interval, with a short one, and with ``flush()`` right after.
"""

from __future__ import annotations

import json
import os
import sys
import time
import timeit

import klime_mp
from klime_mp.lifecycle import forksafe


class Holder:
    def __init__(self) -> None:
        self.value = object()


def per_call_ns(statement: str, env: dict[str, object]) -> float:
    timer = timeit.Timer(statement, globals=env)
    loops, _ = timer.autorange()
    best = min(timer.repeat(repeat=7, number=loops))
    return best / loops * 1e9


def pid_check_cost() -> dict[str, float]:
    local = forksafe.ProcessLocal(Holder, lambda value, budget: None)  # type: ignore[arg-type,type-var]
    local.get()
    env: dict[str, object] = {"local": local, "holder": Holder(), "os": os}
    get = per_call_ns("local.get()", env)
    attribute = per_call_ns("holder.value", env)
    getpid = per_call_ns("os.getpid()", env)
    return {"get_ns": get, "attribute_ns": attribute, "getpid_ns": getpid}


def first_track_to_delivery(endpoint: str, interval_ms: int | None, flush: bool) -> float:
    """Seconds from a child's first track() to the success callback, median of 5."""
    read_end, write_end = os.pipe()
    samples = []
    for _ in range(5):
        client = klime_mp.KlimeClient("k", endpoint=endpoint, flush_interval=interval_ms)
        client.track("warm-up", user_id="u")  # the parent is warm, as a master would be
        client.flush()
        pid = os.fork()
        if pid == 0:
            measure_child(endpoint, interval_ms, flush, write_end)
        os.waitpid(pid, 0)
        samples.append(float(os.read(read_end, 64).decode().split()[0]))
        client.shutdown()
    samples.sort()
    return samples[len(samples) // 2]


def measure_child(endpoint: str, interval_ms: int | None, flush: bool, write_end: int) -> None:
    started = time.perf_counter()

    def delivered(response: object) -> None:
        os.write(write_end, f"{time.perf_counter() - started}\n".encode())

    child = klime_mp.KlimeClient(
        "k", endpoint=endpoint, flush_interval=interval_ms, on_success=delivered
    )
    child.track("first", user_id="u")
    if flush:
        child.flush()
    child.shutdown()
    os._exit(0)


def main(endpoint: str) -> None:
    result: dict[str, object] = {"python": sys.version.split()[0], **pid_check_cost()}
    # shutdown() wakes the sender at once, so without flush() these measure the wait
    # for the flush interval only where the child lives longer than it: a child that
    # exits sooner sends at exit. Hence the default interval is measured by sleeping.
    result["first_track_to_delivery_flush_s"] = first_track_to_delivery(endpoint, None, True)
    result["first_track_to_delivery_interval_100ms_s"] = interval_delivery(endpoint, 100)
    result["first_track_to_delivery_default_interval_s"] = interval_delivery(endpoint, None)
    print(json.dumps(result, indent=2))


def interval_delivery(endpoint: str, interval_ms: int | None) -> float:
    """A child that keeps running: its first event goes out on the interval timer."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        started = time.perf_counter()

        def delivered(response: object) -> None:
            os.write(write_end, f"{time.perf_counter() - started}\n".encode())

        client = klime_mp.KlimeClient(
            "k", endpoint=endpoint, flush_interval=interval_ms, on_success=delivered
        )
        client.track("first", user_id="u")
        time.sleep(3)
        os._exit(0)
    os.waitpid(pid, 0)
    return float(os.read(read_end, 64).decode().split()[0])


if __name__ == "__main__":
    main(sys.argv[1])
