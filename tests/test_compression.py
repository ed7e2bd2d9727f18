"""compression="gzip": every batch goes out gzipped with Content-Encoding: gzip, and
the local collector takes such bodies. Off by default: the Klime API does not document
compressed bodies, so without the option a request is byte for byte what it was."""

from __future__ import annotations

import gzip
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from klime_mp import KlimeClient
from klime_mp.collector import Collector
from klime_mp.collector.server import MAX_BODY_BYTES
from tests.conftest import WRITE_KEY
from tests.scripted_server import Reply, ScriptedServer

OK_3 = Reply(body=b'{"status":"ok","accepted":3,"failed":0}')


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer().start()
    yield running
    running.stop()


def track_three(client: KlimeClient) -> None:
    for n in range(3):
        client.track("Report Generated", {"report_type": "revenue", "rows": n}, user_id="u")


def test_batches_are_gzipped_with_their_header(server: ScriptedServer) -> None:
    server.then(OK_3)
    with KlimeClient("key", endpoint=server.url, compression="gzip") as client:
        track_three(client)
        assert client.flush(10)
    (request,) = server.received
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.headers["Content-Type"] == "application/json"
    assert int(request.headers["Content-Length"]) == len(request.body)
    batch = json.loads(gzip.decompress(request.body))["batch"]
    assert [e["properties"]["rows"] for e in batch] == [0, 1, 2]
    assert len(request.body) < len(gzip.decompress(request.body))


def test_without_the_option_nothing_is_compressed(server: ScriptedServer) -> None:
    server.then(OK_3)
    with KlimeClient("key", endpoint=server.url) as client:
        track_three(client)
        assert client.flush(10)
    (request,) = server.received
    assert "Content-Encoding" not in request.headers
    assert [e["properties"]["rows"] for e in request.events()] == [0, 1, 2]


def test_a_retried_batch_is_gzipped_again_with_the_same_content(server: ScriptedServer) -> None:
    server.then(Reply(status=503, body=b"{}"), OK_3)
    with KlimeClient(
        "key", endpoint=server.url, compression="gzip", retry_initial_delay=10
    ) as client:
        track_three(client)
        assert client.flush(10)
    first, second = server.received
    assert second.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(first.body) == gzip.decompress(second.body)


def test_sync_calls_are_gzipped_too(server: ScriptedServer) -> None:
    server.then(Reply(body=b'{"status":"ok","accepted":1,"failed":0}'))
    with KlimeClient("key", endpoint=server.url, compression="gzip") as client:
        assert client.track_sync("A", user_id="u").accepted == 1
    (request,) = server.received
    assert json.loads(gzip.decompress(request.body))["batch"][0]["event"] == "A"


def test_the_collector_stores_gzipped_batches(collector: Collector) -> None:
    with KlimeClient(WRITE_KEY, endpoint=collector.url, compression="gzip") as client:
        for n in range(250):
            client.track("Report Generated", {"rows": n}, user_id="u", group_id="g")
        client.identify("u", {"plan": "pro"})
    stored = collector.events()
    assert len(stored) == 251 and stored[-1]["traits"] == {"plan": "pro"}
    assert [e["properties"]["rows"] for e in stored[:250]] == list(range(250))


def post(collector: Collector, body: bytes, encoding: str) -> tuple[int, dict[str, Any]]:
    host, port = collector.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {"Authorization": f"Bearer {WRITE_KEY}", "Content-Encoding": encoding}
        connection.request("POST", "/v1/batch", body, headers)
        reply = connection.getresponse()
        answer = json.loads(reply.read())
        # The body was read in full: a refusal leaves the connection usable.
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        return reply.status, answer
    finally:
        connection.close()


EVENT = {
    "type": "track",
    "messageId": "9b0b7c1e-54d5-4a0e-9b39-4f0e9f0c2d11",
    "timestamp": "2026-01-01T00:00:00.000Z",
    "event": "A",
    "userId": "u",
    "properties": {},
}


def test_the_collector_decodes_gzip_and_refuses_what_it_cannot_decode(
    collector: Collector,
) -> None:
    batch = json.dumps({"batch": [EVENT]}).encode()
    assert post(collector, gzip.compress(batch), "gzip") == (
        200,
        {"status": "ok", "accepted": 1, "failed": 0},
    )
    assert post(collector, batch, "identity")[0] == 200
    status, answer = post(collector, b"not gzip at all", "gzip")
    assert status == 400 and "cannot be decompressed" in answer["message"]
    status, answer = post(collector, gzip.compress(batch)[:-6], "gzip")
    assert status == 400 and "truncated" in answer["message"]
    status, answer = post(collector, batch, "br")
    assert status == 415 and "'br' is not supported" in answer["message"]
    bomb = gzip.compress(b" " * (MAX_BODY_BYTES + 1))  # ~10 KB on the wire
    status, answer = post(collector, bomb, "gzip")
    assert status == 413 and "once decompressed" in answer["message"]
    assert collector.stats().stored == 1  # the same event twice: one stored


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        ("br", ValueError, "compression must be None or 'gzip', got 'br'"),
        ("GZIP", ValueError, "got 'GZIP'"),
        (True, TypeError, "compression must be a string or None, got bool"),
    ],
)
def test_an_unknown_compression_is_refused(value: Any, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        KlimeClient("key", compression=value)
