"""What one benchmark subprocess does: one SDK, one scenario, a JSON result file.

    python -m bench.workload SCENARIO CONFIG_JSON RESULT_PATH

Each SDK runs in a fresh process so no SDK's threads, queues or exit hooks touch
another's numbers. A process leaves through ``os._exit`` once its result is written:
exit hooks have nothing left to measure (and the official SDK's would retry for
minutes with the collector down).
"""

from __future__ import annotations

import bisect
import gc
import json
import multiprocessing
import os
import resource
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any, Callable, NoReturn

from bench.control import SinkClient, get_json, wait_until
from bench.sdks import Adapter, Settings, make
from bench.stats import LATENCY_LEVELS, percentile

Config = dict[str, Any]
Result = dict[str, Any]


def write_result(path: str, result: Result) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        json.dump(result, out)
    os.replace(tmp, path)


def properties(i: int) -> dict[str, Any]:
    return {"report_type": "revenue", "rows": i}


# -- 1. call latency ----------------------------------------------------------------


class Recorder:
    """Times each call; a watchdog can read how far it got if a call never returns."""

    def __init__(self, calls: int) -> None:
        self.samples = array("q", bytes(8 * calls))
        self.done = 0
        self.started = 0  # perf_counter_ns of the call in flight
        self.switches = 0  # involuntary context switches before the run

    @staticmethod
    def _preemptions() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw

    def run(self, call: Callable[..., Any], calls: int) -> None:
        samples, clock = self.samples, time.perf_counter_ns
        self.switches = self._preemptions()
        for i in range(calls):
            props = {"report_type": "revenue", "rows": i}
            start = clock()
            self.started = start
            call(properties=props)
            samples[i] = clock() - start
            self.done = i + 1

    def result(self, censored_ns: int | None = None) -> Result:
        ordered = sorted(self.samples[: self.done])
        if censored_ns is not None:
            # The call still running when the run was cut: ranked at what it had taken
            # so far, a lower bound of its latency.
            bisect.insort(ordered, censored_ns)
        points = {str(q): percentile(ordered, q) for q in LATENCY_LEVELS}
        return {
            "n": len(ordered),
            "censored_ns": censored_ns,
            "p50_ns": points["0.5"],
            "p99_ns": points["0.99"],
            "p999_ns": points["0.999"],
            "max_ns": float(ordered[-1]) if ordered else None,
            "mean_ns": sum(ordered) / len(ordered) if ordered else None,
            "quantiles_ns": points,
            # How often the OS took the CPU away mid-run: a noisy machine shows here.
            "preemptions": self._preemptions() - self.switches if self.switches else None,
        }


def _watchdog(
    recorder: Recorder, budget: float, stall: float, on_cut: Callable[[], None]
) -> threading.Event:
    """Call ``on_cut`` when one call has been running for ``stall`` seconds or the run
    for ``budget`` seconds, unless the returned event is set first. It wakes four
    times a second: rarely enough not to disturb the calls it watches."""
    finished = threading.Event()
    deadline = time.monotonic() + budget

    def watch() -> None:
        while not finished.wait(0.25):
            started = recorder.started
            stalled = started and time.perf_counter_ns() - started > stall * 1e9
            if stalled or time.monotonic() > deadline:
                on_cut()
                return

    threading.Thread(target=watch, name="bench-watchdog", daemon=True).start()
    return finished


def latency(config: Config, out: str) -> Result:
    calls: int = config["calls"]
    sdk = _latency_sdk(config)
    recorder = Recorder(calls)
    phase = ["prefill"]

    def give_up() -> None:
        # A call blocked for ``stall_s`` (the official SDK sending and retrying in the
        # caller's thread), or the run past its budget: the call in flight is reported
        # censored at its elapsed time, and the run stops here.
        inflight = time.perf_counter_ns() - recorder.started if recorder.started else None
        result = recorder.result(inflight)
        result.update(budget_exhausted=True, phase=phase[0])
        write_result(out, result)
        os._exit(0)

    finished = _watchdog(recorder, config["budget_s"], config["stall_s"], give_up)
    queued_before = _prefill(sdk, recorder) if config.get("prefill") else sdk.queued()
    phase[0] = "timed"
    recorder.started = 0
    recorder.run(sdk.call, calls)
    finished.set()
    result = recorder.result()
    result.update(budget_exhausted=False, queued_before=queued_before, queued_after=sdk.queued())
    return result


