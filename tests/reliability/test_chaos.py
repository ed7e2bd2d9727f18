"""Chaos runs: real process fleets tracking under load against a collector that answers
a fifth of the batches 503 and drops one connection in twenty. Once the faults stop,
every tracked event must be stored exactly once; raw duplicates are allowed only where
a connection dropped after the batch was stored made a resend unavoidable.

Seconds by default; ``KLIME_LONG_CHAOS=1`` runs minutes.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from klime_mp.collector import Collector, FaultPlan
from tests.reliability.support import (
    CHAOS_CLIENT,
    CHAOS_PLAN,
    GUNICORN_CHAOS_TIMEOUTS,
    LONG,
    Script,
    assert_duplicates_explained,
    fault_figures,
    reported_lost,
    script_env,
    write_report,
)

POOL_SECONDS = 180.0 if LONG else 8.0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.fork
@pytest.mark.timeout(600 if LONG else 90)
def test_pool_under_faults_stores_every_tracked_event_exactly_once(tmp_path: Path) -> None:
    log = tmp_path / "workers.jsonl"
    env = script_env(CHAOS_CLIENT=json.dumps(CHAOS_CLIENT))
    # In-process collector: only the script forks, never this test process.
    with Collector(db=tmp_path / "events.sqlite3", faults=CHAOS_PLAN) as collector:
        script = Script("pool_chaos.py", collector.url, str(log), str(POOL_SECONDS), env=env)
        try:
            loaded = script.read()
            assert loaded["phase"] == "loaded", loaded
            collector.faults = FaultPlan()  # the faults stop
            script.send("heal")
            done = script.read()
            assert script.wait(60) == 0, script.stderr()
        finally:
            script.kill()
        tracked = done["tracked"]
        collector.wait_for(tracked, 10)
        stats = collector.stats()
        keys = Counter(
            (event["traits" if event["type"] == "identify" else "properties"]["task"],
             event["traits" if event["type"] == "identify" else "properties"]["seq"])
            for event in collector.events()
        )  # fmt: skip

    records = read_jsonl(log)
    workers = [r for r in records if r["kind"] == "stats"]
    lost = sum(r["count"] for r in records if r["kind"] == "error")
    dropped: Counter[str] = Counter()
    for worker in workers:
        dropped.update(worker["dropped"])
    figures = {
        "run": "multiprocessing pool (fork), 4 workers, maxtasksperchild=6",
        "seconds": POOL_SECONDS,
        "worker_processes": len(workers),
        "events_tracked": tracked,
        "events_stored": stats.stored,
        "events_lost": tracked - len(keys),
        "events_reported_lost": lost,
        "client_retries": sum(w["retries"] for w in workers),
        "client_dropped": dict(dropped),
        **fault_figures(stats),
    }
    write_report("chaos_pool", figures)

    assert len(workers) == done["worker_pids"] >= 5  # recycled under faults
    assert all(count == 1 for count in keys.values()), "an event was stored twice"
    assert len(keys) == stats.stored
    # Nothing is lost silently: a worker recycled while the faults lasted may give up a
    # batch at its exit deadline (see CHAOS_CLIENT), and then reports it.
    assert tracked - len(keys) <= lost == sum(dropped.values())
    if not LONG:
        assert lost == 0 and stats.stored == tracked
    assert sum(w["sent"] for w in workers) + lost == tracked
    assert_duplicates_explained(stats)
    assert {"error", "drop", "drop_after_store"} <= set(stats.faults_injected)


GUNICORN_REQUESTS = 40_000 if LONG else 2_500
RELOAD_EVERY = 4_000 if LONG else 800


@pytest.mark.server
@pytest.mark.timeout(900 if LONG else 100)
def test_gunicorn_recycling_and_reloading_under_faults_stores_every_event_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gunicorn")
    from tests.servers import run_load, running_servers, stop_and_count

    monkeypatch.setenv("PYTHONPATH", script_env()["PYTHONPATH"])  # for chaos_app
    with Collector(db=tmp_path / "events.sqlite3", faults=CHAOS_PLAN) as collector:
        with running_servers(tmp_path, collector) as servers:
            server = servers.gunicorn(
                "--preload",
                "--max-requests", "60",
                "--max-requests-jitter", "20",
                *GUNICORN_CHAOS_TIMEOUTS,
                workers=4,
                app="tests.reliability.chaos_app:app",
            )  # fmt: skip
            reloads = range(RELOAD_EVERY, GUNICORN_REQUESTS, RELOAD_EVERY)
            hup = {n: lambda: server.signal(signal.SIGHUP) for n in reloads}
            started = time.monotonic()
            load = run_load(server, GUNICORN_REQUESTS, at=hup, concurrency=4)
            collector.faults = FaultPlan()  # the faults stop
            got = stop_and_count(server, collector, load)
            elapsed = time.monotonic() - started
            log = server.log()
        stats = collector.stats()

    booted = log.count("Booting worker with pid")
    figures = {
        "run": "gunicorn --preload, 4 sync workers, --max-requests 60 (+0..20), HUP reloads",
        "requests": load.sent,
        "requests_failed": load.failed,
        "hup_reloads": len(hup),
        "worker_processes": booted,
        "seconds": round(elapsed, 1),
        "events_tracked": load.events_expected,
        "events_stored": got.stored,
        "events_lost": load.events_expected - got.stored,
        "events_reported_lost": reported_lost(log),
        **fault_figures(stats),
    }
    write_report("chaos_gunicorn", figures)

    assert load.failed == 0, load.errors[:5]
    assert got.stored <= load.events_expected  # nothing extra
    # Nothing lost silently (see the pool test); in the short run nothing lost at all.
    assert load.events_expected - got.stored <= reported_lost(log)
    if not LONG:
        assert got.stored == load.events_expected
        assert got.track_by_pid == load.requests_by_pid  # each request's event, once
        # No loss, no drop, no warning of any kind but the outage's own: a fault the
        # collector injects is an outage, which is said once when it begins and ends.
        outage = ("Klime: cannot deliver events: ", "Klime: delivering again after ")
        said = [line for line in log.splitlines() if "Klime:" in line]
        assert [line for line in said if not any(o in line for o in outage)] == []
    assert booted >= 4 + 2 * len(hup) + 4, "expected recycling and reloads"
    assert_duplicates_explained(stats)
    assert {"error", "drop", "drop_after_store"} <= set(stats.faults_injected)
