"""Per-request flush for WSGI apps, like the Elixir SDK's ``Klime.Plug``.

Delivery does not need it: each process sends in the background and flushes when it
exits (``klime_mp.gunicorn_conf``, ``klime_mp.uwsgi``). Use it when a request's events
must have reached Klime before the worker takes its next request: hosts that freeze
or kill a process between requests, or a uWSGI without threads.

The cost: the flush runs when the server closes the response, after it has written
the body, so the client gets its answer first; but the worker (or, in a threaded
worker, the thread) stays busy for about one round trip to Klime per request that
tracked something, and a keep-alive client waits that long before its next request
on the same connection is read. docs/servers.md has measured numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Callable

from klime_mp.client import KlimeClient
from klime_mp.lifecycle.forksafe import flush_process
from klime_mp.options import REQUEST_FLUSH_TIMEOUT_S

DEFAULT_TIMEOUT_S = REQUEST_FLUSH_TIMEOUT_S

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class FlushMiddleware:
    """Wrap a WSGI app so every request ends with a flush.

    ``client``: the client to flush; by default every client of the current process
    (module-level calls and ``KlimeClient`` instances alike). ``timeout``: the longest
    a request waits for the flush; events not sent by then stay queued and go out in
    the background as usual, so nothing is lost by a short timeout."""

    def __init__(
        self,
        app: WSGIApp,
        client: KlimeClient | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI callable, got {type(app).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.app = app
        self._client = client
        self._timeout = float(timeout)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self.flush()  # events tracked before the error still go out now
            raise
        return _FlushOnClose(body, self.flush)

    def flush(self) -> bool:
        """Flush now; True when everything queued was sent within the timeout."""
        if self._client is not None:
            return self._client.flush(self._timeout)
        return flush_process(self._timeout)


class _FlushOnClose:
    """The app's response iterable, flushed after the server closes it (PEP 3333:
    the server calls ``close()`` once it has sent the body, even on errors)."""

    def __init__(self, body: Iterable[bytes], flush: Callable[[], bool]) -> None:
        self._body = body
        self._flush = flush

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._flush()


__all__ = ["DEFAULT_TIMEOUT_S", "FlushMiddleware", "flush_process"]
