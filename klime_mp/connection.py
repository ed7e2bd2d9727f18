"""Where the connection to Klime goes and how it is opened: the proxy route, TLS
verification, and whether an idle kept-alive socket can still be used.

Proxy and CA settings are read once per transport (``route_for``, ``ca_bundle``), never
per request. TLS verification is always on; no setting turns it off.
"""

from __future__ import annotations

import base64
import encodings.idna  # noqa: F401  # see below
import http.client
import os
import select
import socket
import ssl
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from klime_mp.options import Options

# Why the idna import above: socket.getaddrinfo() and ssl's server_hostname encode a
# host name with the "idna" codec, imported on first use. A freshly forked child whose
# first use happens in its sender thread failed with "LookupError: unknown encoding:
# idna", or waited forever on an import lock another thread held at the fork (seen
# with netrc under requests). So everything the sender needs is imported here.


def _certifi_bundle() -> str | None:
    try:
        import certifi
    except ImportError:  # the system's trust store is used instead
        return None
    return certifi.where()  # now: where() imports importlib.resources parts lazily


_CERTIFI_BUNDLE = _certifi_bundle()


@dataclass(frozen=True)
class Route:
    """Where the connection goes and what the request line says; fixed per Transport."""

    https: bool
    host: str  # the server, or the proxy
    port: int
    target: str  # the path, or the absolute URL through a plain-http proxy
    tunnel: tuple[str, int] | None = None  # CONNECT host:port through a proxy (https)
    proxy_headers: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()  # the proxy's password and Basic token


def route_for(options: Options) -> Route:
    """Direct, or through the proxy that HTTPS_PROXY / HTTP_PROXY / ALL_PROXY name
    (any case) unless NO_PROXY exempts the host: what requests did, read once."""
    parts = urllib.parse.urlsplit(options.endpoint)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    direct = Route(https, host, port, f"{parts.path}/v1/batch")
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(host):
        return direct
    try:
        url = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        proxy_host, proxy_port = url.hostname, url.port or 80
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        proxy_host = None
    if proxy_host is None or url.scheme != "http":
        options.logger.warning(
            "Klime: ignoring the proxy setting for %s: only http:// proxies are supported",
            parts.scheme,
        )
        return direct
    headers: dict[str, str] = {}
    secrets: tuple[str, ...] = ()
    if url.username is not None:
        user = urllib.parse.unquote(url.username)
        password = urllib.parse.unquote(url.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Proxy-Authorization"] = f"Basic {token}"
        secrets = (token, password) if password else (token,)
    if https:
        tunnel = (host, port)
        return Route(True, proxy_host, proxy_port, direct.target, tunnel, headers, secrets)
    target = f"{options.endpoint}/v1/batch"  # the absolute URL, as a proxy expects
    return Route(False, proxy_host, proxy_port, target, None, headers, secrets)


def ca_bundle() -> str | None:
    """The CA bundle (file or directory) to trust: REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE
    as with requests, else certifi's, else the system's (None). An empty variable is
    ignored: nothing turns verification off."""
    env = os.environ
    return env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE") or _CERTIFI_BUNDLE


# One context per bundle per process tree: building one reads the whole bundle (ms of
# CPU), and a context is safe to reuse for new connections after a fork.
_tls_contexts: dict[str | None, ssl.SSLContext] = {}


def tls_context(bundle: str | None) -> ssl.SSLContext:
    context = _tls_contexts.get(bundle)
    if context is None:
        if bundle is not None and os.path.isdir(bundle):
            context = ssl.create_default_context(capath=bundle)
        else:
            context = ssl.create_default_context(cafile=bundle)
        context.verify_mode = ssl.CERT_REQUIRED  # the defaults; stated, never changed
        context.check_hostname = True
        context = _tls_contexts.setdefault(bundle, context)
    return context


def closed_while_idle(conn: http.client.HTTPConnection) -> bool:
    """True when an idle kept-alive connection cannot carry the next request: its
    socket is readable, so the server closed it (or sent something unasked, a 408)."""
    return conn.sock is None or _readable(conn.sock)


def _readable(sock: socket.socket) -> bool:
    if hasattr(select, "poll"):  # select() fails on descriptors over 1023
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


def open_connection(
    route: Route, ca_bundle: str | None, timeout: float
) -> http.client.HTTPConnection:
    """A new connection along ``route``, connected (and TLS-verified) now."""
    conn: http.client.HTTPConnection
    if route.https:
        context = tls_context(ca_bundle)
        conn = http.client.HTTPSConnection(route.host, route.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(route.host, route.port, timeout=timeout)
    if route.tunnel is not None:
        conn.set_tunnel(*route.tunnel, headers=route.proxy_headers)
    try:
        conn.connect()
    except BaseException:
        conn.close()  # a TLS handshake that failed leaves the plain socket open
        raise
    return conn
