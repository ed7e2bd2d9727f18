"""One HTTP attempt: POST /v1/batch over this process's kept-alive connection.

``Transport.post`` returns what happened as a value (``Attempt``) and never raises for
a network failure; ``delivery`` judges attempts and decides on retries.

Built on the standard library's ``http.client`` (opening the connection, proxies and
TLS live in ``connection``), not ``requests``: on the same keep-alive connection a
20-event POST cost ~830 µs of CPU through requests and ~144 µs here, and a refused
connection ~440 µs against ~40 µs (requests scans the environment for proxies on every
attempt). On a 2-core Gunicorn box that CPU is taken from the app.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass

from klime_mp import connection
from klime_mp._version import __version__
from klime_mp.options import Options

USER_AGENT = f"klime_mp/{__version__}"
# Named as requests named them, so log alerts written for earlier versions still match.
_CONNECT_TIMEOUT, _READ_TIMEOUT = "ConnectTimeout", "ReadTimeout"
# An exception that ends an attempt (ssl.SSLError and socket.timeout are OSErrors).
# ValueError: http.client refuses a malformed URL or header with one.
_FAILURES = (OSError, http.client.HTTPException, ValueError)
# A kept-alive connection the server closed while it was idle fails like this on the
# first request written to it (RemoteDisconnected: no byte of an answer came back).
# (SSLEOFError: the same through TLS). That is normal, not a failed attempt: the request
# is written once more, on a new connection.
_STALE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, ssl.SSLEOFError)


@dataclass(frozen=True)
class Attempt:
    """What one POST came back with (or why it did not)."""

    status: int | None
    content: bytes = b""
    retry_after: str | None = None
    error: str | None = None  # what went wrong, already scrubbed of credentials


class Transport:
    """One per client per process. Only the sending thread (or a sync caller holding
    the worker's send lock) uses it, so the connection is never used concurrently."""

    def __init__(self, options: Options) -> None:
        self._options = options
        # Proxy and CA variables are read once, here: not on every attempt.
        self._route = connection.route_for(options)
        self._ca_bundle = connection.ca_bundle()
        self._headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {options.write_key}",
            "User-Agent": USER_AGENT,
        }
        if self._route.tunnel is None:  # through a CONNECT tunnel they go to the proxy
            self._headers.update(self._route.proxy_headers)
        # Never in an error text: the key, and the proxy's credentials in either form.
        self._secrets = [options.write_key, *self._route.secrets]
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Close the connection (a normal close, in the owning process)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def abandon(self) -> None:
        """After fork, in the child: close this process's copy of the parent's socket.
        close() only releases this process's file descriptor; shutdown() (or a TLS
        close_notify) would end the parent's connection too. Nothing that takes a lock
        runs here: a parent thread may have held it at the fork, forever in the child."""
        conn, self._conn = self._conn, None
        sock = conn.sock if conn is not None else None
        if sock is not None:
            sock.close()

    # -- one attempt -----------------------------------------------------------------

    def post(self, body: bytes, timeout: float) -> Attempt:
        """One POST of ``body`` with ``timeout`` seconds to connect and to read."""
        if self._conn is not None and connection.closed_while_idle(self._conn):
            self.close()
        try:
            if self._conn is not None:
                try:
                    return self._exchange(body, timeout)
                except _STALE:
                    self.close()  # see _STALE; a second failure on a new one counts
            return self._exchange(body, timeout)
        except _FAILURES as exc:
            error = self._describe(exc, connecting=self._conn is None)
            self.close()  # never reuse a connection in an unknown state
            return Attempt(status=None, error=error)

    def _exchange(self, body: bytes, timeout: float) -> Attempt:
        conn = self._conn
        if conn is None:
            conn = self._conn = connection.open_connection(self._route, self._ca_bundle, timeout)
        else:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        conn.request("POST", self._route.target, body, self._headers)
        reply = conn.getresponse()
        content = reply.read()  # all of it: the connection is reused for the next one
        if reply.will_close:  # "Connection: close", or HTTP/1.0
            self.close()
        return Attempt(reply.status, content, reply.getheader("Retry-After"))

    def _describe(self, exc: BaseException, *, connecting: bool) -> str:
        """The error's kind and type, e.g. ``ConnectionError (ConnectionRefusedError:
        [Errno 111] Connection refused)``, with any credential taken out."""
        if isinstance(exc, (socket.timeout, TimeoutError)):
            kind = _CONNECT_TIMEOUT if connecting else _READ_TIMEOUT
        elif isinstance(exc, ssl.SSLError):
            kind = "SSLError"
        elif isinstance(exc, OSError):
            kind = "ConnectionError"
        else:
            kind = "ProtocolError"
        text = f"{kind} ({type(exc).__name__}: {exc})"
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text
