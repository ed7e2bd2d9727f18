"""uWSGI hooks: send a worker's queued events when it exits; check the setup per worker.

Nothing to do: ``klime_mp.configure()`` and the first event of any client install these
hooks when they run inside uWSGI (``klime_mp.host_hooks``). Importing it yourself, from the
ini (``import = klime_mp.uwsgi``) or the app module, does the same, once per process
tree whichever comes first. Outside uWSGI the import does nothing. It adds to, and
never replaces, hooks that are already set:

* ``uwsgi.atexit``: uWSGI calls it in a worker that stops, reloads or is recycled.
  Python's own ``atexit`` is not dependable under uWSGI, so this is where a worker's
  queued events are sent (each client within its ``shutdown_timeout``).
* a post-fork hook (``uwsgidecorators.postfork`` if that module is in use, since
  importing it replaces ``uwsgi.post_fork_hook``; otherwise ``uwsgi.post_fork_hook``):
  checks each worker once. With ``lazy-apps`` the check runs at import, in the worker.
* ``uwsgi.after_req_hook``, only where Python threads are off: without them the sender
  thread only runs while a request executes Python, so queued events would wait for
  the next request; the fallback flushes after every request instead.

The check logs one line per problem, naming the option that fixes it:

* threads disabled -> ``enable-threads = true`` (fallback: the per-request flush);
* Python's at-fork hooks not run in the worker -> ``py-call-uwsgi-fork-hooks = true``
  (fallback: klime_mp's PID check resets the client on its first call in the worker;
  other libraries that rely on at-fork hooks get no such help).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Callable, Protocol, cast

from klime_mp.lifecycle import forksafe
from klime_mp.lifecycle.forksafe import flush_process
from klime_mp.options import REQUEST_FLUSH_TIMEOUT_S

logger = logging.getLogger(__name__)

Hook = Callable[[], Any]
_INSTALLED = "_klime_mp_installed"  # marks the uwsgi module: install once per process tree

THREADS_OFF = (
    "Klime: uWSGI runs worker %d without Python threads, so queued events would wait "
    "for the next request; flushing after every request instead. Fix: enable-threads = true"
)
FORK_HOOKS_OFF = (
    "Klime: uWSGI forked worker %d without running Python's at-fork hooks; klime_mp "
    "resets itself there anyway, but other libraries may not. Fix: "
    "py-call-uwsgi-fork-hooks = true (py-call-osafterfork = true on older uWSGI)"
)


class UwsgiApi(Protocol):
    """The parts of uWSGI's embedded ``uwsgi`` module used here (it ships no stubs)."""

    opt: Mapping[str, Any]

    def worker_id(self) -> int: ...


# Set in the importing process, and by Python's at-fork hook in a child when that runs.
_imported_in = os.getpid()
_python_fork_hook_ran_in = 0
_checked_in = 0
_fork_watch_registered = False


def uwsgi_api() -> UwsgiApi | None:
    """The running uWSGI's module, or None outside uWSGI."""
    try:
        # Imported by name: the module exists only inside a uWSGI process, and its typed
        # view is the UwsgiApi protocol (a static import would need types-uWSGI).
        module = importlib.import_module("uwsgi")
    except ImportError:
        return None
    return cast(UwsgiApi, module)


def install(api: UwsgiApi | None = None) -> bool:
    """Chain klime_mp's hooks onto uWSGI's; idempotent. False outside uWSGI."""
    api = api if api is not None else uwsgi_api()
    if api is None:
        return False
    if getattr(api, _INSTALLED, False):
        return True
    setattr(api, _INSTALLED, True)
    _watch_python_forks()
    _chain(api, "atexit", _exit_flush)
    if not threads_enabled(api):
        _chain(api, "after_req_hook", _flush_after_request)
    if _worker_id(api) > 0:  # lazy-apps (or no master): imported in the worker itself
        check_worker(api)
    else:
        _add_post_fork_hook(api)
    return True


def threads_enabled(api: UwsgiApi) -> bool:
    """Whether Python threads run in the workers (always, in uWSGI 2.0.31)."""
    has_threads = getattr(api, "has_threads", None)
    if has_threads is not None:
        return bool(has_threads)
    options = api.opt
    return bool(options.get("enable-threads") or options.get("threads"))


def check_worker(api: UwsgiApi) -> None:
    """Log, once per process, each setting that would cost events, with its fix."""
    global _checked_in
    pid = os.getpid()
    if _checked_in == pid:
        return
    _checked_in = pid
    if not threads_enabled(api):
        logger.warning(THREADS_OFF, _worker_id(api))
    forked_from_importer = _imported_in != pid
    if forked_from_importer and _python_fork_hook_ran_in != pid:
        logger.warning(FORK_HOOKS_OFF, _worker_id(api))


# -- hooks ---------------------------------------------------------------------------


def _exit_flush() -> None:
    forksafe.exit_flush_now()


def _flush_after_request() -> None:
    flush_process(REQUEST_FLUSH_TIMEOUT_S)


def _watch_python_forks() -> None:
    global _fork_watch_registered
    if not _fork_watch_registered:  # at-fork registrations cannot be undone: once only
        _fork_watch_registered = True
        os.register_at_fork(after_in_child=_note_python_fork)


def _note_python_fork() -> None:
    # Runs first thing in a child when Python's at-fork hooks run at all: no I/O here.
    global _python_fork_hook_ran_in
    _python_fork_hook_ran_in = os.getpid()


def _add_post_fork_hook(api: UwsgiApi) -> None:
    def post_fork() -> None:
        check_worker(api)

    decorators = sys.modules.get("uwsgidecorators")
    postfork: Callable[[Hook], Any] | None = getattr(decorators, "postfork", None)
    if postfork is not None:
        postfork(post_fork)  # appended to its chain, which owns uwsgi.post_fork_hook
    else:
        _chain(api, "post_fork_hook", post_fork)


def _chain(api: UwsgiApi, name: str, ours: Hook) -> None:
    """Set ``uwsgi.<name>`` to run ``ours`` and then whatever was there before."""
    previous: Hook | None = getattr(api, name, None)
    if previous is None:
        setattr(api, name, ours)
        return

    def chained() -> None:
        try:
            ours()
        except Exception:  # the user's hook still runs if ours fails
            logger.exception("Klime: uWSGI %s hook failed", name)
        previous()

    setattr(api, name, chained)


def _worker_id(api: UwsgiApi) -> int:
    try:
        return int(api.worker_id())
    except Exception:  # not in a worker (some uWSGI versions raise in the master)
        return 0


install()
