"""The transport's one keep-alive connection: reuse, stale connections, proxies, TLS
defaults, fork, eager imports, and credentials kept out of error texts."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import certifi
import pytest

from klime_mp import connection
from klime_mp.delivery import Deliverer, Delivery
from klime_mp.options import build_options
from klime_mp.transport import Transport
from tests.scripted_server import Reply, ScriptedServer

BODY = b'{"batch":[{"type":"track"}]}'
OK = b'{"status":"ok","accepted":1,"failed":0}'
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass
class Seen:
    line: str
    headers: dict[str, str]
    connection: int


@dataclass
class RawServer:
    """A loopback HTTP/1.1 peer written on sockets, for what http.server cannot do:
    close a kept-alive connection without saying so, or act as a proxy.
    ``answer(seen)`` returns the raw reply, or None to close without one; a
    connection is closed after ``per_connection`` answers."""

    answer: Callable[[Seen], bytes | None]
    per_connection: int = 100
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            args = (conn, self.connections)
            threading.Thread(target=self._serve, args=args, daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn, conn.makefile("rb") as reader:
            for _ in range(self.per_connection):
                line = reader.readline().decode().rstrip("\r\n")
                if not line:
                    return
                headers = {}
                while (header := reader.readline().decode().rstrip("\r\n")) != "":
                    name, _, value = header.partition(":")
                    headers[name.strip().lower()] = value.strip()
                reader.read(int(headers.get("content-length", "0")))
                seen = Seen(line, headers, number)
                self.seen.append(seen)
                reply = self.answer(seen)
                if reply is None:
                    return
                conn.sendall(reply)

    def close(self) -> None:
        self.listener.close()


def reply(status: str = "200 OK", body: bytes = OK) -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status.encode(), len(body), body)


class Sending:
    """A transport and the deliverer that retries through it, as the worker pairs them."""

    def __init__(self, options: Any) -> None:
        self.transport = Transport(options)
        self.deliverer = Deliverer(options, self.transport, threading.Event())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def make_transport(url: str, **options: Any) -> Sending:
    options.setdefault("retry_initial_delay", 10)
    return Sending(build_options("sk_key_1234", url, **options))


def send(t: Sending) -> Delivery:
    return t.deliverer.send(BODY, lambda: None)


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer().start()
    yield running
    running.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- one keep-alive connection ---------------------------------------------------------


def test_batches_share_one_kept_alive_connection(server: ScriptedServer) -> None:
    t = make_transport(server.url)
    assert all(send(t).response for _ in range(3))
    assert [r.connection for r in server.received] == [1, 1, 1]


def test_connection_close_in_a_reply_is_honoured(server: ScriptedServer) -> None:
    server.then(Reply(body=OK, headers=(("Connection", "close"),)))
    t = make_transport(server.url)
    assert send(t).response and send(t).response
    assert [r.connection for r in server.received] == [1, 2]


@pytest.mark.parametrize("noticed", ["before_writing", "on_writing"])
def test_a_connection_the_server_closed_while_idle_is_replaced_without_a_retry(
    noticed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server answers one request per connection, then closes it unannounced, as
    # a server's keep-alive timeout does between two batches.
    peer = RawServer(lambda seen: reply(), per_connection=1)
    if noticed == "on_writing":  # the close arrives after the idle check
        monkeypatch.setattr(connection, "closed_while_idle", lambda conn: False)
    t = make_transport(f"http://127.0.0.1:{peer.port}")
    assert send(t).response
    _wait_for(lambda: _peer_closed(t))

    second = send(t)

    assert second.response is not None and second.retries == 0
    assert [s.connection for s in peer.seen] == [1, 2]
    peer.close()


def test_a_new_connection_that_fails_counts_as_an_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the first connection answers. The free resend happens once, on a reused
    # connection; the failure of the new one is an attempt like any other.
    peer = RawServer(lambda seen: reply() if seen.connection == 1 else None, per_connection=1)
    monkeypatch.setattr(connection, "closed_while_idle", lambda conn: False)
    t = make_transport(f"http://127.0.0.1:{peer.port}", retry_max_attempts=2)
    assert send(t).response
    _wait_for(lambda: _peer_closed(t))

    failed = send(t)

    assert failed.response is None and failed.retries == 1
    assert "failed after 2 attempts" in str(failed.error)
    assert "RemoteDisconnected" in str(failed.error)
    assert peer.connections == 3  # the first, its free replacement, one retry
    peer.close()


@pytest.mark.fork
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_abandon_in_a_child_leaves_the_parents_connection_open(server: ScriptedServer) -> None:
    t = make_transport(server.url)
    assert send(t).response
    pid = os.fork()
    if pid == 0:  # the child: what forksafe does with the parent's transport
        t.abandon()
        os._exit(0 if t._conn is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    again = send(t)
    assert again.response is not None and again.retries == 0
    assert {r.connection for r in server.received} == {1}


# -- proxies -----------------------------------------------------------------------------


def test_http_goes_through_the_proxy_with_the_absolute_url_and_basic_auth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = RawServer(lambda seen: reply())
    monkeypatch.setenv("HTTP_PROXY", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
    t = make_transport("http://klime.test:8080/base")

    assert send(t).response is not None

    (seen,) = proxy.seen
    assert seen.line == "POST http://klime.test:8080/base/v1/batch HTTP/1.1"
    assert seen.headers["host"] == "klime.test:8080"
    assert seen.headers["proxy-authorization"] == "Basic " + _b64("user:p@ss")
    assert seen.headers["authorization"] == "Bearer sk_key_1234"
    proxy.close()


def test_https_is_tunnelled_with_connect_and_proxy_credentials_stay_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = RawServer(lambda seen: reply("407 Proxy Authentication Required", b""))
    monkeypatch.setenv("https_proxy", f"http://user:pw_secret@127.0.0.1:{proxy.port}")
    t = make_transport("https://klime.test", retry_max_attempts=1)

    failed = send(t)

    (seen,) = proxy.seen
    assert seen.line.startswith("CONNECT klime.test:443 HTTP/1.")
    assert seen.headers["proxy-authorization"] == "Basic " + _b64("user:pw_secret")
    assert "authorization" not in seen.headers  # the write key goes only to the server
    text = str(failed.error)
    assert "407" in text
    assert "pw_secret" not in text and _b64("user:pw_secret") not in text
    proxy.close()


@pytest.mark.parametrize("variable", ["NO_PROXY", "no_proxy"])
def test_no_proxy_bypasses_the_proxy(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nobody there
    refused = send(make_transport(server.url, retry_max_attempts=1))
    assert "ConnectionRefusedError" in str(refused.error)  # the proxy is in force

    monkeypatch.setenv(variable, "localhost,127.0.0.1")
    t = make_transport(server.url)
    monkeypatch.delenv(variable)  # read once, at construction

    assert send(t).response is not None
    assert len(server.received) == 1


def test_a_timeout_is_named_by_where_it_happened(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def too_slow(self: Any) -> None:
        raise socket.timeout("timed out")

    monkeypatch.setattr("http.client.HTTPConnection.connect", too_slow)
    failed = send(make_transport(server.url, retry_max_attempts=1))
    assert "failed after 1 attempts, last: ConnectTimeout (" in str(failed.error)


# -- TLS and secrets ---------------------------------------------------------------------


def test_tls_verifies_against_certifi_and_an_empty_bundle_variable_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.setenv("CURL_CA_BUNDLE", "")
    bundle = connection.ca_bundle()
    context = connection.tls_context(bundle)
    assert bundle == certifi.where()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_an_error_text_that_quotes_a_header_has_the_key_removed(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def quoting(self: Any, method: str, url: str, body: Any, headers: dict[str, str]) -> None:
        raise ValueError(f"Invalid header value {headers['Authorization']!r}")

    monkeypatch.setattr("http.client.HTTPConnection.request", quoting)
    failed = send(make_transport(server.url, retry_max_attempts=1))
    assert "Invalid header value" in str(failed.error)
    assert "sk_key_1234" not in str(failed.error)


# -- eager imports -----------------------------------------------------------------------

_SCRIPT = """
import json, socket, sys, threading
from klime_mp.options import build_options
from klime_mp.delivery import Deliverer
from klime_mp.transport import Transport

