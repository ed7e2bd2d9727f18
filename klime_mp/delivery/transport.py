"""One HTTP attempt: POST /v1/batch over this process's pooled urllib3 connection.

``Transport.post`` returns what happened as a value (``Attempt``) and never raises for
a network failure; ``delivery`` judges attempts and decides on retries.

urllib3 does the HTTP: one connection pool per transport (per client per process) that
keeps one connection alive, notices a connection the server dropped while it was idle,
verifies TLS and goes through ``http://`` and ``https://`` proxies (CONNECT tunnels,
credentials). Its own ``Retry`` is off: a retry waits in ``delivery``, where shutdown
can cut the wait short. What stays here is what urllib3 leaves to its caller: the CA
bundle and proxy the environment names (read once per transport: ``requests`` scans
the environment on every request), the request built once, a free resend when a
reused connection turns out stale, and error texts without credentials.

What urllib3 costs per POST against ``http.client`` is measured in
docs/performance.md (``bench/transport_cpu.py``).
"""

from __future__ import annotations

import base64
import encodings.idna  # noqa: F401  # see the note below
import http.client
import os
import queue
import ssl
import time
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError, ProxyError
from urllib3.util.connection import is_connection_dropped
from urllib3.util.ssl_ import create_urllib3_context

from klime_mp._version import __version__
from klime_mp.delivery.failures import READ_TIMEOUT, address_of, chain_of, kind_of, plain
from klime_mp.options import Options
from klime_mp.wire import BATCH_PATH

# Why the idna import above: socket.getaddrinfo(), urllib3's host check and ssl's
# server_hostname encode a host name with the "idna" codec, imported on first use. A
# freshly forked child whose first use happens in its sender thread failed with
# "LookupError: unknown encoding: idna", or waited forever on an import lock another
# thread held at the fork. So everything the sender needs is imported with this module
# (tests/test_transport_connection.py checks that sending imports nothing).

USER_AGENT = f"klime_mp/{__version__}"
# compression="gzip": level 1. On 100-event batches (bench/features.py) it gets 4.8x to
# 8.7x at 0.5-0.8 µs of CPU per event; level 6 gets 5.7x to 9.3x for 2 to 3 times the
# CPU, which the app's own process pays (the sender shares its GIL).
GZIP_LEVEL = 1
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around the deflate stream
# What ends an attempt. urllib3 wraps socket, TLS and http.client errors in its own;
# ValueError: a malformed URL or header is refused with one before anything is sent.
_FAILURES = (HTTPError, OSError, http.client.HTTPException, ValueError)
# A kept-alive connection the server closed while idle, after urllib3's check, fails
# like this on the first request written to it (RemoteDisconnected: no byte of an
# answer came back; SSLEOFError: the same through TLS). That is not a failed attempt:
# the request is written once more, on a new connection.
_STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, ssl.SSLEOFError)
# Off: urllib3 would sleep between retries inside urlopen, where shutdown cannot wake it.
_NO_RETRIES = urllib3.Retry(total=False, redirect=False, raise_on_status=False)
# The variables that name a CA bundle, in order; an empty one is skipped, so none of
# them can turn verification off (an empty CURL_CA_BUNDLE did, in old requests).
_CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


def _certifi_bundle() -> str | None:
    try:
        import certifi
    except ImportError:  # the system's trust store is used instead
        return None
    return certifi.where()  # now: where() imports importlib.resources parts lazily


_CERTIFI_BUNDLE = _certifi_bundle()


def ca_bundle() -> str | None:
    """The CA bundle (file or directory) to trust: the first of ``_CA_VARIABLES`` that
    is set, else certifi's when it is installed, else the system's (None)."""
    for name in _CA_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    return _CERTIFI_BUNDLE


# One context per bundle per process tree: building one reads the whole bundle (ms of
# CPU), and a context is safe to reuse for new connections after a fork.
_tls_contexts: dict[str | None, ssl.SSLContext] = {}


def tls_context(bundle: str | None) -> ssl.SSLContext:
    """A verifying context as this urllib3 version expects it: 2.x lets ``ssl`` check
    the host name, 1.26 turns that off in the context and checks the name itself (with
    ``ssl``'s check on, 1.26 fails on an IP address)."""
    context = _tls_contexts.get(bundle)
    if context is None:
        context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
        if bundle is None:  # the system's store, where OpenSSL looks for it
            context.load_default_certs()
        elif os.path.isdir(bundle):
            context.load_verify_locations(capath=bundle)
        else:
            context.load_verify_locations(cafile=bundle)
        context = _tls_contexts.setdefault(bundle, context)
    return context