def _latency_sdk(config: Config) -> Adapter:
    settings = Settings(url=config["url"], queue_size=config.get("queue_size"))
    if config["sdk"] == "floor":
        return _Floor(settings)
    return make(config["sdk"], settings)


class _Floor(Adapter):
    """The harness alone: the same loop around a call that does nothing."""

    def queued(self) -> int:
        return 0


def _prefill(sdk: Adapter, recorder: Recorder) -> int:
    """Fill the SDK's queue to its limit (untimed, but watched: the official SDK can
    block right here)."""
    for i in range(sdk.queue_limit + 200):
        recorder.started = time.perf_counter_ns()
        sdk.call(properties=properties(i))
    return sdk.queued()


# -- 2. throughput ------------------------------------------------------------------


def throughput(config: Config, out: str) -> Result:
    events: int = config["events"]
    sdk = make(config["sdk"], Settings(url=config["url"], queue_size=events + 1000, batch_size=100))
    sink = SinkClient(config["control"])
    call = sdk.call
    started = time.monotonic_ns()
    for i in range(events):
        call(properties={"report_type": "revenue", "rows": i})
    enqueued = time.monotonic_ns()
    sdk.flush(config["timeout_s"])
    flushed = time.monotonic_ns()
    remaining = config["timeout_s"] - (flushed - started) / 1e9
    complete = sink.wait_events(events, max(remaining, 1.0))
    return {
        "started_ns": started,
        "enqueued_ns": enqueued,
        "flushed_ns": flushed,
        "complete": complete,
    }


# -- 5. memory -----------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _settled_rss() -> int:
    gc.collect()
    time.sleep(0.1)
    return rss_bytes()


def memory(config: Config, out: str) -> Result:
    """Idle client RSS, then the growth while ``events`` wait in the queue (collector
    down, queue large enough to hold them all)."""
    events: int = config["events"]
    bare = _settled_rss()
    sdk = make(config["sdk"], Settings(url=config["url"], queue_size=events + 1000))
    sdk.call(properties=properties(0))  # starts the sender thread, where there is one
    idle = _settled_rss()
    result: Result = {"bare_rss": bare, "idle_rss": idle, "queued": None, "full_rss": None}
    if not config.get("queue_growth", True):
        return result
    for i in range(events):
        sdk.call(properties=properties(i))
    result["full_rss"] = _settled_rss()
    result["queued"] = sdk.queued()
    return result


# -- 6. the cost of fork safety ------------------------------------------------------


