"""One SDK, one measurement, in a fresh process: ``python -m bench.workload PART CONFIG OUT``.
It leaves through ``os._exit`` once its JSON result is written: the official SDK's exit
hooks would retry for minutes with the collector down."""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from array import array
from typing import Any, Callable

from bench.collector import SinkStats
from bench.sdks import Adapter, Settings, make
from bench.table import percentile

Config = dict[str, Any]
Result = dict[str, Any]


def write_result(path: str, result: Result) -> None:
    with open(f"{path}.tmp", "w") as out:
        json.dump(result, out)
    os.replace(f"{path}.tmp", path)


class Recorder:
    """Times each call; the watchdog reads how far it got if a call never returns."""

    def __init__(self, calls: int) -> None:
        self.samples = array("q", bytes(8 * calls))
        self.done = 0
        self.started = 0  # perf_counter_ns of the call in flight, 0 between runs

    def run(self, call: Callable[..., Any], calls: int) -> None:
        samples, clock = self.samples, time.perf_counter_ns
        for i in range(calls):
            props = {"report_type": "revenue", "rows": i}
            start = self.started = clock()
            call(properties=props)
            samples[i] = clock() - start
            self.done = i + 1

    def result(self, censored_ns: int | None = None) -> Result:
        # With the call in flight when the run was cut, censored: a lower bound.
        cut = [] if censored_ns is None else [censored_ns]
        ordered = sorted([*self.samples[: self.done], *cut])
        quantiles = {"p50_us": 0.5, "p99_us": 0.99, "p999_us": 0.999}
        return {
            **{name: percentile(ordered, q) / 1e3 for name, q in quantiles.items()},
            "max_ms": ordered[-1] / 1e6,
            "calls": len(ordered),
            "cut": censored_ns is not None,
        }


def latency(config: Config, out: str) -> Result:
    """``calls`` timed calls; a stall or a run past its budget is cut, the call censored."""
    calls: int = config["calls"]
    settings = Settings(config["url"], queue_size=config["queue_size"])
    # "floor": the same loop around a call that does nothing, the harness's own cost
    sdk = Adapter(settings) if config["sdk"] == "floor" else make(config["sdk"], settings)
    recorder = Recorder(calls)
    finished = threading.Event()
    deadline = time.monotonic() + config["budget_s"]

    def watch() -> None:
        while not finished.wait(0.25):
            started = recorder.started
            stalled = started and time.perf_counter_ns() - started > config["stall_s"] * 1e9
            if stalled or time.monotonic() > deadline:
                write_result(out, recorder.result(time.perf_counter_ns() - started))
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    if config["prefill"]:  # untimed but watched: the official SDK can block right here
        for i in range(sdk.queue_limit + 200):
            recorder.started = time.perf_counter_ns()
            sdk.call(properties={"report_type": "revenue", "rows": i})
        recorder.started = 0
    recorder.run(sdk.call, calls)
    finished.set()
    return recorder.result()


def throughput(config: Config, out: str) -> Result:
    """A burst of ``events``, then the wait until the sink counted the last one."""
    events: int = config["events"]
    sdk = make(config["sdk"], Settings(config["url"], queue_size=events + 1000, batch_size=100))
    sink = SinkStats(config["url"])
    before = sink.stats()
    call = sdk.call
    started = time.monotonic_ns()
    for i in range(events):
        call(properties={"report_type": "revenue", "rows": i})
    burst = time.monotonic_ns()
    sdk.flush(config["timeout_s"])
    delivered = sink.wait_received(before["received"] + events, config["timeout_s"])
    after = sink.stats()
    seconds = (delivered - started) / 1e9 if delivered else None
    return {
        "events_per_s": events / seconds if seconds else None,
        "seconds": seconds,
        "burst_s": (burst - started) / 1e9,
        **{key: after[key] - before[key] for key in ("requests", "connections")},
    }


def _rss_mib() -> float:
    gc.collect()
    time.sleep(0.1)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(config: Config, out: str) -> Result:
    """RSS of an idle client, what import and client add, growth while events wait."""
    events: int = config["events"]
    # loaded by any web app anyway: not counted against the SDK that imports it first
    import urllib.request  # noqa: F401

    bare = _rss_mib()
    sdk: Adapter = make(config["sdk"], Settings(config["url"], queue_size=events + 1000))
    sdk.call(properties={"rows": 0})
    idle = _rss_mib()
    # the official SDK's queue never holds them (it sends from the caller): no growth
    if config["sdk"] != "klime":
        for i in range(events):
            sdk.call(properties={"report_type": "revenue", "rows": i})
    growth = (_rss_mib() - idle) * 10_000 / events if config["sdk"] != "klime" else None
    return {"idle_mib": idle, "client_mib": idle - bare, "per_10k_mib": growth}


PARTS = {"latency": latency, "throughput": throughput, "memory": memory}


if __name__ == "__main__":
    part, config, out = sys.argv[1:]
    write_result(out, PARTS[part](json.loads(config), out))
    sys.stdout.flush()
    os._exit(0)