def serve(listener):
    while True:
        conn, _ = listener.accept()
        data = b""
        while not data.endswith(b"}"):
            data += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\n{}")
        conn.close()

def closing(listener):
    while True:
        listener.accept()[0].close()

listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
threading.Thread(target=serve, args=(listeners[0],), daemon=True).start()
threading.Thread(target=closing, args=(listeners[1],), daemon=True).start()
refused = socket.create_server(("127.0.0.1", 0))
refused_port = refused.getsockname()[1]
refused.close()
urls = [
    "http://localhost:%d" % listeners[0].getsockname()[1],
    "http://localhost:%d" % refused_port,
    "https://localhost:%d" % listeners[1].getsockname()[1],
]
before = set(sys.modules)
for url in urls:
    options = build_options("k", url, retry_max_attempts=1, timeout=5)
    t = Transport(options)
    d = Deliverer(options, t, threading.Event())
    d.send(b'{"batch":[]}', lambda: None)
    d.send(b'{"batch":[]}', lambda: None)
    t.close()
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_sending_imports_nothing_lazily() -> None:
    # A lazy import in a forked child's sender can fail or deadlock on an import lock
    # held at the fork (it happened with the idna codec and netrc).
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == []


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _peer_closed(t: Transport) -> bool:
    conn = t._conn
    return conn is not None and conn.sock is not None and connection._readable(conn.sock)


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not met in time")
