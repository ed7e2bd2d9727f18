"""The transport's one pooled urllib3 connection: keep-alive, stale connections, TLS,
proxies (forwarding, CONNECT, https://), timeouts, fork, eager imports, and
credentials kept out of error texts. Every peer is real and on loopback.

Runs on urllib3 2.x and 1.26.x (tox env ``py311-urllib3v1``; ``.ci/run`` reruns this
file on 1.26)."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import fork_helpers as h
import pytest
import trustme
import urllib3
from conftest import CollectorProcess

from klime_mp.delivery.deliverer import Deliverer
from klime_mp.delivery.failures import chain_of as _chain
from klime_mp.delivery.transport import Attempt, Transport, _Proxy, _proxy_for, ca_bundle
from klime_mp.options import build_options

KEY = "sk_key_1234"
BODY = b'{"batch":[{"type":"track"}]}'
OK = b'{"status":"ok","accepted":1,"failed":0}'
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")
URLLIB3_1 = urllib3.__version__.startswith("1.")


# -- loopback peers ------------------------------------------------------------------------


@dataclass
class Seen:
    line: str
    headers: dict[str, str]
    connection: int


def read_head(reader: Any) -> tuple[str, dict[str, str]]:
    """A request or status line and its headers ('' at the end of the stream)."""
    line = reader.readline().decode("latin-1").rstrip("\r\n")
    headers: dict[str, str] = {}
    while line and (header := reader.readline().decode("latin-1").rstrip("\r\n")):
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    return line, headers


def reply(status: str = "200 OK", body: bytes = OK, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status.encode(),
        len(body),
        head.encode(),
        body,
    )


class Peer:
    """A loopback TCP server, one thread per connection, TLS when given a context.
    Counts connections and closes every socket it opened."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.connections = 0
        self.handshake_failures = 0
        self.seen: list[Seen] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._sockets.append(conn)
                number = self.connections
            threading.Thread(target=self._handle, args=(conn, number), daemon=True).start()

    def _handle(self, conn: socket.socket, number: int) -> None:
        with conn:
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    self.handshake_failures += 1
                    return
                self._sockets.append(conn)
            with contextlib.suppress(OSError, ValueError):  # the client or close() ended it
                self.serve(conn, number)

    def serve(self, conn: socket.socket, number: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accept() (close() alone does not)
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


class Server(Peer):
    """An HTTP/1.1 server written on sockets, for what http.server cannot do: close a
    kept-alive connection without saying so. ``answer(seen)`` returns the raw reply,
    or None to close without one; a connection closes after ``per_connection``."""

    def __init__(
        self,
        answer: Callable[[Seen], bytes | None] = lambda seen: reply(),
        per_connection: int = 100,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.answer = answer
        self.per_connection = per_connection
        super().__init__(tls)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def serve(self, conn: socket.socket, number: int) -> None:
        with conn.makefile("rb") as reader:
            for _ in range(self.per_connection):
                line, headers = read_head(reader)
                if not line:
                    return
                reader.read(int(headers.get("content-length", "0")))
                seen = Seen(line, headers, number)
                self.seen.append(seen)
                answer = self.answer(seen)
                if answer is None:
                    return
                conn.sendall(answer)


class Proxy(Peer):
    """A real proxy: forwards absolute-URI requests and opens CONNECT tunnels. Host
    names go to loopback ports through ``hosts``, so a request that reached its server
    went through here (the client cannot resolve ``klime.test``). With ``credentials``
    ("user:password"), anything without the matching Basic token gets a 407."""

    def __init__(
        self,
        hosts: dict[str, int],
        credentials: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.hosts = hosts
        self.token = None if credentials is None else _b64(credentials)
        super().__init__(tls)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def serve(self, conn: socket.socket, number: int) -> None:
        upstream: socket.socket | None = None
        with conn.makefile("rb") as reader:
            while True:
                line, headers = read_head(reader)
                if not line:
                    return
                body = reader.read(int(headers.get("content-length", "0")))
                self.seen.append(Seen(line, headers, number))
                method, target, _ = line.split(" ")
                if self.token and headers.get("proxy-authorization") != f"Basic {self.token}":
                    conn.sendall(
                        reply("407 Proxy Authentication Required", b"", "Connection: close")
                    )
                    return
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    upstream = self._connect(host, int(port))
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    self._pipe(conn, upstream)
                    return
                parts = urllib3.util.parse_url(target)
                if upstream is None:
                    upstream = self._connect(parts.host or "", parts.port or 80)
                self._forward(conn, upstream, f"{method} {parts.request_uri}", headers, body)

    def _connect(self, host: str, port: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.hosts.get(host, port)), timeout=30)
        self._sockets.append(sock)
        return sock

    @staticmethod
    def _forward(
        conn: socket.socket,
        upstream: socket.socket,
        line: str,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        kept = {k: v for k, v in headers.items() if not k.startswith("proxy-")}
        head = "".join(f"{k}: {v}\r\n" for k, v in kept.items())
        upstream.sendall(f"{line} HTTP/1.1\r\n{head}\r\n".encode("latin-1") + body)
        with upstream.makefile("rb") as answer:
            status, answer_headers = read_head(answer)
            content = answer.read(int(answer_headers.get("content-length", "0")))
        head = "".join(f"{k}: {v}\r\n" for k, v in answer_headers.items())
        conn.sendall(f"{status}\r\n{head}\r\n".encode("latin-1") + content)

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        """Relay bytes both ways from one thread (an SSL socket must not be read and
        written by two threads at once) until either side closes."""
        while True:
            readable, _, _ = select.select([a, b], [], [], 30)
            if not readable:
                return
            for source in readable:
                sink = b if source is a else a
                data = source.recv(65536)
                if not data:
                    return
                while isinstance(source, ssl.SSLSocket) and source.pending():
                    data += source.recv(65536)
                sink.sendall(data)


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.close()


# -- certificates ----------------------------------------------------------------------------


@dataclass
class Tls:
    ca: Path  # the test CA's certificate: what a client must trust
    other_ca: Path  # a CA that signed nothing here
    context: ssl.SSLContext  # a server context: 127.0.0.1, localhost, klime.test
    wrong_host: ssl.SSLContext  # a server context for elsewhere.test only
    extra: list[Any] = field(default_factory=list)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    folder = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    other.cert_pem.write_to_path(str(folder / "other.pem"))
    contexts = []
    for names in (("127.0.0.1", "localhost", "klime.test"), ("elsewhere.test",)):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*names).configure_cert(context)
        contexts.append(context)
    return Tls(folder / "ca.pem", folder / "other.pem", *contexts)


# -- helpers -------------------------------------------------------------------------------


def transport(url: str, **options: Any) -> Transport:
    return Transport(build_options(KEY, url, **options))


def post(t: Transport, timeout: float = 10.0) -> Attempt:
    return t.post(BODY, timeout)


@pytest.fixture(autouse=True)
def no_proxy_or_ca_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        pause.wait(0.01)


def _idle_socket(t: Transport) -> Any:
    """The socket of the connection waiting in the transport's pool."""
    pool = t._pool
    assert pool is not None and pool.pool is not None
    (conn,) = [c for c in pool.pool.queue if c is not None]
    return conn.sock


def _readable(sock: Any) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


# -- one keep-alive connection ---------------------------------------------------------------


def test_posts_share_one_kept_alive_connection(server: Server) -> None:
    t = transport(server.url)
    assert [post(t).status for _ in range(3)] == [200, 200, 200]
    assert [s.connection for s in server.seen] == [1, 1, 1]
    assert server.seen[0].line == "POST /v1/batch HTTP/1.1"
    headers = server.seen[0].headers
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(BODY))
    assert headers["user-agent"].startswith("klime_mp/")


def test_the_answer_comes_back_as_a_value(server: Server) -> None:
    server.answer = lambda seen: reply("429 Too Many Requests", b"slow down", "Retry-After: 7")
    assert post(transport(server.url)) == Attempt(429, b"slow down", "7", None)


def test_connection_close_in_a_reply_is_honoured() -> None:
    # The server says "Connection: close" but leaves the socket open: a client that
    # ignored the header would send the second request on the same connection.
    peer = Server(lambda seen: reply("200 OK", OK, "Connection: close"))
    t = transport(peer.url)
    assert post(t).status == 200 and post(t).status == 200
    assert [s.connection for s in peer.seen] == [1, 2]
    peer.close()


@pytest.mark.parametrize("noticed", ["before_writing", "on_writing"])
def test_a_connection_the_server_closed_while_idle_costs_no_attempt(
    noticed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server answers one request per connection, then closes it unannounced, as a
    # server's keep-alive timeout does between two batches.
    peer = Server(per_connection=1)
    if noticed == "on_writing":  # the close arrives after the check for it
        monkeypatch.setattr("urllib3.connectionpool.is_connection_dropped", lambda conn: False)
        monkeypatch.setattr("klime_mp.delivery.transport.is_connection_dropped", lambda conn: False)
    t = transport(peer.url)
    assert post(t).status == 200
    _wait_for(lambda: _readable(_idle_socket(t)))  # the server's FIN has arrived

    assert post(t) == Attempt(200, OK)  # one post() is one attempt
    assert [s.connection for s in peer.seen] == [1, 2]
    peer.close()


def test_a_new_connection_that_fails_counts_as_an_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the first connection is answered. The free resend happens once, on a reused
    # connection; the failure of the new one is an attempt like any other.
    peer = Server(lambda seen: reply() if seen.connection == 1 else None, per_connection=1)
    monkeypatch.setattr("urllib3.connectionpool.is_connection_dropped", lambda conn: False)
    monkeypatch.setattr("klime_mp.delivery.transport.is_connection_dropped", lambda conn: False)
    t = transport(peer.url)
    assert post(t).status == 200
    _wait_for(lambda: _readable(_idle_socket(t)))

    failed = post(t)

    assert failed.status is None
    assert failed.error is not None and failed.error.startswith("ConnectionError (")
    assert "RemoteDisconnected" in failed.error or "ConnectionResetError" in failed.error
    assert peer.connections == 2  # the first and its free replacement, no more
    peer.close()


def test_retries_go_through_the_deliverer_on_the_same_connection(server: Server) -> None:
    answers = iter([reply("503 Service Unavailable", b"busy"), reply()])
    server.answer = lambda seen: next(answers)
    options = build_options(KEY, server.url, retry_initial_delay=10)
    t = Transport(options)

    delivery = Deliverer(options, t, threading.Event()).send(BODY, lambda: None)

    assert delivery.response is not None and delivery.retries == 1
    assert [s.connection for s in server.seen] == [1, 1]  # urllib3 retried nothing itself


def test_close_then_post_opens_a_new_connection(server: Server) -> None:
    t = transport(server.url)
    assert post(t).status == 200
    t.close()
    assert post(t).status == 200
    assert [s.connection for s in server.seen] == [1, 2]


# -- the endpoint ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "path"),
    [
        ("", "/v1/batch"),
        ("/", "/v1/batch"),
        ("/v1/batch", "/v1/batch"),  # the batch URL pasted as the endpoint
        ("/v1/batch/", "/v1/batch"),
        ("/klime", "/klime/v1/batch"),  # a reverse proxy's prefix stays
        ("/klime/v1/batch", "/klime/v1/batch"),
    ],
)
def test_the_endpoint_is_the_base_url_even_when_given_with_the_batch_path(
    server: Server, suffix: str, path: str
) -> None:
    assert post(transport(server.url + suffix)).status == 200
    assert server.seen[0].line == f"POST {path} HTTP/1.1"


def test_the_batch_url_as_endpoint_is_stored_as_the_base_url() -> None:
    assert build_options(KEY, "https://i.klime.com/v1/batch").endpoint == "https://i.klime.com"
    assert build_options(KEY, "https://x.test/klime/").endpoint == "https://x.test/klime"


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tls: Tls) -> Iterator[Server]:
    running = Server(tls=tls.context)
    yield running
    running.close()


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"])
def test_tls_trusts_the_ca_a_standard_variable_names(
    tls: Tls, tls_server: Server, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, str(tls.ca))
    t = transport(tls_server.url)
    monkeypatch.delenv(variable)  # read once, at construction

    assert [post(t).status for _ in range(3)] == [200, 200, 200]
    assert tls_server.connections == 1  # one handshake, then keep-alive


