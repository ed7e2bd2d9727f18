"""ASGI servers whose workers die of a signal: hooked so that no line of set-up is needed.

uvicorn (``uvicorn app:app``, ``uvicorn --workers N``, Gunicorn's ``UvicornWorker``)
answers SIGTERM and SIGINT with a graceful shutdown (``Server.shutdown``: close the
listeners, wait for requests, run the ASGI lifespan shutdown), then restores the
handlers it found when it started and raises the signal again. Under ``--workers N``
and in a Gunicorn worker the handler it restores is the default one, so the process
dies of the signal: no ``atexit`` handler, no ``multiprocessing`` finalizer runs, and
whatever was queued is lost. ``KlimeMiddleware`` flushes in the lifespan shutdown, but
an app that only calls ``configure()`` has no middleware.

So when uvicorn is running in this process (``uvicorn`` in ``sys.modules``: its
workers import it before they import the app), ``Server.shutdown`` is wrapped once per
interpreter: after uvicorn's own shutdown, with the app's lifespan shutdown done and
no request left, every client of the process is shut down, as an exit hook would (a
flush is not enough with a spool: a dead sibling's events are sent then too). The
wait runs in the loop's executor. A process that carries on (a test serving the app
in-process) builds its clients afresh on the next call, as after the middleware's.

Hypercorn needs nothing: its workers return from their target after a graceful stop
and leave through the ordinary exit paths that ``lifecycle.forksafe`` hooks.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import Any, Callable

from klime_mp.lifecycle import forksafe

logger = logging.getLogger(__name__)

MIDDLEWARE_LINE = "app.add_middleware(KlimeMiddleware)  # or: app = KlimeMiddleware(app)"
_MARK = "_klime_flushes_after"  # set on the wrapper: hook once, also across forks


def hook_uvicorn() -> bool:
    """Wrap ``uvicorn.server.Server.shutdown``; True when it is (or already was)
    hooked. Warns once, naming the line to add, when this uvicorn has no hook point."""
    try:
        from uvicorn.server import Server
    except ImportError:  # a module named uvicorn that is not the server
        return _cannot("uvicorn.server.Server is not importable")
    shutdown = getattr(Server, "shutdown", None)
    if shutdown is None or not inspect.iscoroutinefunction(shutdown):
        return _cannot("this uvicorn has no async Server.shutdown")
    if getattr(shutdown, _MARK, False):
        return True
    Server.shutdown = _flushing_after(shutdown)  # type: ignore[method-assign]  # the hook
    return True


def _flushing_after(shutdown: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(shutdown)
    async def shutdown_then_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await shutdown(self, *args, **kwargs)
        finally:
            await _shut_down_clients()

    setattr(shutdown_then_send, _MARK, True)
    return shutdown_then_send


async def _shut_down_clients() -> None:
    loop = asyncio.get_running_loop()
    try:  # each client within its own shutdown_timeout
        await loop.run_in_executor(None, forksafe.shut_down_owned, None)
    except Exception:  # uvicorn must still finish its shutdown
        logger.exception("Klime: the flush after uvicorn's shutdown failed")


def _cannot(why: str) -> bool:
    logger.warning(
        "Klime: cannot hook uvicorn's shutdown (%s): events queued when a worker stops "
        "may be lost. Add the middleware: %s",
        why,
        MIDDLEWARE_LINE,
    )
    return False
