"""Security: the write key stays secret, TLS is verified, every request is bounded,
and the local collector is safe to leave running on a developer's machine."""

from __future__ import annotations

import argparse
import base64
import hmac
import http.server
import inspect
import io
import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from klime_mp import KlimeClient, SendError
from klime_mp.collector import Collector, FaultPlan
from klime_mp.collector import cli as collector_cli

pytestmark = pytest.mark.timeout(60)

SECRET = "sk_live_SECRET_4f1c9e_do_not_log"
FAST = {"retry_initial_delay": 10, "flush_interval": 50}


# -- capturing everything the client says ---------------------------------------------


class Capture:
    """Every log record at every level (all loggers, via the root), every exception
    the client hands back, and every repr, rendered to text."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setLevel(logging.DEBUG)
        self.handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.texts: list[str] = []
        self.errors: list[BaseException] = []

    def on_error(self, error: BaseException, events: list[dict[str, Any]]) -> None:
        self.errors.append(error)
        self.texts.append(json.dumps(events))

    def exception(self, error: BaseException) -> None:
        self.errors.append(error)

    def everything(self) -> str:
        rendered = [self.stream.getvalue(), *self.texts]
        for error in self.errors:
            rendered.append(str(error))
            rendered.append(repr(error))
            rendered.append(repr(error.args))
            rendered.extend(traceback.format_exception(type(error), error, error.__traceback__))
        return "\n".join(rendered)


@pytest.fixture
def capture() -> Iterator[Capture]:
    root = logging.getLogger()
    previous = root.level
    captured = Capture()
    root.addHandler(captured.handler)
    root.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        root.removeHandler(captured.handler)
        root.setLevel(previous)


def client_for(url: str, capture: Capture, **options: Any) -> KlimeClient:
    merged = {**FAST, "retry_max_attempts": 2, "on_error": capture.on_error, **options}
    return KlimeClient(SECRET, url, **merged)


def exercise(client: KlimeClient, capture: Capture) -> None:
    """Everything a client can say: queued sends, a sync send, stats, reprs."""
    client.track("Secret Test", {"n": 1}, user_id="u1")
    client.identify("u1", {"plan": "pro"})
    client.flush(10)
    try:
        client.track_sync("Secret Test", user_id="u1")
    except SendError as error:
        capture.exception(error)
    capture.texts += [repr(client), repr(client.options), repr(client.stats())]
    client.shutdown()
    capture.texts.append(repr(client.stats()))


# -- the write key --------------------------------------------------------------------


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(FaultPlan(), id="accepted"),
        pytest.param(FaultPlan(error_rate=1.0), id="503_retries_exhausted"),
        pytest.param(FaultPlan(rate_limit_rate=1.0, retry_after="0"), id="429"),
        pytest.param(FaultPlan(drop_rate=1.0), id="connection_dropped"),
        pytest.param(FaultPlan(garbage_rate=1.0), id="garbage_reply"),
        pytest.param(FaultPlan(delay=2.0), id="read_timeout"),
    ],
)
def test_write_key_never_appears_in_logs_errors_reprs_or_stats(
    tmp_path: Path, capture: Capture, capfd: pytest.CaptureFixture[str], plan: FaultPlan
) -> None:
    with Collector(db=tmp_path / "db.sqlite3", faults=plan) as collector:
        exercise(client_for(collector.url, capture, timeout=0.5), capture)

    out, err = capfd.readouterr()
    assert capture.stream.getvalue()  # the scenario did log something
    assert SECRET not in capture.everything() + out + err


def test_write_key_stays_secret_when_it_is_refused(tmp_path: Path, capture: Capture) -> None:
    with Collector(db=tmp_path / "db.sqlite3", write_keys=["another-key"]) as collector:
        exercise(client_for(collector.url, capture), capture)

    assert any("401" in str(error) for error in capture.errors)
    assert SECRET not in capture.everything()


def test_write_key_stays_secret_when_the_server_is_down_or_slow_at_shutdown(
    tmp_path: Path, capture: Capture
) -> None:
    with Collector(db=tmp_path / "db.sqlite3") as collector:
        collector.down()
        client = client_for(
            collector.url,
            capture,
            retry_max_attempts=50,
            retry_initial_delay=200,
            shutdown_timeout=0.5,
        )
        for n in range(30):
            client.track("Secret Test", {"n": n}, user_id="u1")
        assert client.shutdown() is False  # shutdown_timeout, reported to on_error
        capture.texts.append(repr(client.stats()))

    assert client.stats().dropped
    assert SECRET not in capture.everything()


def test_write_key_stays_secret_in_oversized_and_callback_failures(
    tmp_path: Path, capture: Capture
) -> None:
    def raising(response: Any) -> None:
        raise RuntimeError("callback bug")

    with Collector(db=tmp_path / "db.sqlite3") as collector:
        client = client_for(collector.url, capture, on_success=raising)
        client.track("Too Big", {"blob": "x" * 300_000}, user_id="u1")
        client.track("Fine", user_id="u1")
        client.shutdown()

    assert client.stats().dropped == {"oversized": 1}
    assert "callback bug" in capture.stream.getvalue()
    assert SECRET not in capture.everything()


@pytest.mark.parametrize(
    "key",
    [SECRET + "\n", SECRET + " ", " " + SECRET, SECRET + "\r\nX: y", SECRET + "\u00e9", "a\x00b"],
)
def test_a_key_that_cannot_go_into_a_header_is_refused_without_quoting_it(key: str) -> None:
    # Found by this suite: such a key used to fail every request with an error (logged,
    # and passed to on_error) that quoted the whole Authorization header.
    with pytest.raises(ValueError, match="write_key must be printable ASCII") as raised:
        KlimeClient(key, "http://127.0.0.1:9")

    assert SECRET not in str(raised.value) + repr(raised.value)


def test_misuse_errors_never_quote_the_key() -> None:
    client = KlimeClient(SECRET, "http://127.0.0.1:9", send=False)
    bad_calls: list[Callable[[], object]] = [
        lambda: client.track("", user_id="u"),
        lambda: client.track("x"),
        lambda: client.identify(None),  # type: ignore[arg-type]
        lambda: client.track("x", {"k": object()}, user_id="u"),
        lambda: KlimeClient(SECRET, "ftp://nowhere"),
        lambda: KlimeClient(SECRET, "http://127.0.0.1:9", max_batch_size=1000),
    ]
    for call in bad_calls:
        with pytest.raises((TypeError, ValueError)) as raised:
            call()
        assert SECRET not in str(raised.value) + repr(raised.value)


def test_the_collector_never_logs_the_key(tmp_path: Path, capture: Capture) -> None:
    other = "sk_live_OTHER_7d2a_do_not_log"
    with Collector(db=tmp_path / "db.sqlite3", write_keys=[other]) as collector:
        KlimeClient(other, collector.url).track_sync("x", user_id="u")
        with pytest.raises(SendError):
            KlimeClient(SECRET, collector.url).track_sync("x", user_id="u")

    logged = capture.stream.getvalue()
    assert "POST /v1/batch" in logged  # its access lines, at debug level
    assert SECRET not in logged
    assert other not in logged


# -- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = [
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return cert, key


class HttpsSink:
    """An HTTPS server on loopback with a self-signed certificate, counting batches."""

    def __init__(self, cert: Path, key: Path) -> None:
        owner = self
        self.batches = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.batches += 1
                count = len(json.loads(body)["batch"])
                reply = json.dumps({"status": "ok", "accepted": count, "failed": 0}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def https_sink(self_signed: tuple[Path, Path]) -> Iterator[HttpsSink]:
    sink = HttpsSink(*self_signed)
    yield sink
    sink.close()


def test_an_untrusted_certificate_fails_with_an_ssl_error_reported_to_on_error(
    https_sink: HttpsSink, capture: Capture
) -> None:
    client = client_for(https_sink.url, capture)
    client.track("TLS", user_id="u1")

    assert client.flush(10) is False  # the event was lost, and reported

    assert https_sink.batches == 0
    assert client.stats().dropped == {"retries_exhausted": 1}
    assert len(capture.errors) == 1
    assert "SSLError" in str(capture.errors[0])
    assert "CERTIFICATE_VERIFY_FAILED" in str(capture.errors[0])
    client.shutdown()


def test_an_empty_curl_ca_bundle_does_not_turn_verification_off(
    https_sink: HttpsSink, capture: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A known trick for switching verification off in some older requests versions.
    monkeypatch.setenv("CURL_CA_BUNDLE", "")
    client = client_for(https_sink.url, capture)
    with pytest.raises(SendError, match="CERTIFICATE_VERIFY_FAILED"):
        client.track_sync("TLS", user_id="u1")
    assert https_sink.batches == 0


def test_a_certificate_is_trusted_through_the_standard_ca_bundle_variable(
    https_sink: HttpsSink,
    self_signed: tuple[Path, Path],
    capture: Capture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same server is fine once its certificate is trusted: the failure above is
    # verification at work, not some other broken handshake.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(self_signed[0]))
    client = client_for(https_sink.url, capture)

    assert client.track_sync("TLS", user_id="u1").accepted == 1
    assert https_sink.batches == 1


def test_no_option_turns_tls_verification_off() -> None:
    names = set(inspect.signature(KlimeClient).parameters)
    assert not names & {"verify", "verify_ssl", "ssl", "insecure", "cert", "ca_bundle"}
    with pytest.raises(TypeError):
        KlimeClient(SECRET, "https://127.0.0.1:9", verify=False)  # type: ignore[call-arg]


# -- every request is bounded -------------------------------------------------------------


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A port whose connections are accepted by the kernel and never answered."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_a_server_that_never_answers_costs_one_timeout_per_attempt(
    black_hole: str, capture: Capture
) -> None:
    client = client_for(black_hole, capture, timeout=0.3, retry_max_attempts=2)
    client.track("Hang", user_id="u1")

    started = time.monotonic()
    assert client.flush(10) is False  # lost after 2 attempts, and reported

    assert time.monotonic() - started < 2.0  # 2 x 0.3 s + one short backoff
    assert "ReadTimeout" in str(capture.errors[0])
    client.shutdown()


def test_every_request_carries_a_finite_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capture: Capture
) -> None:
    # Every socket the client's threads use gets a finite timeout before it blocks
    # (connect, then each read), on new and kept-alive connections alike. settimeout is
    # how urllib3 and ssl set them; None would mean "block forever".
    seen: list[Any] = []
    original = socket.socket.settimeout

    def spying(self: socket.socket, value: Any) -> None:
        if threading.current_thread().name in ("klime-sender", "MainThread"):
            seen.append(value)
        original(self, value)

    monkeypatch.setattr(socket.socket, "settimeout", spying)
    with Collector(db=tmp_path / "db.sqlite3", faults=FaultPlan(seed=3, error_rate=0.5)) as c:
        client = client_for(c.url, capture, retry_max_attempts=10, shutdown_timeout=5.0)
        for n in range(50):
            client.track("Bounded", {"n": n}, user_id="u1")
        client.flush(20)
        client.track_sync("Bounded", user_id="u1")
        client.track("Bounded", user_id="u1")
        client.shutdown()  # the exit path: attempts bounded by the deadline too

    assert len(seen) >= 5
    assert all(isinstance(t, (int, float)) and 0 < t <= 10.0 for t in seen), seen


# -- proxies ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_proxy_credentials_never_appear_in_logs_or_errors(
    capture: Capture, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    # Nothing listens at the proxy's address: every attempt fails and is logged (urllib3's
    # own debug lines included), retried and reported to on_error.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    password = "pr0xy_PASSWORD_do_not_log"
    monkeypatch.setenv(f"{scheme}_proxy", f"http://someone:{password}@127.0.0.1:{port}")
    exercise(client_for(f"{scheme}://klime.test", capture), capture)

    token = base64.b64encode(f"someone:{password}".encode()).decode()
    assert "ConnectionRefusedError" in capture.everything()  # it did go to the proxy
    for secret in (password, token, SECRET):
        assert secret not in capture.everything()


# -- the local collector --------------------------------------------------------------------


def test_the_collector_binds_loopback_by_default() -> None:
    with Collector() as collector:
        assert collector.url.startswith("http://127.0.0.1:")
    parser = argparse.ArgumentParser()
    collector_cli.add_arguments(parser)
    assert parser.parse_args([]).host == "127.0.0.1"


def test_the_collector_refuses_a_body_over_10_mb_without_reading_it(tmp_path: Path) -> None:
    with Collector(db=tmp_path / "db.sqlite3") as collector:
        with socket.create_connection(("127.0.0.1", collector.port), timeout=5) as sock:
            head = (
                b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                b"Content-Length: %d\r\n\r\n" % (10 * 1024 * 1024 + 1)
            )
            sock.sendall(head + b'{"batch":[')  # a sliver of the announced body
            answer = sock.recv(65536)  # comes without the other 10 MB being sent

        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b"Connection: close" in answer
        assert collector.stats().status_counts == {"413": 1}


def test_the_collector_compares_keys_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the collector calls hmac.compare_digest
    keys = ["first-key", "second-key", "third-key"]
    with Collector(db=tmp_path / "db.sqlite3", write_keys=keys) as collector:
        for key, expected in (("first-key", 1), ("third-key", 1), ("x", 0)):
            client = KlimeClient(key, collector.url, retry_max_attempts=1)
            try:
                accepted = client.track_sync("x", user_id="u").accepted
            except SendError:
                accepted = 0
            assert accepted == expected

    # Every request is compared against every key, match or not, with compare_digest.
    assert len(compared) == 3 * len(keys)
    assert [b for _a, b in compared] == [k.encode() for k in keys] * 3
