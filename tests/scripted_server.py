"""A real loopback HTTP server that answers from a script and records every request.

The collector is the realistic peer; this one exists for transport tests that need an
exact sequence of answers (503 then 200, a Retry-After date, a slow reply) and the raw
bytes of each attempt.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b'{"status":"ok","accepted":0,"failed":0}'
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    connection: int  # which TCP connection carried it

    def events(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = json.loads(self.body)["batch"]
        return batch


@dataclass
class ScriptedServer:
    script: deque[Reply] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ScriptedServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with owner.lock:
                    owner.connections += 1
                    self.connection_number = owner.connections

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with owner.lock:
                    owner.received.append(
                        Received(time.monotonic(), dict(self.headers), body, self.connection_number)
                    )
                    reply = owner.script.popleft() if owner.script else None
                if reply is None:
                    count = len(json.loads(body)["batch"])
                    reply = Reply(
                        body=json.dumps({"status": "ok", "accepted": count, "failed": 0}).encode()
                    )
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def then(self, *replies: Reply) -> ScriptedServer:
        with self.lock:
            self.script.extend(replies)
        return self

    def all_events(self) -> list[dict[str, Any]]:
        return [event for request in self.received for event in request.events()]
