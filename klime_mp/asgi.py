"""ASGI: send this process's events at lifespan shutdown, and optionally after each request.

Why lifespan: uvicorn (``uvicorn --workers N``, Gunicorn's ``UvicornWorker``) answers
SIGTERM with a graceful shutdown that ends in the ASGI lifespan ``shutdown``; then it
restores the default SIGTERM action and raises the signal again, so the process dies of
it and no ``atexit`` handler runs. The lifespan shutdown is the last Python code a
worker runs: ``KlimeMiddleware`` flushes there, before the app's
``lifespan.shutdown.complete`` reaches the server.

    app = KlimeMiddleware(app)              # any ASGI app
    app.add_middleware(KlimeMiddleware)     # FastAPI / Starlette

Every flush waits in a thread (the loop's default executor): the event loop keeps
serving while the sender delivers. An app that does not speak lifespan (it raises or
returns on a ``lifespan`` scope) still gets the shutdown flush: the middleware then
answers the server's lifespan messages itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, MutableMapping
from typing import Any, Callable

from klime_mp import default
from klime_mp.client import KlimeClient
from klime_mp.lifecycle import forksafe
from klime_mp.lifecycle.forksafe import flush_process
from klime_mp.options import REQUEST_FLUSH_TIMEOUT_S as DEFAULT_TIMEOUT_S

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STARTUP = "lifespan.startup"
SHUTDOWN = "lifespan.shutdown"
SHUTDOWN_DONE = ("lifespan.shutdown.complete", "lifespan.shutdown.failed")


class KlimeMiddleware:
    """Wrap an ASGI app: shut down this process's clients at lifespan shutdown, as an
    exit hook would (and flush after each HTTP request if ``flush_after_request``).
    Every message passes through unchanged.

    ``client``: the client to flush after a request; by default every client of this
    process. The lifespan shutdown covers every client of the process either way.
    ``timeout``: the longest one flush waits; by default, at shutdown, the client's
    ``shutdown_timeout`` (the default client's, when flushing them all), and after a
    request 5 s. Events not sent in time stay queued (after a request) or are reported,
    or left in the spool for the next process (at shutdown)."""

    def __init__(
        self,
        app: ASGIApp,
        client: KlimeClient | None = None,
        timeout: float | None = None,
        flush_after_request: bool = False,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be an ASGI callable, got {type(app).__name__}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not isinstance(flush_after_request, bool):
            raise TypeError(f"flush_after_request must be a bool, got {flush_after_request!r}")
        self.app = app
        self._client = client
        self._timeout = None if timeout is None else float(timeout)
        self._flush_after_request = flush_after_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif kind == "http" and self._flush_after_request:
            try:
                await self.app(scope, receive, send)
            finally:
                await self.flush(self._timeout or DEFAULT_TIMEOUT_S)
        else:
            await self.app(scope, receive, send)

    async def flush(self, timeout: float | None = None) -> bool:
        """Flush in a thread; True when everything queued was sent within ``timeout``
        (None: the middleware's ``timeout``, else the client's ``shutdown_timeout``)."""
        limit = timeout if timeout is not None else self._timeout or self._shutdown_timeout()
        loop = asyncio.get_running_loop()
        if self._client is not None:
            return await loop.run_in_executor(None, self._client.flush, limit)
        return await loop.run_in_executor(None, flush_process, limit)

    def _shutdown_timeout(self) -> float:
        client = self._client if self._client is not None else default.current()
        return DEFAULT_TIMEOUT_S if client is None else client.options.shutdown_timeout

    async def _shutdown_flush(self) -> None:
        # The lifespan shutdown is a uvicorn worker's last Python code: shut down every
        # client of the process as an exit hook would (a flush is not enough: with a
        # spool, what a SIGKILLed sibling left on disk is sent at shutdown, and no one
        # else may be left to send it). What cannot be sent in time is reported by the
        # clients themselves (on_error, the log) or stays in the spool. A process that
        # carries on (a test's TestClient) builds its clients afresh on the next call.
        limit = self._timeout or self._shutdown_timeout()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, forksafe.shut_down_owned, limit)
        except Exception:  # the server must still hear that shutdown completed
            logger.exception("Klime: the lifespan shutdown flush failed")

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        received: list[Message] = []
        answered = False  # the app sent a lifespan message: it speaks the protocol

        async def app_receive() -> Message:
            message = await receive()
            received.append(message)
            return message

        async def app_send(message: Message) -> None:
            nonlocal answered
            answered = True
            if message.get("type") in SHUTDOWN_DONE:
                await self._shutdown_flush()  # after the app's own shutdown code
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except Exception:
            if answered:
                raise  # a real startup or shutdown failure of the app: the server's call
            # As uvicorn's "lifespan unsupported" case: the app raised before answering.
            logger.debug("Klime: the app does not support lifespan; handling it", exc_info=True)
        if not answered:
            await _serve_lifespan(received, receive, send, self._shutdown_flush)


async def _serve_lifespan(
    received: list[Message], receive: Receive, send: Send, on_shutdown: Callable[[], Any]
) -> None:
    """Answer the lifespan protocol for an app that does not: start at once, flush at
    shutdown. ``received``: messages the app already took from ``receive``."""
    pending = list(received)
    while True:
        message = pending.pop(0) if pending else await receive()
        kind = message.get("type")
        if kind == STARTUP:
            await send({"type": "lifespan.startup.complete"})
        elif kind == SHUTDOWN:
            await on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
