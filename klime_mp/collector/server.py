"""HTTP/1.1 keep-alive server that maps requests onto ``CollectorApp``.

Clients under test keep one pooled connection open, so the server must speak real
keep-alive: every response carries Content-Length and the connection stays open unless
the client asks otherwise or the request framing can no longer be trusted.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import socketserver
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from klime_mp.wire import BATCH_PATH, MAX_BODY_BYTES

from .app import CollectorApp, Reply, error_reply, json_reply

logger = logging.getLogger("klime_mp.collector")

IDLE_TIMEOUT_SECONDS = 30.0
SINK_REPLY = Reply(200, b"{}")
RUNS_PATH = "/v1/runs"
MAX_RUNS_BODY_BYTES = 4096


def decoded_body(encoding: str | None, body: bytes) -> tuple[bytes, tuple[int, str] | None]:
    """The body without its Content-Encoding (none, or gzip as the SDKs' compression
    option sends it), or the (status, message) to refuse it with. The 10 MB limit holds
    for what it inflates to, so a small bomb cannot fill memory."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body, None
    if name != "gzip":
        return b"", (415, f"Content-Encoding {name!r} is not supported; send gzip or none")
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflate.decompress(body, MAX_BODY_BYTES + 1)
    except zlib.error as exc:
        return b"", (400, f"the gzip body cannot be decompressed: {exc}")
    if len(data) > MAX_BODY_BYTES:
        return b"", (413, f"body over {MAX_BODY_BYTES} bytes once decompressed")
    if not inflate.eof or inflate.unused_data:
        return b"", (400, "the gzip body is truncated or has data after its end")
    return data, None


class CollectorRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "klime-collector"
    server: CollectorHTTPServer
    # An idle keep-alive connection gives its thread back after this many seconds.
    timeout = IDLE_TIMEOUT_SECONDS
    # Headers and body go out in one write (see wbufsize); without Nagle nothing waits
    # for the client's delayed ACK, which would cost ~40 ms per request.
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        app = self.server.app
        if url.path == "/healthz":
            self._reply(json_reply(200, {"status": "ok"}))
        elif url.path == "/v1/stats":
            self._reply(app.stats_reply())
        elif url.path == "/v1/events":
            self._reply(app.events_reply(url.query))
        elif url.path == RUNS_PATH:
            self._reply(app.runs_reply())
        else:
            self._reply(error_reply(404, f"no such endpoint: GET {url.path}"))

    def do_POST(self) -> None:
        app = self.server.app
        if urlsplit(self.path).path == RUNS_PATH:
            self._start_run()
            return
        if urlsplit(self.path).path != BATCH_PATH and not app.sink:
            # The body is left unread, so the connection cannot carry another request.
            self._reply(error_reply(404, "no such endpoint"), close=True)
            return
        length, refusal = self._body_length()
        if refusal is not None:
            # Without a trustworthy length the rest of the stream cannot be framed.
            self._reply(app.refuse_batch(*refusal), close=True)
            return
        body = self.rfile.read(length)
        if len(body) < length:  # the client went away mid-body
            self.close_connection = True
            return
        body, refusal = decoded_body(self.headers.get("Content-Encoding"), body)
        if refusal is not None:  # the body was read in full: the connection stays usable
            self._reply(app.refuse_batch(*refusal))
            return
        if app.sink:
            # Answered before it is decoded: the client's next batch overlaps the count,
            # so the sink's parsing does not lengthen every round trip it measures.
            self._reply(SINK_REPLY)
            app.count(body)
            return
        reply = app.batch(self.headers.get("Authorization"), body)
        if reply.stored and self._peer_closed():
            app.unacknowledged(reply)
        self._reply(reply)

    def _start_run(self) -> None:
        # A bare "curl -X POST" sends no Content-Length: that is an empty body here.
        declared = (self.headers.get("Content-Length") or "0").strip()
        if self.headers.get("Transfer-Encoding") is not None or not (
            declared.isascii() and declared.isdigit() and int(declared) <= MAX_RUNS_BODY_BYTES
        ):
            self._reply(error_reply(400, "send at most 4096 bytes with Content-Length"), close=True)
            return
        self._reply(self.server.app.start_run(self.rfile.read(int(declared))))

    def _peer_closed(self) -> bool:
        """True when the client has closed its end: it stopped waiting for our answer.
        Only a slow (injected delay) answer gets here late enough for that."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):  # reset by the peer, or already closed
            return True

    def _body_length(self) -> tuple[int, tuple[int, str] | None]:
        """The declared body length, or the (status, message) to refuse with."""
        if self.headers.get("Transfer-Encoding") is not None:
            return 0, (411, "chunked bodies are not accepted; send Content-Length")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return 0, (411, "Content-Length is required")
        declared = values[0].strip()
        # isascii(): str.isdigit() also accepts digits like "²" that int() refuses.
        if len(set(values)) > 1 or not (declared.isascii() and declared.isdigit()):
            return 0, (400, "invalid Content-Length")
        length = int(declared)
        if length > MAX_BODY_BYTES:
            return 0, (413, f"body over {MAX_BODY_BYTES} bytes")
        return length, None

    def handle_expect_100(self) -> bool:
        # Refuse an oversized body before the client starts sending it.
        if self.command == "POST" and self._body_length()[1] is not None:
            return True  # do_POST answers with the refusal and closes
        return super().handle_expect_100()

    def _reply(self, reply: Reply, close: bool = False) -> None:
        if reply.status is None:
            # Injected fault: the client gets neither a status line nor a clean EOF
            # before its request was read; it must treat the outcome as unknown.
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        if close or self.close_connection:
            self.send_header("Connection", "close")  # also sets close_connection
        self.end_headers()
        self.wfile.write(reply.body)
        self.wfile.flush()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors found by http.server itself, answered as JSON like the rest."""
        self.log_error("code %d, message %s", code, message)
        reply = error_reply(code, message or "request rejected")
        self._reply(reply, close=True)

    def log_message(self, format: str, *args: Any) -> None:
        # Access lines only at debug level: a benchmark must not pay for printing.
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s", self.address_string(), format % args)


def address_family(host: str) -> socket.AddressFamily:
    """IPv6 for a literal IPv6 host (it has colons), IPv4 otherwise."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class CollectorHTTPServer(ThreadingHTTPServer):
    """Threaded server that counts connections and can close the live ones on stop."""

    daemon_threads = True
    # stop() waits for handler threads itself, with a deadline, on every Python version.
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: CollectorApp) -> None:
        self.app = app
        self._clients: set[socket.socket] = set()
        self._clients_changed = threading.Condition()
        self.address_family = address_family(address[0])
        super().__init__(address, CollectorRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        self.app.stats.connection_opened()
        with self._clients_changed:
            self._clients.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self._clients_changed:
            self._clients.discard(request)
            self._clients_changed.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that vanish mid-request are normal under fault tests: no tracebacks.
        logger.debug("error while serving %s", client_address, exc_info=True)

    def close_clients(self, timeout: float) -> bool:
        """Cut every live connection and wait for its handler thread to finish."""
        with self._clients_changed:
            for client in self._clients:
                with contextlib.suppress(OSError):  # already closed by the client
                    client.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
            deadline = time.monotonic() + timeout
            while self._clients:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._clients_changed.wait(remaining)
        return True
