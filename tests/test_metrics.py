"""OpenTelemetry metrics: the instruments on the meter ``klime_mp`` of the global
MeterProvider, read from the client's counters at collection time, with a provider set
before or after ``configure()``, in a plain process and in a forked Gunicorn worker.

Each case runs in a fresh interpreter: the global MeterProvider can be set only once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from klime_mp.collector import Collector
from tests.servers import APPS, Servers, running_servers

pytest.importorskip("opentelemetry.sdk.metrics")

SCRIPT = textwrap.dedent("""
    import json, sys
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    import klime_mp

    def collected(reader):
        found = {}
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics if scope.scope.name == "klime_mp" else []:
                    points = found.setdefault(metric.name, {})
                    for point in metric.data.data_points:
                        points[str(point.attributes.get("reason", ""))] = point.value
        return found

    endpoint, when, spool, flush = sys.argv[1], sys.argv[2], sys.argv[3] or None, sys.argv[4]
    reader = InMemoryMetricReader()
    if when != "after":
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    options = dict(max_batch_size=5, retry_initial_delay=50, retry_max_attempts=1000,
                   shutdown_timeout=0.5)
    if when == "off":
        options["metrics"] = False
    client = klime_mp.configure("key", endpoint=endpoint, spool_dir=spool, **options)
    for n in range(5):
        klime_mp.track("Metered", {"n": n}, user_id="usr_1")
    if when == "after":
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    klime_mp.flush(float(flush))
    before = collected(reader)
    klime_mp.shutdown()
    print(json.dumps({"flushed": before, "shut_down": collected(reader)}))
""")


def run(endpoint: str, when: str, spool: Path | None = None, flush: float = 10) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, endpoint, when, str(spool or ""), str(flush)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("when", ["before", "after"])
def test_metrics_read_the_counters_whenever_the_provider_is_set(
    collector: Collector, when: str
) -> None:
    got = run(collector.url, when)["flushed"]
    assert got["klime.events.accepted"] == {"": 5}
    assert got["klime.events.delivered"] == {"": 5}
    assert got["klime.requests.failed"] == {"": 0}
    assert got["klime.queue.size"] == {"": 0}
    assert got["klime.spool.events"] == {"": 0}
    assert got["klime.spool.bytes"] == {"": 0}
    assert got.get("klime.events.dropped", {}) == {}


def test_an_outage_shows_as_failed_requests_a_queue_and_drops_by_reason() -> None:
    got = run("http://127.0.0.1:9", "before", flush=0.5)  # nothing listens on port 9
    flushed, shut_down = got["flushed"], got["shut_down"]
    assert flushed["klime.requests.failed"][""] >= 1
    assert flushed["klime.queue.size"] == {"": 5}
    assert flushed["klime.events.delivered"] == {"": 0}
    # After shutdown the client is gone, its counts are not: counters never go down.
    assert shut_down["klime.events.accepted"] == {"": 5}
    assert shut_down["klime.events.dropped"] == {"shutdown_timeout": 5}


def test_the_spool_gauges_count_what_waits_on_disk(tmp_path: Path) -> None:
    got = run("http://127.0.0.1:9", "before", spool=tmp_path / "spool", flush=0.5)["flushed"]
    assert got["klime.spool.events"] == {"": 5}
    assert got["klime.spool.bytes"][""] > 0


def test_the_option_turns_the_metrics_off(collector: Collector) -> None:
    got = run(collector.url, "off")["flushed"]
    assert got == {}


@pytest.fixture
def servers(tmp_path: Path, collector: Collector) -> Iterator[Servers]:
    with running_servers(tmp_path, collector) as running:
        yield running


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=20) as reply:
        return json.load(reply)


@pytest.mark.server
def test_metrics_in_a_forked_gunicorn_worker(servers: Servers, collector: Collector) -> None:
    # Provider, reader and client are set up in the master (--preload); the worker,
    # forked from it, reports its own counts.
    server = servers.bare_gunicorn("--preload", workers=1, app="otel_app:app", chdir=APPS)
    pids = {get(f"{server.url}/track")["pid"] for _ in range(7)}
    answer = get(f"{server.url}/metrics")
    assert pids == {answer["pid"]} and answer["pid"] != server.pid
    got = answer["metrics"]
    assert got["klime.events.accepted"] == {"": 7}
    assert got["klime.events.delivered"] == {"": 7}
    assert got["klime.queue.size"] == {"": 0}
    assert collector.stats().stored == 7
