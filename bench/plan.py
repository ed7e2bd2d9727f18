"""How much of everything one benchmark run does: the full run and ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Plan:
    runs: int = 3  # every figure is the median (min-max) of this many runs
    # 1. call latency
    latency_calls: int = 50_000
    latency_budget_s: float = 12.0  # a run is cut here, the call in flight censored
    latency_stall_s: float = 2.0  # ...and so is a run whose one call blocks this long
    # 2. throughput
    throughput_events: int = 50_000
    throughput_timeout_s: float = 60.0
    # 3. gunicorn
    gunicorn_workers: int = 4
    concurrency: int = 4
    requests: int = 3000  # per app, cut into ``slices`` interleaved slices
    slices: int = 10
    warmup_requests: int = 400
    # 0. CPU per event (one sync worker per SDK, in turn)
    cpu_requests: int = 2000
    cpu_warmup: int = 300
    cpu_concurrency: int = 2
    # 2b. the sink's own ceiling (a trivial client, one connection)
    ceiling_events: int = 50_000
    # 4. fork
    parent_events: int = 10
    child_events: int = 20
    children: int = 2
    tasks: int = 4
    wait_s: float = 1.0  # how long a child waits for its first event (2 flush intervals)
    fork_flush_s: float = 0.5  # every SDK's flush interval in the fork runs
    fork_workers: int = 2
    preload_requests: int = 20
    collector_check: bool = True
    # 5. memory
    memory_events: int = 50_000
    # 6. fork-safety cost
    forkcost_blocks: int = 20
    forkcost_calls_per_block: int = 10_000


FULL = Plan()

QUICK = replace(
    FULL,
    runs=1,
    latency_calls=20_000,
    latency_budget_s=5.0,
    latency_stall_s=1.0,
    throughput_events=10_000,
    throughput_timeout_s=30.0,
    requests=600,
    slices=3,
    warmup_requests=100,
    preload_requests=8,
    collector_check=False,
    memory_events=10_000,
    forkcost_blocks=6,
    forkcost_calls_per_block=5_000,
    cpu_requests=600,
    cpu_warmup=100,
    ceiling_events=10_000,
)

PARTS = ("cpu", "latency", "throughput", "gunicorn", "fork", "memory", "forkcost")
CONDITIONS = ("up", "down", "full")
FORK_MODES = ("fork", "pool", "preload")
