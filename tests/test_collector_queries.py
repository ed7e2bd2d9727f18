"""GET /v1/events as a person debugging an app uses it: ids to page by, filters by
event name, type, user, group and time, and runs that separate one try from the last.
Every test runs a real collector on loopback and asks it over HTTP."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from klime_mp.collector import Collector

pytestmark = pytest.mark.timeout(60)

KEY = "test-key"
REPO_ROOT = Path(__file__).resolve().parents[1]


def event(kind: str = "track", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": kind,
        "messageId": str(uuid.uuid4()),
        "timestamp": "2025-03-01T12:00:00.000Z",
    }
    if kind == "track":
        body.update(event="Signed In", userId="usr_1")
    if kind == "identify":
        body.update(userId="usr_1", traits={})
    if kind == "group":
        body.update(groupId="org_1", traits={})
    body.update(fields)
    return body


def call(collector: Collector, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=5)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, data, {"Authorization": f"Bearer {KEY}"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def send(collector: Collector, *events: dict[str, Any]) -> None:
    assert call(collector, "POST", "/v1/batch", {"batch": list(events)})[0] == 200


def ids_of(collector: Collector, query: str) -> list[str]:
    status, records = call(collector, "GET", f"/v1/events?{query}")
    assert status == 200, records
    return [record["event"]["messageId"] for record in records]


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    with Collector(db=tmp_path / "events.sqlite3") as running:
        yield running


def test_each_event_carries_its_id_run_and_receipt_time(collector: Collector) -> None:
    sent = [event(), event("identify")]
    send(collector, *sent)

    status, records = call(collector, "GET", "/v1/events")

    assert status == 200
    assert [(r["id"], r["run"], r["event"]) for r in records] == [(1, 0, sent[0]), (2, 0, sent[1])]
    assert all(r["received_at"].endswith("Z") and len(r["received_at"]) == 24 for r in records)


def test_filters_by_event_name_type_user_and_group(collector: Collector) -> None:
    signed_in = event(userId="usr_1")
    report = event(event="Report Generated", userId="usr_2", groupId="org_9")
    joined = event("group", userId="usr_2", groupId="org_9")
    who = event("identify", userId="usr_2")
    send(collector, signed_in, report, joined, who)

    assert ids_of(collector, "event=Report+Generated") == [report["messageId"]]
    assert ids_of(collector, "type=identify") == [who["messageId"]]
    assert ids_of(collector, "user_id=usr_2") == [
        report["messageId"], joined["messageId"], who["messageId"],
    ]  # fmt: skip
    assert ids_of(collector, "group_id=org_9&type=track") == [report["messageId"]]
    assert ids_of(collector, "user_id=nobody") == []


def test_filters_by_the_events_own_time_across_offsets(collector: Collector) -> None:
    early = event(timestamp="2025-03-01T11:59:59.999Z")
    noon = event(timestamp="2025-03-01T13:00:00+01:00")  # 12:00 UTC
    late = event(timestamp="2025-03-01 12:30:00")  # no offset: read as UTC
    send(collector, early, noon, late)

    assert ids_of(collector, "since=2025-03-01T12:00:00Z") == [
        noon["messageId"], late["messageId"],
    ]  # fmt: skip
    assert ids_of(collector, "until=2025-03-01T12:00:00Z") == [early["messageId"]]
    # A "+" left unencoded in a URL arrives as a space; it still means the offset.
    assert ids_of(collector, "since=2025-03-01T12:15:00+00:00&until=2025-03-01T14:00Z") == [
        late["messageId"]
    ]


def test_paging_with_a_filter_continues_after_the_last_id(collector: Collector) -> None:
    mine = [event(userId="usr_7", properties={"n": n}) for n in range(5)]
    send(collector, *[item for pair in zip(mine, [event() for _ in mine]) for item in pair])

    _status, first = call(collector, "GET", "/v1/events?user_id=usr_7&limit=3")
    _status, rest = call(collector, "GET", f"/v1/events?user_id=usr_7&after={first[-1]['id']}")

    assert [r["event"]["properties"]["n"] for r in first + rest] == [0, 1, 2, 3, 4]
    assert [r["id"] for r in first + rest] == [1, 3, 5, 7, 9]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("since=yesterday", "since must be an ISO 8601 date-time"),
        ("type=page", "type must be one of group, identify, track"),
        ("run=first", "run must be an integer"),
        ("limit=0", "limit must be at least 1"),
        ("after=-1", "after must be at least 0"),
        ("userId=usr_1", "unknown parameter: userId"),
    ],
)
def test_a_bad_filter_is_refused_with_its_name(
    collector: Collector, query: str, message: str
) -> None:
    status, reply = call(collector, "GET", f"/v1/events?{query}")

    assert (status, reply["status"]) == (400, "error")
    assert reply["message"].startswith(message)


def test_a_run_separates_new_events_from_earlier_ones(collector: Collector) -> None:
    before = event()
    send(collector, before)

    status, run = call(collector, "POST", "/v1/runs", {"name": "second try"})
    after = event()
    send(collector, after)

    assert status == 201
    assert (run["run"], run["name"], run["events"]) == (1, "second try", 0)
    assert ids_of(collector, "run=latest") == [after["messageId"]]
    assert ids_of(collector, "run=0") == [before["messageId"]]
    assert ids_of(collector, "") == [before["messageId"], after["messageId"]]
    assert collector.start_run() == 2
    assert ids_of(collector, "run=latest") == []
    status, runs = call(collector, "GET", "/v1/runs")
    assert [(r["run"], r["name"], r["events"]) for r in runs] == [
        (1, "second try", 1), (2, None, 0),
    ]  # fmt: skip


def test_a_run_can_start_without_a_body_and_refuses_a_bad_name(collector: Collector) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=5)
    conn.request("POST", "/v1/runs")  # what "curl -X POST" sends: no body at all
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())["run"]) == (201, 1)
    conn.close()

    status, reply = call(collector, "POST", "/v1/runs", {"name": 7})
    assert (status, reply["message"]) == (400, "name must be a string of 1 to 200 characters")


def test_runs_and_time_filters_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "kept.sqlite3"
    with Collector(db=db) as first:
        send(first, event())
        first.start_run("after restart")
    with Collector(db=db) as second:
        late = event(timestamp="2030-01-01T00:00:00Z")
        send(second, late)
        assert ids_of(second, "run=latest") == [late["messageId"]]
        assert ids_of(second, "since=2029-12-31T00:00:00Z") == [late["messageId"]]


def test_a_database_of_the_first_release_gains_the_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    old = event(timestamp="2025-03-01T12:00:00Z")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE events (message_id TEXT PRIMARY KEY, type TEXT NOT NULL, event TEXT,"
            " user_id TEXT, group_id TEXT, timestamp TEXT NOT NULL, body TEXT NOT NULL,"
            " received_at REAL NOT NULL)"
        )
        conn.execute(
            "INSERT INTO events VALUES (?, 'track', 'Signed In', 'usr_1', NULL, ?, ?, 1.0)",
            (old["messageId"], old["timestamp"], json.dumps(old)),
        )
    conn.close()

    with Collector(db=db) as collector:
        assert ids_of(collector, "run=0&since=2025-03-01T12:00:00Z") == [old["messageId"]]
        assert ids_of(collector, "until=2025-03-01T12:00:00Z") == []


def test_the_cli_says_when_its_database_holds_earlier_events(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite3"
    with Collector(db=db) as earlier:
        send(earlier, event(), event())
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "klime_mp", "collector", "--port", "0", "--db", str(db)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        note = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert note == (
        f"klime collector: {db} already holds 2 events from earlier runs; POST {url}/v1/runs"
        " to start a new run (then GET /v1/events?run=latest), or use --db :memory:\n"
    )
