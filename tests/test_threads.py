"""Gunicorn's threaded worker (gthread, ``--threads 4``) with nothing but ``configure()``:
every event arrives once, each request's events in the order it tracked them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from klime_mp.collector import Collector
from tests.servers import (
    Servers,
    assert_each_request_in_order,
    assert_exactly_once,
    run_load,
    running_servers,
    stop_and_count,
)

pytestmark = pytest.mark.server

pytest.importorskip("gunicorn")


@pytest.fixture
def servers(tmp_path: Path, collector: Collector) -> Iterator[Servers]:
    with running_servers(tmp_path, collector) as running:
        yield running


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_gthread_workers_deliver_every_event_in_order(
    servers: Servers, collector: Collector, preload: bool
) -> None:
    options = ["--worker-class", "gthread", "--threads", "4"] + (["--preload"] if preload else [])
    server = servers.bare_gunicorn(*options, workers=2)
    load = run_load(server, total=100, concurrency=8)
    got = stop_and_count(server, collector, load)
    assert_exactly_once(load, got)
    assert_each_request_in_order(collector)