def test_ssl_cert_dir_is_honoured(
    tls: Tls, tls_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A directory of certificates named by their subject hash, as c_rehash makes them.
    der = ssl.PEM_cert_to_DER_cert(tls.ca.read_text())
    subject_hash = subprocess.run(
        ["openssl", "x509", "-noout", "-subject_hash"],
        input=tls.ca.read_bytes(),
        capture_output=True,
        check=False,
    )
    if subject_hash.returncode != 0 or not der:
        pytest.skip("the openssl command is needed to name a CA directory entry")
    (tmp_path / f"{subject_hash.stdout.decode().strip()}.0").write_bytes(tls.ca.read_bytes())
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    assert post(transport(tls_server.url)).status == 200


@pytest.mark.parametrize(
    "trusted",
    [
        pytest.param(None, id="certifi_or_system"),
        pytest.param("other", id="another_CA"),
        pytest.param("", id="every_variable_empty"),
    ],
)
def test_tls_refuses_a_certificate_it_cannot_verify(
    tls: Tls, tls_server: Server, monkeypatch: pytest.MonkeyPatch, trusted: str | None
) -> None:
    if trusted is not None:
        for name in CA_VARIABLES:  # empty: a trick that turned verification off elsewhere
            monkeypatch.setenv(name, str(tls.other_ca) if trusted else "")
    failed = post(transport(tls_server.url))

    assert failed.status is None and failed.error is not None
    assert failed.error.startswith("SSLError (")
    assert "CERTIFICATE_VERIFY_FAILED" in failed.error
    port = tls_server.url.rsplit(":", 1)[1]
    assert (failed.cause or "").startswith(f"TLS: certificate verify failed for 127.0.0.1:{port}")
    assert tls_server.seen == []


def test_tls_refuses_a_certificate_for_another_host(
    tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = Server(tls=tls.wrong_host)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca))  # a trusted CA signed it

    failed = post(transport(peer.url))

    assert failed.error is not None and failed.error.startswith("SSLError (")
    assert peer.seen == []
    peer.close()


