"""The collector's sink mode, which the benchmark posts every SDK's batches to."""

from __future__ import annotations

import http.client
import json

import pytest

from klime_mp.collector import Collector

pytestmark = pytest.mark.timeout(30)


def post(collector: Collector, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=5)
    try:
        conn.request("POST", path, body, headers)
        reply = conn.getresponse()
        assert reply.status == 200
        return reply.read()
    finally:
        conn.close()


def test_sink_accepts_other_sdks_paths_and_keys_and_counts_without_storing() -> None:
    segment = json.dumps({"batch": [{"event": "a"}, {"event": "b"}]}).encode()
    posthog = json.dumps({"api_key": "k", "batch": [{"event": "c"}]}).encode()
    with Collector(sink=True) as collector:
        assert post(collector, "/v1/batch", segment, {"Authorization": "Basic az0="}) == b"{}"
        assert post(collector, "/batch/", posthog, {}) == b"{}"
        assert post(collector, "/v1/batch", b"not json", {}) == b"{}"
    # Read once stopped: the sink answers before it counts, and stop() waits for the
    # request threads, so every count is in by then.
    stats = collector.stats()
    assert (stats.requests, stats.received, stats.stored) == (3, 3, 0)


def test_without_sink_mode_other_paths_are_still_refused() -> None:
    with Collector() as collector:
        conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=5)
        conn.request("POST", "/batch/", b"{}", {"Authorization": "Bearer k"})
        assert conn.getresponse().status == 404
        conn.close()