class _Unchecked:
    """A stand-in for ``ProcessLocal`` that returns the worker without a PID check."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def get(self) -> Any:
        return self._value

    def peek(self) -> Any:
        return self._value


def forkcost(config: Config, out: str) -> Result:
    """klime_mp's track() as shipped vs. with the per-call PID check removed.

    ``send=False``: the event is built, encoded and counted but not queued, so no
    sender thread competes and only the call itself is measured. Blocks of calls
    alternate between the two variants (which goes first alternates too)."""
    from klime_mp import KlimeClient

    client = KlimeClient("bench-write-key", endpoint=config["url"], send=False)
    track = client.track
    track("Warm Up", user_id="usr_1")
    checked = client._worker  # the ProcessLocal
    unchecked = _Unchecked(checked.get())
    per_block: int = config["calls_per_block"]
    timings: dict[str, list[float]] = {"with": [], "without": []}
    for block in range(config["blocks"]):
        order = ("with", "without") if block % 2 == 0 else ("without", "with")
        for variant in order:
            client._worker = checked if variant == "with" else unchecked  # type: ignore[assignment]
            start = time.perf_counter_ns()
            for i in range(per_block):
                track("Report Generated", {"rows": i}, user_id="usr_1", group_id="org_1")
            timings[variant].append((time.perf_counter_ns() - start) / per_block)
    client._worker = checked
    return {
        "with_ns": timings["with"],
        "without_ns": timings["without"],
        "get_with_ns": _per_call(checked.get),
        "get_without_ns": _per_call(unchecked.get),
        "getpid_ns": _per_call(os.getpid),
    }


def _per_call(function: Callable[[], Any], calls: int = 200_000) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


# -- 4. fork ------------------------------------------------------------------------
# The parent tracks ``parent_events`` events (queued, not yet sent) and then forks:
#
# * ``fork``: ``children`` processes from ``os.fork()``; each tracks a marker event,
#   waits up to ``wait_s`` for it to arrive, tracks ``child_events`` more and leaves
#   through a normal interpreter exit (``sys.exit``: atexit hooks run).
# * ``pool``: a ``multiprocessing`` fork-context pool of ``children`` workers runs
#   ``tasks`` tasks doing the same; pool workers leave through ``os._exit`` after
#   multiprocessing's finalizers, never running atexit.
#
# The parent then leaves through a normal exit too. Every event carries a unique
# ``properties.eid``, so whoever receives them (the sink or the real collector) tells
# delivered, lost and duplicated events apart; markers give the time from a child's
# first track() to its arrival. The gunicorn --preload mode is in bench.under_gunicorn.

_forked: dict[str, Any] = {}  # the parent's SDK and config, inherited by the children


def _track(eid: str, marker: str | None = None) -> None:
    props: dict[str, Any] = {"report_type": "revenue", "eid": eid}
    if marker is not None:
        props["marker"] = marker
    _forked["sdk"].call(properties=props)


def _arrived(marker: str) -> bool:
    control = _forked["config"].get("control")
    return bool(control) and get_json(f"{control}/marker?m={marker}", 5)["ns"] is not None


def _child_work(tag: str) -> int:
    """A child's life: marker, wait for it (bounded), the rest. Returns the marker's
    track() time (time.monotonic_ns)."""
    config = _forked["config"]
    started = time.monotonic_ns()
    _track(f"{tag}-0", marker=tag)
    wait_until(lambda: _arrived(tag), config["wait_s"], poll=0.02)
    for i in range(1, config["child_events"] + 1):
        _track(f"{tag}-{i}")
    return started


def _pool_task(k: int) -> tuple[str, int]:
    tag = f"t{k}"
    return tag, _child_work(tag)


def _fork_child(tag: str, folder: Path) -> None:
    try:
        started = _child_work(tag)
        (folder / f"{tag}.start").write_text(str(started))
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)
    # A normal interpreter exit, as a forked script that simply ends would take.
    sys.exit(0)


def fork(config: Config, out: str) -> NoReturn:
    settings = Settings(url=config["url"], flush_interval_s=config["flush_interval_s"])
    _forked.update(config=config, sdk=make(config["sdk"], settings))
    for i in range(config["parent_events"]):
        _track(f"p-{i}")
    tag = "f" if config["mode"] == "fork" else "t"
    count = config["children"] if config["mode"] == "fork" else config["tasks"]
    starts: dict[str, int] = {}
    if config["mode"] == "fork":
        folder = Path(out).parent
        pids = []
        for k in range(count):
            pid = os.fork()
            if pid == 0:
                _fork_child(f"f{k}", folder)
            pids.append(pid)
        for k, pid in enumerate(pids):
            os.waitpid(pid, 0)
            path = folder / f"f{k}.start"
            if path.exists():
                starts[f"f{k}"] = int(path.read_text())
    else:
        pool = multiprocessing.get_context("fork").Pool(config["children"])
        starts = dict(pool.map(_pool_task, range(count), chunksize=1))
        pool.close()
        pool.join()
    # Every eid the run should deliver exactly once (parent's and children's).
    expected = [f"p-{i}" for i in range(config["parent_events"])]
    for k in range(count):
        expected.extend(f"{tag}{k}-{i}" for i in range(config["child_events"] + 1))
    write_result(out, {"starts_ns": starts, "expected": expected})
    # The parent leaves like an application does: a normal exit, exit hooks and all.
    sys.exit(0)


SCENARIOS: dict[str, Callable[[Config, str], Result]] = {
    "latency": latency,
    "throughput": throughput,
    "memory": memory,
    "forkcost": forkcost,
}


def main(argv: list[str]) -> None:
    scenario, config, out = argv
    if scenario == "fork":
        fork(json.loads(config), out)  # leaves through a normal exit
    result = SCENARIOS[scenario](json.loads(config), out)
    write_result(out, result)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
