"""``klime-mp import``: good and bad files, both JSON shapes, CSV, stdin, --check,
--strict, a SIGKILL half-way then a rerun, Retry-After; against a real collector
process on 127.0.0.1, with the importer in its own process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from klime_mp.collector import Collector
from klime_mp.collector.faults import FaultPlan
from klime_mp.importer.lines import jsonl_fields, to_event
from tests.conftest import CollectorProcess

pytestmark = pytest.mark.server

KEY = "import-key"
IMPORT_NS = uuid.UUID("53cca35d-7d0f-436e-9602-c8175a5a7ed9")  # documented in the README


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    proc = CollectorProcess(tmp_path / "events.sqlite3")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(autouse=True)
def _temporary_files_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The importer's work directory: a SIGKILLed importer leaves it behind.
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setenv("TMPDIR", str(work))


def environment(endpoint: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLIME_")}
    env["KLIME_WRITE_KEY"] = KEY
    if endpoint is not None:
        env["KLIME_ENDPOINT"] = endpoint
    return env


def run_import(
    endpoint: str | None, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "klime_mp", "import", *args],
        input=None if stdin is None else stdin.decode(),
        env=environment(endpoint),
        capture_output=True,
        text=True,
        timeout=120,
    )


def summary(out: str) -> dict[str, int]:
    """The numbers of the summary on stdout ("sent:  12" -> {"sent": 12})."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^([a-z ]+):\s+(\d+)$", out, re.M)}


def track_line(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Report Generated",
        "user_id": f"usr_{i}",
        "properties": {"n": i},
        "timestamp": "2025-03-01T12:00:00.250+01:00",
        **extra,
    }


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines)
    )
    return path


GOOD_AND_BAD: list[Any] = [
    track_line(1),  # 1: the Python API's shape
    {  # 2: the wire shape, with its own messageId and another SDK's context
        "type": "identify",
        "messageId": "my-id-2",
        "userId": "usr_2",
        "traits": {"email": "a@b.c"},
        "timestamp": "2025-03-01T11:00:00Z",
        "context": {"library": {"name": "other", "version": "9"}},
    },
    {"type": "group", "group_id": 42, "user_id": "usr_2", "timestamp": "2025-03-01T11:00:00Z"},
    "\n",  # 4: blank: not an event, not an error
    "{not json\n",  # 5
    track_line(6, user_id=None),  # 6: no user_id or group_id
    track_line(7, timestamp="2025-03-01T12:00:00"),  # 7: no offset
    track_line(8, userid="typo"),  # 8: unknown key
    {
        "type": "track",
        "event": "x",
        "userId": "u",
        "user_id": "u",
        "timestamp": "2025-01-01T00:00:00Z",
    },
    track_line(10, properties={"bad": float("nan")}),  # 10
    track_line(11, timestamp="2999-01-01T00:00:00Z"),  # 11: the future
    {"type": "page", "user_id": "u", "timestamp": "2025-01-01T00:00:00Z"},  # 12
    track_line(13, timestamp=None),  # 13: none (null)
]


def test_jsonl_in_both_shapes_is_sent_and_each_bad_line_is_reported(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", GOOD_AND_BAD)
    result = run_import(collector.url, str(path))
    assert result.returncode == 1, result.stderr
    counts = summary(result.stdout)
    assert counts["lines"] == 12 and counts["invalid"] == 9 and counts["sent"] == 3
    reported = {int(m[1]): m[2] for m in re.finditer(r"events\.jsonl:(\d+): (.*)", result.stderr)}
    assert sorted(reported) == [5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert "not valid JSON" in reported[5]
    assert "needs user_id or group_id" in reported[6]
    assert "timestamp '2025-03-01T12:00:00' is not an ISO 8601" in reported[7]
    assert "unknown key 'userid'" in reported[8]
    assert "mixes wire keys" in reported[9]
    assert "properties.bad is nan" in reported[10]
    assert "in the future" in reported[11]
    assert "type must be track, identify or group" in reported[12]
    assert "timestamp is required" in reported[13]
    stored = {e["type"]: e for e in collector.events()}
    assert stored["track"]["timestamp"] == "2025-03-01T11:00:00.250Z"
    assert stored["track"]["userId"] == "usr_1" and stored["track"]["properties"] == {"n": 1}
    assert stored["identify"]["messageId"] == "my-id-2"
    assert stored["identify"]["context"]["library"]["name"] == "klime_mp"
    assert stored["group"]["groupId"] == "42" and stored["group"]["userId"] == "usr_2"


def test_the_same_event_gets_the_same_message_id_in_either_shape_and_in_csv() -> None:
    canonical = (
        '{"event":"Report Generated","properties":{"report_type":"revenue"},'
        '"timestamp":"2025-03-01T11:00:00.123Z","type":"track","userId":"usr_1"}'
    )
    expected = str(uuid.uuid5(IMPORT_NS, canonical))
    assert expected == "9a79cd27-5139-59da-8636-c0c6ac9e3aa7"  # never changes: reruns
    api = {
        "type": "track",
        "event": "Report Generated",
        "user_id": "usr_1",
        "properties": {"report_type": "revenue"},
        "timestamp": "2025-03-01T12:00:00.123+01:00",
    }
    wire = {
        "type": "track",
        "event": "Report Generated",
        "userId": "usr_1",
        "properties": {"report_type": "revenue"},
        "timestamp": "2025-03-01T11:00:00.123Z",
    }
    assert to_event(api).message_id == expected
    fields = jsonl_fields(json.dumps(wire).encode())
    assert fields is not None and to_event(fields).message_id == expected
    assert to_event({**api, "properties": {"report_type": "cost"}}).message_id != expected


def test_a_second_run_sends_the_same_ids_and_the_server_keeps_each_event_once(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", [track_line(i) for i in range(250)])
    first = run_import(collector.url, str(path))
    second = run_import(collector.url, str(path))
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert summary(second.stdout)["sent"] == 250
    stats = collector.stats()
    assert stats["stored"] == 250 and stats["duplicates"] == 250
    assert stats["requests"] == 6  # 100 + 100 + 50, twice


def test_duplicate_lines_in_the_file_are_sent_once(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    lines = [
        track_line(1),
        track_line(2),
        track_line(1),
        track_line(3, message_id="m"),
        track_line(4, message_id="m"),
    ]
    result = run_import(collector.url, str(write_jsonl(tmp_path / "d.jsonl", lines)))
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout)["duplicates skipped"] == 2
    assert summary(result.stdout)["sent"] == 3
    assert collector.stats()["received"] == 3


def test_stdin_is_read_with_a_dash(tmp_path: Path, collector: CollectorProcess) -> None:
    data = "".join(json.dumps(track_line(i)) + "\n" for i in range(120)) + "oops\n"
    result = run_import(collector.url, "-", stdin=data.encode())
    assert result.returncode == 1
    assert "<stdin>:121: not valid JSON" in result.stderr
    assert summary(result.stdout)["sent"] == 120
    assert collector.stats()["stored"] == 120


CSV = """\
type,event,user_id,group_id,timestamp,properties,properties.plan,traits.name,message_id
track,Seat Added,usr_1,org_1,2025-03-01T10:00:00+02:00,"{""seats"": 3, ""paid"": true}",pro,,
identify,,usr_1,,2025-03-01T08:00:00Z,,,"Jane, ""JJ"" Doe",id-2
group,,usr_1,org_1,2025-03-01T08:00:00Z,,,Acme,
track,No Id,,,2025-03-01T08:00:00Z,,,,
track,Bad Props,usr_1,,2025-03-01T08:00:00Z,[1],,,
"""


def test_csv_with_named_and_json_property_columns(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    path = tmp_path / "events.csv"
    path.write_text(CSV)
    result = run_import(collector.url, str(path))
    assert result.returncode == 1
    assert "events.csv:5: track() needs user_id or group_id" in result.stderr
    assert "events.csv:6: the properties column must hold a JSON object" in result.stderr
    assert summary(result.stdout)["sent"] == 3
    stored = {e["type"]: e for e in collector.events()}
    track = stored["track"]
    assert track["properties"] == {"seats": 3, "paid": True, "plan": "pro"}
    assert track["timestamp"] == "2025-03-01T08:00:00.000Z" and track["groupId"] == "org_1"
    assert stored["identify"]["traits"] == {"name": 'Jane, "JJ" Doe'}
    assert stored["identify"]["messageId"] == "id-2"
    assert stored["group"]["traits"] == {"name": "Acme"}


def test_csv_from_stdin_and_a_bad_header_is_a_usage_error(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    result = run_import(collector.url, "--format", "csv", "-", stdin=CSV.encode())
    assert summary(result.stdout)["sent"] == 3
    bad = run_import(collector.url, "--format", "csv", "-", stdin=b"type,evnt\ntrack,x\n")
    assert bad.returncode == 2 and "unknown CSV column(s) 'evnt'" in bad.stderr


def test_an_empty_csv_file_imports_nothing(tmp_path: Path, collector: CollectorProcess) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    result = run_import(collector.url, str(path))
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout)["sent"] == 0


def test_check_validates_and_sends_nothing(tmp_path: Path, collector: CollectorProcess) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [track_line(i) for i in range(5)])
    bad = write_jsonl(tmp_path / "bad.jsonl", GOOD_AND_BAD)
    ok = run_import(None, "--check", str(good))  # no endpoint: nothing is sent anyway
    assert ok.returncode == 0 and summary(ok.stdout) == {
        "lines": 5,
        "invalid": 0,
        "duplicates skipped": 0,
    }
    failed = run_import(collector.url, "--check", str(bad))
    assert failed.returncode == 1 and summary(failed.stdout)["invalid"] == 9
    assert collector.stats()["requests"] == 0


def test_strict_sends_nothing_when_any_line_is_invalid(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    result = run_import(
        collector.url, "--strict", str(write_jsonl(tmp_path / "e.jsonl", GOOD_AND_BAD))
    )
    assert result.returncode == 1 and "--strict: 9 invalid line(s), nothing sent" in result.stderr
    assert collector.stats()["requests"] == 0


def test_usage_and_io_errors_exit_2(tmp_path: Path, collector: CollectorProcess) -> None:
    missing = run_import(collector.url, str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "cannot open" in missing.stderr
    path = write_jsonl(tmp_path / "e.jsonl", [track_line(1)])
    env = environment(collector.url)
    del env["KLIME_WRITE_KEY"]
    no_key = subprocess.run(
        [sys.executable, "-m", "klime_mp", "import", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_key.returncode == 2 and "write_key" in no_key.stderr


def test_a_sigkilled_import_rerun_stores_every_event_exactly_once(tmp_path: Path) -> None:
    total = 3000
    path = write_jsonl(tmp_path / "big.jsonl", [track_line(i) for i in range(total)])
    # A slow server (100 ms per batch of 50, 6 s in all): the kill lands half-way.
    collector = CollectorProcess(tmp_path / "events.sqlite3", "--delay", "0.1")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "klime_mp", "import", "--batch-size", "50", str(path)],
            env=environment(collector.url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert collector.wait_for(500, timeout=60), "no batch was acknowledged"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        stored_at_kill = collector.stats()["stored"]
        assert 500 <= stored_at_kill < total
        rerun = run_import(collector.url, "--batch-size", "50", str(path))
        assert rerun.returncode == 0, rerun.stderr
        assert summary(rerun.stdout)["sent"] == total
        stats = collector.stats()
        assert stats["stored"] == total
        # What the killed run delivered came again and was kept once: counted as duplicates.
        assert stored_at_kill <= stats["duplicates"] <= total
        assert len({e["messageId"] for e in collector.events()}) == total
    finally:
        collector.stop()


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    collector = CollectorProcess(
        tmp_path / "events.sqlite3",
        "--rate-limit-rate",
        "0.5",
        "--retry-after",
        "1",
        "--seed",
        "3",
    )
    try:
        path = write_jsonl(tmp_path / "e.jsonl", [track_line(i) for i in range(400)])
        started = time.monotonic()
        result = run_import(collector.url, "--batch-size", "100", str(path))
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        stats = collector.stats()
        limited = stats["faults_injected"].get("rate_limit", 0)
        assert limited >= 1 and stats["status_counts"]["429"] == limited
        assert stats["stored"] == 400 and stats["duplicates"] == 0
        assert elapsed >= limited * 1.0  # each 429 paused the import for its Retry-After
    finally:
        collector.stop()


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    collector = CollectorProcess(tmp_path / "events.sqlite3", "--delay", "0.02")
    try:
        path = write_jsonl(tmp_path / "e.jsonl", [track_line(i) for i in range(1000)])
        result = run_import(
            collector.url, "--batch-size", "20", "--progress-every", "0.1", str(path)
        )
        assert result.returncode == 0, result.stderr
        progress = re.findall(
            r"^klime-mp import: sent ([\d,]+) of 1,000 \(\d+ %\), "
            r"[\d,]+ events/s, ETA \d+:\d\d:\d\d$",
            result.stderr,
            re.M,
        )
        assert len(progress) >= 2 and "\r" not in result.stderr
        assert summary(result.stdout)["sent"] == 1000  # the summary stays on stdout
    finally:
        collector.stop()


def test_progress_redraws_one_line_on_a_terminal(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [track_line(i) for i in range(300)])
    controller, terminal = os.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "klime_mp", "import", "--progress-every", "0", str(path)],
            env=environment(collector.url),
            stdout=subprocess.PIPE,
            stderr=terminal,
            timeout=60,
        )
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the writer is gone and everything was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    assert proc.returncode == 0
    assert b"\r\x1b[Ksent 100 of 300" in shown and b"ETA" in shown
    assert b"klime-mp import:" not in shown  # the plain form is for logs


def test_ctrl_c_prints_the_tally_and_exits_130(tmp_path: Path) -> None:
    # A second per batch: the import would take a minute, so on any machine Ctrl-C
    # lands half-way (0.1 s once let a loaded CI box finish all 3000 first).
    collector = CollectorProcess(tmp_path / "events.sqlite3", "--delay", "1")
    try:
        path = write_jsonl(tmp_path / "e.jsonl", [track_line(i) for i in range(3000)])
        proc = subprocess.Popen(
            [sys.executable, "-m", "klime_mp", "import", "--batch-size", "50", str(path)],
            env=environment(collector.url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Ctrl-C's default action, whatever this test process inherited: Python raises
            # KeyboardInterrupt only when SIGINT is not ignored at its start.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            assert collector.wait_for(100, timeout=60)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 130, out + err
        assert "interrupted: run the same command again" in err
        # The server stored 100, so it answered the first 50; the next batch may have been
        # stored and its answer cut short by Ctrl-C: the tally counts only answered ones.
        stored = collector.stats()["stored"]
        assert 50 <= summary(out)["sent"] <= stored < 3000
    finally:
        collector.stop()


def test_a_refused_write_key_stops_the_import(tmp_path: Path) -> None:
    collector = CollectorProcess(tmp_path / "events.sqlite3", "--write-key", "another-key")
    try:
        path = write_jsonl(tmp_path / "e.jsonl", [track_line(i) for i in range(250)])
        result = run_import(collector.url, str(path))
        assert result.returncode == 1
        assert "stopped: rejected with HTTP 401" in result.stderr
        assert summary(result.stdout)["not sent"] == 250
        assert collector.stats()["requests"] == 1  # not one 401 per batch
    finally:
        collector.stop()


def test_a_wrong_endpoint_path_stops_the_import(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    # A 404 is an answer about the request (a wrong path or proxy), not about the data:
    # every batch would get it, so the import stops instead of refusing them all.
    path = write_jsonl(tmp_path / "e.jsonl", [track_line(i) for i in range(250)])
    result = run_import(f"{collector.url}/not-here", str(path))
    assert result.returncode == 1
    assert "stopped: rejected with HTTP 404" in result.stderr
    assert summary(result.stdout)["not sent"] == 250


def test_an_unreachable_server_stops_the_import_after_the_retries(tmp_path: Path) -> None:
    with socket.socket() as placeholder:  # a port nothing listens on
        placeholder.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{placeholder.getsockname()[1]}"
    path = write_jsonl(tmp_path / "e.jsonl", [track_line(i) for i in range(150)])
    result = run_import(endpoint, "--retry-max-attempts", "1", str(path))
    assert result.returncode == 1
    assert "stopped: failed after 1 attempts" in result.stderr
    assert summary(result.stdout)["not sent"] == 150


def test_byte_order_mark_and_crlf_line_ends_are_read(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    jsonl = tmp_path / "windows.jsonl"
    jsonl.write_bytes(
        b"\xef\xbb\xbf" + b"".join(json.dumps(track_line(i)).encode() + b"\r\n" for i in range(3))
    )
    csv_file = tmp_path / "windows.csv"
    csv_file.write_bytes(
        b"\xef\xbb\xbftype,user_id,timestamp,traits.name\r\n"
        b"identify,usr_9,2025-03-01T08:00:00Z,Jo\r\n"
    )
    assert run_import(collector.url, str(jsonl)).returncode == 0
    assert run_import(collector.url, str(csv_file)).returncode == 0
    assert collector.stats()["stored"] == 4


def test_a_batch_is_split_to_stay_under_10_mb(tmp_path: Path, collector: CollectorProcess) -> None:
    # 100 events of ~150 KB: 15 MB, over the API's 10 MB per request.
    big = "x" * 150_000
    path = write_jsonl(
        tmp_path / "big.jsonl", [track_line(i, properties={"b": big}) for i in range(100)]
    )
    result = run_import(collector.url, str(path))
    assert result.returncode == 0, result.stderr
    stats = collector.stats()
    assert stats["stored"] == 100 and stats["requests"] == 2
    assert stats["status_counts"] == {"200": 2}


def test_a_batch_refused_for_one_bad_event_is_split_and_only_its_line_is_rejected(
    tmp_path: Path,
) -> None:
    # In this process: the collector's fault plan is not on its command line.
    with Collector(
        db=tmp_path / "events.sqlite3", faults=FaultPlan(poison_event="Poison")
    ) as server:
        lines = [track_line(i, event="Poison" if i == 7 else "Report Generated") for i in range(20)]
        path = write_jsonl(tmp_path / "e.jsonl", lines)
        result = run_import(server.url, str(path))
        assert result.returncode == 1, result.stderr
        counts = summary(result.stdout)
        assert (counts["sent"], counts["rejected"]) == (19, 1)
        refused = re.findall(r"e\.jsonl:(\d+): rejected by the server: (.*)", result.stderr)
        assert [int(number) for number, _ in refused] == [8]  # line 8 holds event 7
        assert "the batch holds a bad event" in refused[0][1]
        assert sorted(e["properties"]["n"] for e in server.events()) == [
            n for n in range(20) if n != 7
        ]