@dataclass(frozen=True)
class Attempt:
    """What one POST came back with (or why it did not)."""

    status: int | None
    content: bytes = b""
    retry_after: str | None = None
    error: str | None = None  # what went wrong, already scrubbed of credentials
    # For people: what went wrong in plain words ("connection refused to 127.0.0.1:8800",
    # "HTTP 503 from https://i.klime.com/v1/batch"); None for a 200.
    cause: str | None = field(default=None, compare=False)
    # The request went out whole and no answer came back (a read timeout): the server
    # may have stored the batch.
    answer_unknown: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class _Proxy:
    url: str  # scheme://host:port, the credentials taken out
    headers: dict[str, str]  # Proxy-Authorization, when the URL had credentials
    secrets: tuple[str, ...]


def _proxy_for(options: Options) -> _Proxy | None:
    """The proxy HTTPS_PROXY / HTTP_PROXY / ALL_PROXY name (any case) for the endpoint,
    unless NO_PROXY exempts its host; None to connect directly."""
    parts = urllib.parse.urlsplit(options.endpoint)
    proxies = urllib.request.getproxies()
    setting = proxies.get(parts.scheme) or proxies.get("all")
    if not setting or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    try:
        url = urllib.parse.urlsplit(setting if "://" in setting else f"http://{setting}")
        usable = url.hostname is not None and url.scheme in ("http", "https")
        url.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError:
        usable = False
    if not usable:  # never quoted: the setting may hold a password
        options.logger.warning(
            "Klime: ignoring the proxy setting for %s: only http:// and https:// proxies "
            "with a valid host and port are supported",
            parts.scheme,
        )
        return None
    address = url.netloc.rpartition("@")[2]
    if url.username is None:
        return _Proxy(f"{url.scheme}://{address}", {}, ())
    user = urllib.parse.unquote(url.username)
    password = urllib.parse.unquote(url.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    userinfo = url.netloc.rpartition("@")[0]
    secrets = tuple(s for s in (token, userinfo, url.password, password) if s)
    return _Proxy(f"{url.scheme}://{address}", {"Proxy-Authorization": f"Basic {token}"}, secrets)


class _Newest:
    """Stands in for a pool's connection class and remembers the last connection it
    made. With one connection per pool and one thread using it, that is the only one
    that can be open, also while a request is in flight: not in the pool's queue then,
    so ``abandon`` would not find it there."""

    def __init__(self, cls: Any) -> None:
        self._cls = cls
        self.conn: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.conn = self._cls(*args, **kwargs)
        return self.conn


class Transport:
    """One per client per process. Only the sending thread (or a sync caller holding
    the worker's send lock) uses it, so the pool never has two requests at once."""

    def __init__(self, options: Options) -> None:
        self._endpoint = options.endpoint
        https = options.endpoint.startswith("https:")
        # The environment is read once, here: not on every attempt.
        self._proxy = _proxy_for(options)
        proxy_https = self._proxy is not None and self._proxy.url.startswith("https:")
        self._context = tls_context(ca_bundle()) if https or proxy_https else None
        path = urllib.parse.urlsplit(options.endpoint).path
        # Through a forwarding proxy (plain http), the request line has the absolute URL.
        forwarded = self._proxy is not None and not https
        self._target = f"{options.endpoint if forwarded else path}{BATCH_PATH}"
        self._headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {options.write_key}",
            "User-Agent": USER_AGENT,
        }
        # Never in an error text: the key, and the proxy's credentials in any form.
        secrets = (options.write_key, *(self._proxy.secrets if self._proxy else ()))
        self._secrets = sorted(secrets, key=len, reverse=True)  # a password within userinfo
        self._gzip = options.compression == "gzip"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._timeout = urllib3.Timeout(connect=options.timeout, read=options.timeout)
        self._url = self._scrub(f"{options.endpoint}{BATCH_PATH}")
        self._address = address_of(self._proxy.url if self._proxy else options.endpoint)
        if self._proxy is not None:
            self._address = f"the proxy {self._address}"
        self._debug = options.logger if options.debug else None
        self._pool: urllib3.HTTPConnectionPool | None = None
        self._newest: _Newest | None = None

    def close(self) -> None:
        """Close the connection (a normal close, in the owning process). A later
        ``post`` opens a new pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def abandon(self) -> None:
        """After fork, in the child: close this process's copy of the parent's socket.

        Only this process's file descriptor is released: shutdown() or a TLS
        close_notify (what a normal close may send) would end the parent's connection
        too. Nothing here takes a lock: a parent thread may have held the pool queue's
        lock at the fork, and then it stays held forever in the child."""
        pool, self._pool = self._pool, None
        newest, self._newest = self._newest, None
        if pool is None:
            return
        idle = pool.pool
        conns = [] if idle is None else list(idle.queue)  # the list under the lock
        if newest is not None:
            conns.append(newest.conn)
        for conn in conns:
            sock = getattr(conn, "sock", None)
            sock = getattr(sock, "socket", sock)  # TLS inside TLS: the outer socket
            if sock is not None and sock.fileno() >= 0:
                os.close(sock.detach())  # even while a response reader refers to it
        if idle is not None:
            # New locks and an empty list: whatever closes this pool later in the child
            # cannot block on a lock a parent thread held at the fork.
            type(idle).__init__(idle, idle.maxsize)

    # -- one attempt -----------------------------------------------------------------

    def post(self, body: bytes, timeout: float, events: int = 0) -> Attempt:
        """One POST of ``body`` (``events`` in it, for the debug log) with ``timeout``
        seconds to connect and to read."""
        if self._gzip:  # again on a retry: ~70 µs a batch, and no 10 MB body kept
            deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
            body = deflate.compress(body) + deflate.flush()
        if self._debug is None:
            return self._post(body, timeout)
        started = time.perf_counter()
        attempt = self._post(body, timeout)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        outcome = attempt.status if attempt.status is not None else attempt.cause
        self._debug.debug(
            "Klime: POST %s: %s (%d events, %d bytes, %.1f ms)",
            self._url,
            outcome,
            events,
            len(body),
            elapsed_ms,
        )
        return attempt

    def _post(self, body: bytes, timeout: float) -> Attempt:
        try:
            pool = self._pool or self._open_pool()
            if _idle_connection_alive(pool):
                try:
                    return self._exchange(pool, body, timeout)
                except _FAILURES as exc:
                    if not isinstance(chain_of(exc)[-1], _STALE):
                        raise  # see _STALE; a second failure on a new one counts
            return self._exchange(pool, body, timeout)
        except _FAILURES as exc:
            chain = chain_of(exc)
            return Attempt(
                status=None,
                error=self._describe(exc),
                cause=self._scrub(plain(chain, self._address, timeout)),
                answer_unknown=kind_of(chain) == READ_TIMEOUT,
            )

    def _exchange(self, pool: urllib3.HTTPConnectionPool, body: bytes, timeout: float) -> Attempt:
        if timeout != self._timeout.connect_timeout:
            self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        reply = pool.urlopen(
            "POST",
            self._target,
            body=body,
            headers=self._headers,
            retries=_NO_RETRIES,
            redirect=False,
            assert_same_host=False,  # through a forwarding proxy the URL names another host
            timeout=self._timeout,
            preload_content=True,  # all of it: the connection goes back for the next one
        )
        cause = None if reply.status == 200 else f"HTTP {reply.status} from {self._url}"
        return Attempt(reply.status, reply.data, reply.headers.get("Retry-After"), cause=cause)

    def _open_pool(self) -> urllib3.HTTPConnectionPool:
        settings: dict[str, Any] = {
            "maxsize": 1,  # one kept-alive connection; only one thread sends at a time
            "block": False,
            "retries": _NO_RETRIES,
            "timeout": self._timeout,
        }
        if self._context is not None:
            settings.update(ssl_context=self._context, cert_reqs="CERT_REQUIRED")
        if self._proxy is None:
            pool = urllib3.connection_from_url(self._endpoint, **settings)
        else:
            manager = urllib3.ProxyManager(
                self._proxy.url,
                proxy_headers=self._proxy.headers,
                proxy_ssl_context=self._context,  # the proxy's certificate is verified too
                **settings,
            )
            pool = manager.connection_from_url(self._endpoint)
        # urllib3 empties the queue it made into a pool at interpreter exit (a
        # weakref.finalize), before our exit flush runs, which then paid for a new
        # connection (a TLS handshake per exiting process). A queue of ours, which only
        # close() empties, holds the connection instead.
        pool.pool = queue.LifoQueue(1)
        pool.pool.put(None)  # as urllib3 fills it: None means "open a new one"
        self._newest = _Newest(pool.ConnectionCls)
        pool.ConnectionCls = self._newest  # type: ignore[assignment]  # called like the class
        self._pool = pool
        return pool

    def _describe(self, exc: BaseException) -> str:
        """The kind and the underlying error, e.g. ``ConnectionError
        (ConnectionRefusedError: [Errno 111] Connection refused)``, credentials taken out."""
        chain = chain_of(exc)
        root = chain[-1]
        via = "proxy, " if any(isinstance(e, ProxyError) for e in chain) else ""
        return self._scrub(f"{kind_of(chain)} ({via}{type(root).__name__}: {root})")

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text


def _idle_connection_alive(pool: urllib3.HTTPConnectionPool) -> bool:
    """Whether the next request goes out on a reused connection that looks alive (the
    check urllib3 makes too). Read without the queue's lock: only one thread sends."""
    idle = pool.pool
    conn = idle.queue[-1] if idle is not None and idle.queue else None
    return conn is not None and not is_connection_dropped(conn)
