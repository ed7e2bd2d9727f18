"""Hosts with exit paths of their own, found and hooked without any configuration.

Some hosts end their processes where neither ``atexit`` nor ``multiprocessing``'s
finalizers run, but announce it first through a hook of their own:

* uWSGI workers leave through ``uwsgi.atexit`` (Python's ``atexit`` is not dependable
  there); ``klime_mp.uwsgi`` chains onto it. The ``uwsgi`` module exists only inside a
  uWSGI process, which registers it in ``sys.modules`` before loading any app.
* Celery's prefork children (billiard) leave through ``os._exit`` inside the process
  target, so billiard never reaches the finalizers; Celery sends
  ``worker_process_shutdown`` in the child just before. ``klime_mp.celery`` connects it.

``install_for_process`` runs on a client's first use in each process (from
``forksafe``) and from ``configure()``. It only looks at ``sys.modules``: nothing is
imported for a host that is not running, and the check costs a dict lookup.

One host needs a change at exit instead: gevent (``prepare_exit_send``).
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

_installed_in: set[int] = set()


def install_for_process(pid: int) -> None:
    """Hook this process's host, once per process; never raises."""
    if pid in _installed_in:
        return
    _installed_in.add(pid)
    try:
        if "uwsgi" in sys.modules:
            from klime_mp import uwsgi  # imported here: it imports the client modules

            uwsgi.install()
        if "celery" in sys.modules:
            from klime_mp import celery

            celery.connect()
    except Exception:  # a host's oddity must not fail the caller's track()
        logger.warning("Klime: could not hook the host's exit path", exc_info=True)


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
