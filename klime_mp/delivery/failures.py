"""What went wrong with one HTTP attempt: its kind (for ``Attempt.error``, the text
``on_error`` gets) and the same in plain words (``Attempt.cause``, what the log and
``stats().last_error`` say: "connection refused to 127.0.0.1:8800")."""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.parse

from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)

# Error kinds, named as requests named them: log alerts written for earlier versions match.
CONNECT_TIMEOUT, READ_TIMEOUT = "ConnectTimeout", "ReadTimeout"
SSL, CONNECTION, PROTOCOL = "SSLError", "ConnectionError", "ProtocolError"


def chain_of(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors urllib3 wrapped in it, outermost first, down to the one
    that says what happened (a refused connection, a TLS alert)."""
    chain = [exc]
    while isinstance(exc, HTTPError) and len(chain) < 8:
        inner = getattr(exc, "reason", None)  # MaxRetryError
        if not isinstance(inner, BaseException):
            inner = next((a for a in exc.args if isinstance(a, BaseException)), None)
        # urllib3 2 raises "from" the cause; 1.26 raises inside the except block.
        inner = inner or exc.__cause__ or exc.__context__
        if inner is None:
            break
        chain.append(inner)
        exc = inner
    return chain


def address_of(url: str) -> str:
    """host:port of ``url``, without any credentials in it."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def plain(chain: list[BaseException], address: str, timeout: float) -> str:
    """What went wrong, in the words an operator would use."""
    root = chain[-1]
    kind = kind_of(chain)
    if kind == READ_TIMEOUT:
        return f"no answer from {address} within {timeout:g} s (the request was sent)"
    if kind == CONNECT_TIMEOUT:
        return f"no connection to {address} within {timeout:g} s"
    if kind == SSL:
        if isinstance(root, ssl.SSLCertVerificationError):
            return f"TLS: certificate verify failed for {address}: {root.verify_message}"
        return f"TLS: {getattr(root, 'reason', None) or root} with {address}"
    if isinstance(root, ConnectionRefusedError):
        return f"connection refused to {address}"
    if isinstance(root, socket.gaierror):
        return f"cannot resolve the host of {address} ({root.strerror})"
    if isinstance(root, (ConnectionResetError, http.client.RemoteDisconnected)):
        return f"{address} closed the connection without an answer"
    return f"{type(root).__name__} with {address}: {root}"


def kind_of(chain: list[BaseException]) -> str:
    for exc in chain:
        if isinstance(exc, ReadTimeoutError):
            return READ_TIMEOUT
        if isinstance(exc, ConnectTimeoutError) and not isinstance(exc, NewConnectionError):
            return CONNECT_TIMEOUT  # NewConnectionError subclasses it, but is a refusal
        if isinstance(exc, (SSLError, ssl.SSLError)):
            return SSL
    root = chain[-1]
    if isinstance(root, (socket.timeout, TimeoutError)):  # urllib3 says where, above
        return READ_TIMEOUT
    return CONNECTION if isinstance(root, OSError) else PROTOCOL