def test_the_trust_store_is_certifis_when_installed_else_the_systems() -> None:
    certifi = pytest.importorskip("certifi")
    assert ca_bundle() == certifi.where()
    code = (
        "import sys; sys.modules['certifi'] = None\n"  # as if it were not installed
        "from klime_mp.delivery.transport import ca_bundle, tls_context\n"
        "context = tls_context(ca_bundle())\n"
        "print(ca_bundle(), context.verify_mode == 2)"
    )
    env = {k: v for k, v in os.environ.items() if k not in CA_VARIABLES}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert out.stdout.decode().split() == ["None", "True"], out.stderr.decode()


# -- proxies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
def test_http_goes_through_a_forwarding_proxy_with_basic_auth(
    server: Server, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    proxy = Proxy({"klime.test": server.port}, credentials="user:p@ss")
    monkeypatch.setenv(variable, f"http://user:p%40ss@127.0.0.1:{proxy.port}")
    t = transport("http://klime.test:8080/base")

    assert [post(t).status for _ in range(2)] == [200, 200]

    first = proxy.seen[0]
    assert first.line == "POST http://klime.test:8080/base/v1/batch HTTP/1.1"  # absolute URI
    assert first.headers["host"] == "klime.test:8080"
    assert first.headers["proxy-authorization"] == "Basic " + _b64("user:p@ss")
    assert server.seen[0].line == "POST /base/v1/batch HTTP/1.1"
    assert server.seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert "proxy-authorization" not in server.seen[0].headers
    assert proxy.connections == 1  # kept alive through the proxy too
    proxy.close()


def test_https_is_tunnelled_with_connect_and_proxy_auth(
    tls: Tls, tls_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = Proxy({"klime.test": tls_server.port}, credentials="user:pw_secret")
    monkeypatch.setenv("HTTPS_PROXY", f"http://user:pw_secret@127.0.0.1:{proxy.port}")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca))
    t = transport("https://klime.test")

    assert [post(t).status for _ in range(2)] == [200, 200]

    (connect,) = proxy.seen
    assert connect.line.startswith("CONNECT klime.test:443 HTTP/1.")
    assert connect.headers["proxy-authorization"] == "Basic " + _b64("user:pw_secret")
    assert "authorization" not in connect.headers  # the write key goes only to the server
    assert tls_server.seen[1].headers["authorization"] == f"Bearer {KEY}"
    assert proxy.connections == 1 and tls_server.connections == 1
    proxy.close()


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_an_https_proxy_is_spoken_to_over_verified_tls(
    tls: Tls, tls_server: Server, server: Server, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    target = tls_server if scheme == "https" else server
    proxy = Proxy({"klime.test": target.port}, credentials="user:pw_secret", tls=tls.context)
    monkeypatch.setenv(f"{scheme}_proxy", f"https://user:pw_secret@127.0.0.1:{proxy.port}")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca))
    t = transport(f"{scheme}://klime.test")

    assert [post(t).status for _ in range(2)] == [200, 200]

    expected = "CONNECT klime.test:443 " if scheme == "https" else "POST http://klime.test/"
    assert proxy.seen[0].line.startswith(expected)
    assert proxy.seen[0].headers["proxy-authorization"] == "Basic " + _b64("user:pw_secret")
    assert proxy.connections == 1 and proxy.handshake_failures == 0
    proxy.close()


