"""A permissive loopback HTTP sink that every SDK in the benchmark posts to.

The real collector validates Klime's event shape and stores to SQLite; Segment and
PostHog speak their own shapes and paths, and a storing server would measure its own
speed as much as the client's. So all SDKs, klime_mp included, post to this sink: it
answers every request ``200 {}`` on HTTP/1.1 keep-alive, and counts requests, TCP
connections and events (``{"batch": [...]}`` bodies, gzip or not). Events carrying
``properties.eid`` are counted per id (lost and duplicated events in the fork runs);
``properties.marker`` records an arrival time (``time.monotonic_ns``, comparable across
processes on Linux) for delivery-latency measurements.

It runs in its own process (one asyncio loop, no GIL shared with the SDK under test) and
is steered through a second, uncounted control port:

    GET /stats          counters as JSON        POST /reset   zero them
    GET /marker?m=NAME  {"ns": arrival or null} GET /eids     {"eid": receipts, ...}

    python -m bench.sink   # prints {"data": URL, "control": URL}; serves until stdin closes
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sys
import time
import zlib
from collections import Counter
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

MAX_HEAD_BYTES = 64 * 1024
OK_BODY = b"{}"

Handler = Callable[[str, str, dict[str, str], bytes], "tuple[int, bytes]"]


class Tally:
    """What reached the data port since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.connections = 0
        self.events = 0
        self.body_bytes = 0
        self.unreadable = 0
        self.first_event_ns: int | None = None
        self.last_event_ns: int | None = None
        self.paths: Counter[str] = Counter()
        self.eids: Counter[str] = Counter()
        self.markers: dict[str, int] = {}

    def record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        now = time.monotonic_ns()
        self.requests += 1
        self.body_bytes += len(body)
        self.paths[path] += 1
        events = _events_of(body, headers.get("content-encoding", ""))
        if events is None:
            self.unreadable += 1
            return
        if not events:
            return
        self.events += len(events)
        if self.first_event_ns is None:
            self.first_event_ns = now
        self.last_event_ns = now
        for event in events:
            self._note_ids(event, now)

    def _note_ids(self, event: Any, now: int) -> None:
        properties = event.get("properties") if isinstance(event, dict) else None
        if not isinstance(properties, dict):
            return
        eid = properties.get("eid")
        if isinstance(eid, str):
            self.eids[eid] += 1
        marker = properties.get("marker")
        if isinstance(marker, str):
            self.markers.setdefault(marker, now)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "connections": self.connections,
            "events": self.events,
            "body_bytes": self.body_bytes,
            "unreadable": self.unreadable,
            "first_event_ns": self.first_event_ns,
            "last_event_ns": self.last_event_ns,
            "paths": dict(self.paths),
            "unique_eids": len(self.eids),
            "cpu_ns": time.process_time_ns(),  # the sink's own CPU: its ceiling
        }


def _events_of(body: bytes, encoding: str) -> list[Any] | None:
    """The events of a batch body in any of the SDKs' shapes; None if unreadable."""
    try:
        if "gzip" in encoding:
            body = gzip.decompress(body)
        elif "deflate" in encoding:
            body = zlib.decompress(body)
        data = json.loads(body) if body else {}
    except (OSError, EOFError, ValueError, zlib.error):
        return None
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        batch = data.get("batch")
        if isinstance(batch, list):
            return batch
        return [data] if data else []
    return None


def _response(status: int, body: bytes, close: bool) -> bytes:
    reason = {200: "OK", 404: "Not Found", 411: "Length Required"}.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    if close:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + body


async def _serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handle: Handler
) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = ([*lines[0].split(" ", 2), "", ""])[:3]
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                writer.write(_response(411, b'{"error":"chunked"}', True))
                return
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            length = int(headers.get("content-length") or 0)
            try:
                body = await reader.readexactly(length) if length else b""
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            status, payload = handle(method, target, headers, body)
            close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
            writer.write(_response(status, payload, close))
            if writer.transport.get_write_buffer_size() > 256 * 1024:
                await writer.drain()
            if close:
                await writer.drain()
                return
    finally:
        writer.close()


def _control(tally: Tally, method: str, target: str) -> tuple[int, bytes]:
    url = urlsplit(target)
    if url.path == "/reset" and method == "POST":
        tally.reset()
        return 200, OK_BODY
    if url.path == "/marker":
        name = parse_qs(url.query).get("m", [""])[0]
        return 200, json.dumps({"ns": tally.markers.get(name)}).encode()
    if url.path == "/stats":
        return 200, json.dumps(tally.snapshot()).encode()
    if url.path == "/markers":
        return 200, json.dumps(tally.markers).encode()
    if url.path == "/eids":
        return 200, json.dumps(tally.eids).encode()
    return 404, b'{"error":"no such endpoint"}'


async def _main(host: str = "127.0.0.1") -> None:
    tally = Tally()
    loop = asyncio.get_running_loop()

    def data(method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        # Answer first, count after: the client's next request need not wait for this
        # process to decode the batch (a json.loads of up to 100 events), so the sink's
        # parsing overlaps the client's work instead of adding to every round trip.
        loop.call_soon(tally.record, urlsplit(target).path, headers, body)
        return 200, OK_BODY

    async def on_data(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tally.connections += 1
        await _serve_connection(reader, writer, data)

    async def on_control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_connection(reader, writer, lambda m, t, h, b: _control(tally, m, t))

    servers = {
        "data": await asyncio.start_server(on_data, host, 0, limit=MAX_HEAD_BYTES, backlog=1024),
        "control": await asyncio.start_server(on_control, host, 0, limit=MAX_HEAD_BYTES),
    }
    ports = {name: server.sockets[0].getsockname()[1] for name, server in servers.items()}
    print(json.dumps({name: f"http://{host}:{port}" for name, port in ports.items()}), flush=True)
    # Serve until the parent closes our stdin (or dies): no orphaned sinks.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    os._exit(0)  # nothing to flush; skips cancelling the connections' tasks one by one


if __name__ == "__main__":
    asyncio.run(_main())
