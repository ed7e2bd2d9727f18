"""Wire parity with the official SDK (klime 1.1.0): the same calls, the same documents."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from klime_mp import KlimeClient
from tests.scripted_server import ScriptedServer

klime = pytest.importorskip("klime")

CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("track", ("Report Generated", {"report_type": "revenue", "n": 3}), {"user_id": "usr_1"}),
    ("track", ("Events Received", {"count": 100}), {"group_id": "org_1"}),
    ("track", ("Seat Added",), {"user_id": "usr_1", "group_id": "org_1"}),
    ("identify", ("usr_1", {"email": "jane@acme.com", "name": "Jane"}), {}),
    ("identify", ("usr_2",), {}),
    ("group", ("org_1", {"name": "Acme Inc", "plan": "enterprise"}), {"user_id": "usr_1"}),
    ("group", ("org_1",), {"user_id": "usr_2"}),
    ("group", ("org_2", {"employee_count": 50}), {}),
]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer().start()
    yield running
    running.stop()


def comparable(event: dict[str, Any]) -> dict[str, Any]:
    # Values that must differ between two runs (ids, times) or between two libraries.
    return {k: v for k, v in event.items() if k not in ("messageId", "timestamp", "context")}


def run(client: Any) -> None:
    for method, args, kwargs in CALLS:
        getattr(client, method)(*args, **kwargs)
    client.flush()
    client.shutdown()


def test_same_calls_produce_the_same_documents(server: ScriptedServer) -> None:
    run(klime.KlimeClient("key", endpoint=server.url, flush_interval=60_000))
    official = server.all_events()
    server.received.clear()
    run(KlimeClient("key", endpoint=server.url, flush_interval=60_000))
    ours = server.all_events()
    assert len(official) == len(CALLS)
    assert [comparable(e) for e in ours] == [comparable(e) for e in official]
    assert [list(e) for e in ours] == [list(e) for e in official]  # same key order too


def test_same_headers_as_the_official_sdk(server: ScriptedServer) -> None:
    KlimeClient("secret", endpoint=server.url).track_sync("A", user_id="u")
    headers = server.received[0].headers
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer secret"