def test_an_https_proxy_with_an_untrusted_certificate_is_refused(
    tls: Tls, tls_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = Proxy({"klime.test": tls_server.port}, tls=tls.context)
    monkeypatch.setenv("HTTPS_PROXY", f"https://127.0.0.1:{proxy.port}")  # its CA not trusted

    failed = post(transport("https://klime.test"))

    assert failed.error is not None and failed.error.startswith("SSLError (")
    assert "CERTIFICATE_VERIFY_FAILED" in failed.error
    _wait_for(lambda: proxy.handshake_failures == 1)  # the proxy's certificate failed
    assert proxy.seen == [] and tls_server.seen == []
    proxy.close()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_proxy_credentials_are_never_in_an_error_text(
    monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    proxy = Proxy({}, credentials="user:right")
    monkeypatch.setenv(f"{scheme}_proxy", f"http://user:p%40ss_wrong@127.0.0.1:{proxy.port}")

    refused = post(transport(f"{scheme}://klime.test"))

    if scheme == "http":  # a forwarding proxy's 407 is an answer, like any status
        assert refused.status == 407
    else:  # a refused CONNECT never reaches the server: an error
        assert refused.error is not None and "407" in refused.error
    proxy.close()
    # Nobody listens there now: the error names the proxy, without its credentials.
    unreachable = post(transport(f"{scheme}://klime.test"))
    assert unreachable.error is not None
    assert unreachable.error.startswith("ConnectionError (proxy, ConnectionRefusedError")
    for text in (str(refused), str(unreachable)):
        for secret in ("p%40ss_wrong", "p@ss_wrong", _b64("user:p@ss_wrong"), KEY):
            assert secret not in text


@pytest.mark.parametrize("variable", ["NO_PROXY", "no_proxy"])
def test_no_proxy_bypasses_the_proxy(
    server: Server, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    proxy = Proxy({})
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv(variable, "localhost,127.0.0.1")
    t = transport(server.url)
    monkeypatch.delenv(variable)  # read once, at construction

    assert post(t).status == 200
    assert len(server.seen) == 1 and proxy.connections == 0
    assert post(transport(server.url)).status == 200  # a new transport reads it again
    assert proxy.connections == 1
    proxy.close()


def test_an_unsupported_proxy_is_ignored_with_a_warning_that_quotes_nothing(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "socks5://user:pw_secret@127.0.0.1:1080")
    assert post(transport(server.url)).status == 200  # directly
    assert "only http:// and https:// proxies" in caplog.text
    assert "pw_secret" not in caplog.text


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def proxy_setting(monkeypatch: pytest.MonkeyPatch, value: str) -> _Proxy | None:
    """What the transport makes of ``HTTP_PROXY=value`` for an http:// endpoint (on
    loopback: a remote one adds its own warning about plain http)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", value)
    return _proxy_for(build_options(KEY, "http://127.0.0.1:9"))


def test_a_proxy_without_a_scheme_is_an_http_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _Proxy("http://proxy.test:3128", {}, ())
    assert proxy_setting(monkeypatch, "proxy.test:3128") == expected


def test_proxy_credentials_become_a_header_and_leave_the_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Percent-encoded, as a user with "@" in the name and ":" in the password must write.
    proxy = proxy_setting(monkeypatch, "http://us%40er:p%3Ass@proxy.test:3128")
    token = _b64("us@er:p:ss")
    assert proxy == _Proxy(
        "http://proxy.test:3128",
        {"Proxy-Authorization": f"Basic {token}"},
        (token, "us%40er:p%3Ass", "p%3Ass", "p:ss"),  # every form that could be quoted
    )


def test_a_proxy_user_without_a_password_has_an_empty_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = proxy_setting(monkeypatch, "http://someone@proxy.test:3128")
    token = _b64("someone:")
    assert proxy == _Proxy(
        "http://proxy.test:3128", {"Proxy-Authorization": f"Basic {token}"}, (token, "someone")
    )


@pytest.mark.parametrize(
    "setting", ["http://proxy.test:port", "socks5://proxy.test:1080", "http://:3128"]
)
def test_an_unusable_proxy_setting_is_ignored_with_one_exact_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, setting: str
) -> None:
    with caplog.at_level(logging.WARNING):
        assert proxy_setting(monkeypatch, setting) is None
    assert [record.getMessage() for record in caplog.records] == [
        "Klime: ignoring the proxy setting for http: only http:// and https:// proxies "
        "with a valid host and port are supported"
    ]


def test_an_error_that_quotes_a_header_has_every_credential_removed(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def quoting(
        self: Any, method: str, url: str, body: Any = None, headers: Any = None, **kw: Any
    ) -> None:
        raise ValueError(f"Invalid header value in {dict(headers)!r}")

    monkeypatch.setattr("urllib3.connection.HTTPConnection.request", quoting)
    proxy = Proxy({})
    monkeypatch.setenv("HTTP_PROXY", f"http://user:pw_secret@127.0.0.1:{proxy.port}")

    failed = post(transport("http://klime.test"))

    assert failed.error is not None and "Invalid header value" in failed.error
    assert failed.error.startswith("ProtocolError (ValueError: ")
    for secret in (KEY, "pw_secret", _b64("user:pw_secret")):
        assert secret not in failed.error
    assert "Basic [redacted]" in failed.error  # what stands in their place
    proxy.close()


# The error a failed attempt reports is the one at the end of urllib3's wrappers: how
# they are linked differs between its versions (an attribute, an argument, a cause).


def test_the_error_chain_follows_reason_then_arguments() -> None:
    reset = ConnectionResetError(104, "Connection reset by peer")
    aborted = urllib3.exceptions.ProtocolError("Connection aborted.", reset)
    retried = urllib3.exceptions.MaxRetryError(None, "/v1/batch", reason=aborted)  # type: ignore[arg-type]
    assert _chain(retried) == [retried, aborted, reset]


def test_the_error_chain_follows_the_cause_or_the_context() -> None:
    refused = ConnectionRefusedError(111, "Connection refused")
    raised_from = urllib3.exceptions.HTTPError("urllib3 2 raises from the cause")
    raised_from.__cause__ = refused
    raised_in = urllib3.exceptions.HTTPError("urllib3 1.26 raises in the except block")
    raised_in.__context__ = refused
    assert _chain(raised_from) == [raised_from, refused]
    assert _chain(raised_in) == [raised_in, refused]


def test_the_error_chain_ends_at_the_first_error_urllib3_did_not_raise() -> None:
    earlier = ValueError("handled before the reset")
    reset = ConnectionResetError(104, "Connection reset by peer")
    reset.__context__ = earlier  # not urllib3's: not followed
    aborted = urllib3.exceptions.ProtocolError("Connection aborted.", reset)
    alone = urllib3.exceptions.HTTPError("nothing inside")
    assert _chain(aborted) == [aborted, reset]
    assert _chain(alone) == [alone]


def test_the_error_chain_is_cut_at_8_links() -> None:
    links = [urllib3.exceptions.HTTPError(f"wrapper {n}") for n in range(12)]
    for outer, inner in zip(links, links[1:]):
        outer.__cause__ = inner
    assert _chain(links[0]) == links[:8]


# -- timeouts --------------------------------------------------------------------------------


def test_a_connect_timeout_is_named() -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        failed = post(transport(f"http://127.0.0.1:{port}"), timeout=0.3)
    finally:
        for sock in [*fillers, listener]:
            sock.close()
    assert failed.error is not None and failed.error.startswith("ConnectTimeout ("), failed


def test_a_read_timeout_is_named() -> None:
    release = threading.Event()

    def never(seen: Seen) -> bytes | None:
        release.wait(10)  # reads the request, never answers
        return None

    peer = Server(never)
    started = time.monotonic()
    failed = post(transport(peer.url), timeout=0.3)
    release.set()
    assert failed.error is not None and failed.error.startswith("ReadTimeout ("), failed
    assert time.monotonic() - started < 5  # the 0.3 s timeout, not the server's 10 s
    peer.close()


# -- fork ------------------------------------------------------------------------------------


def _in_child(body: Callable[[], int], timeout: float = 20.0) -> int:
    """Fork, run ``body`` in the child (its return value is the exit code), and wait
    for it at most ``timeout`` seconds: a child stuck on a lock is killed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            code = body()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -1
        threading.Event().wait(0.01)


@pytest.mark.fork
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_abandon_in_a_child_leaves_the_parents_connection_alive(
    tls: Tls, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    peer = Server(tls=tls.context if scheme == "https" else None)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca))
    t = transport(peer.url)
    assert post(t).status == 200
    fd = _idle_socket(t).fileno()
    pool = t._pool
    assert pool is not None and pool.pool is not None
    queue_lock = pool.pool.mutex

    def child() -> int:
        # What forksafe does with the parent's transport, while the pool's lock is held
        # (by the parent here: as if another thread had it at the fork).
        t.abandon()
        try:
            os.fstat(fd)
            return 1  # this process's copy of the socket is still open
        except OSError:
            pass
        pool.close()  # urllib3's cleanup, as its finalizer runs it at exit: no lock held
        return 0

    with queue_lock:
        code = _in_child(child)

    assert code == 0
    assert post(t).status == 200  # the same connection: no shutdown, no close_notify
    assert [s.connection for s in peer.seen] == [1, 1]
    peer.close()


@pytest.mark.fork
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_abandon_closes_a_connection_forked_in_the_middle_of_a_request() -> None:
    # The connection is out of the pool's queue while a request is in flight: the
    # child must find and close its copy all the same (not leak it for its lifetime).
    answered = threading.Event()
    peer = Server(lambda seen: reply() if answered.wait(10) else None)
    t = transport(peer.url)
    outcome: list[Attempt] = []
    sender = threading.Thread(target=lambda: outcome.append(post(t)))
    sender.start()
    _wait_for(lambda: len(peer.seen) == 1)  # the request is in, its answer held back
    assert t._newest is not None
    fd = t._newest.conn.sock.fileno()

    def child() -> int:
        t.abandon()
        try:
            os.fstat(fd)
        except OSError:
            return 0
        return 1  # still open in the child

    code = _in_child(child)
    answered.set()
    sender.join(10)

    assert code == 0
    assert outcome == [Attempt(200, OK)]
    assert post(t).status == 200
    assert [s.connection for s in peer.seen] == [1, 1]
    peer.close()


@pytest.mark.fork
def test_forking_while_threads_send_leaves_the_parents_connection_alive(
    collector_process: CollectorProcess, tmp_path: Path
) -> None:
    # Threads track and the sender posts all the while the main thread forks; every
    # child sends its own events on its own connection, and the parent keeps its one.
    before = collector_process.stats()["connections"]  # counts its own connection
    log = tmp_path / "outcomes.jsonl"
    result = h.run_script(
        "fork_scenarios.py",
        "keep_alive_while_sending",
        "12",
        env=h.script_env(collector_process.url, log),
    )
    assert not h.errors_in(log), h.errors_in(log)
    opened = collector_process.stats()["connections"] - before - 1
    assert opened == 1 + 12
    h.assert_delivered_once(collector_process, result["tags"])
    assert result["parent_batches"] > 12  # the parent was sending while it forked


# -- eager imports ---------------------------------------------------------------------------

_SCRIPT = """
import json, socket, ssl, sys, threading, trustme
from klime_mp.options import build_options
from klime_mp.delivery.transport import Transport

ca = trustme.CA()
ca.cert_pem.write_to_path(sys.argv[1])
server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ca.issue_cert("localhost").configure_cert(server_tls)

def answer(conn):
    data = b""
    while b"\\r\\n\\r\\n" not in data:
        data += conn.recv(65536)
    if data.startswith(b"CONNECT"):
        conn.sendall(b"HTTP/1.1 407 No\\r\\nContent-Length: 0\\r\\n\\r\\n")
    else:
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\n{}")

def serve(listener, wrap):
    while True:
        conn, _ = listener.accept()
        try:
            answer(wrap(conn) if wrap else conn)
        except OSError:
            pass
        conn.close()

def wrap(conn):
    return server_tls.wrap_socket(conn, server_side=True)

plain, tls, closing = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]
for listener, wrapper in ((plain, None), (tls, wrap)):
    threading.Thread(target=serve, args=(listener, wrapper), daemon=True).start()
def close_at_once(listener):
    while True:
        listener.accept()[0].close()

threading.Thread(target=close_at_once, args=(closing,), daemon=True).start()
refused = socket.create_server(("127.0.0.1", 0))
refused_port = refused.getsockname()[1]
refused.close()
port = lambda s: s.getsockname()[1]
cases = [
    ("http://localhost:%d" % port(plain), {}),
    ("http://localhost:%d" % refused_port, {}),
    ("https://localhost:%d" % port(closing), {}),
    ("https://localhost:%d" % port(tls), {}),
    ("https://localhost:%d" % port(tls), {"SSL_CERT_FILE": ""}),  # untrusted
    ("http://klime.test", {"HTTP_PROXY": "http://u:p@localhost:%d" % port(plain)}),
    ("https://klime.test", {"HTTPS_PROXY": "http://u:p@localhost:%d" % port(plain)}),
]
import os
before = set(sys.modules)
for url, env in cases:
    os.environ.update(env)
    t = Transport(build_options("k", url, timeout=5))
    errors = [t.post(b'{"batch":[]}', 5).error for _ in range(2)]
    t.close()
    t.post(b'{"batch":[]}', 5)
    t.abandon()
    for name in env:
        del os.environ[name]
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_sending_imports_nothing_lazily(tmp_path: Path) -> None:
    # A lazy import in a forked child's sender can fail or deadlock on an import lock
    # held at the fork (it happened with the idna codec and netrc).
    root = Path(__file__).resolve().parent.parent
    ca = tmp_path / "ca.pem"
    env = {k: v for k, v in os.environ.items() if k.upper() not in {"NO_PROXY", *CA_VARIABLES}}
    env["SSL_CERT_FILE"] = str(ca)
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(ca)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == []
