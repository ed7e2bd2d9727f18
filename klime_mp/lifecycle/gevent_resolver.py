"""gevent at exit: the exit flush must be able to resolve a host name.

Registered nowhere: ``forksafe``'s exit flush calls it first; it does nothing unless
gevent has patched ``socket``.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)


def prepare_exit_send() -> None:
    """Make the exit flush able to open a connection under gevent; never raises.

    Monkey-patched, ``socket.getaddrinfo`` is gevent's, and its default resolver runs
    every lookup (even of ``127.0.0.1``) in a native thread pool. Python 3.12 starts no
    thread at interpreter shutdown, so an exit flush that needed a new connection lost
    its events ("can't create new thread at interpreter shutdown": a Gunicorn gevent
    worker that had sent nothing yet). At exit, gevent's blocking resolver is the right
    one: the process has nothing else left to run while a lookup waits."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return
    try:
        if not monkey.is_module_patched("socket"):
            return
        import gevent  # type: ignore[import-untyped]  # no stubs; only this module uses it
        from gevent.resolver.blocking import Resolver  # type: ignore[import-untyped]

        # Set without reading hub.resolver first: reading builds the default one, whose
        # thread pool module cannot even be imported at shutdown on Python 3.9.
        hub = gevent.get_hub()
        hub.resolver = Resolver(hub)
    except Exception:  # an unexpected gevent: the flush still tries as it is
        logger.debug("Klime: could not switch gevent to its blocking resolver", exc_info=True)
