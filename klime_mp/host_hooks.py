"""Hosts with exit paths of their own, found and hooked without any configuration.

Some hosts end their processes where neither ``atexit`` nor ``multiprocessing``'s
finalizers run, but announce it first through a hook of their own:

* uWSGI workers leave through ``uwsgi.atexit`` (Python's ``atexit`` is not dependable
  there); ``klime_mp.uwsgi`` chains onto it. The ``uwsgi`` module exists only inside a
  uWSGI process, which registers it in ``sys.modules`` before loading any app.
* Celery's prefork children (billiard) leave through ``os._exit`` inside the process
  target, so billiard never reaches the finalizers; Celery sends
  ``worker_process_shutdown`` in the child just before. ``klime_mp.celery`` connects it.
* uvicorn's workers die of the signal they were stopped with, after the server's
  graceful shutdown; ``klime_mp.asgi_servers`` sends what is queued at its end.

Set up from above, like sentry-python's integrations: the client module registers
``install_for_process`` with the fork registry (which runs it on a client's first use
in each process) and ``configure()`` calls it, so the registry never imports an
integration. It only looks at ``sys.modules``: nothing is imported for a host that is
not running, and the check costs a set lookup.
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
            from klime_mp import uwsgi  # imported here: importing it installs it

            uwsgi.install()
        if "celery" in sys.modules:
            from klime_mp import celery

            celery.connect()
        if "uvicorn" in sys.modules:
            from klime_mp import asgi_servers

            asgi_servers.hook_uvicorn()
    except Exception:  # a host's oddity must not fail the caller's track()
        logger.warning("Klime: could not hook the host's exit path", exc_info=True)
