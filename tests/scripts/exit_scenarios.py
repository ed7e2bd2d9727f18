"""Exit scenarios for tests/test_exit.py: ``exit_scenarios.py NAME``.

Each reports the tags it expects the collector to hold, then exits normally: what is
under test happens after the report, in the interpreter's exit.
"""

from __future__ import annotations

import atexit
import sys
import threading

NAME = sys.argv[1]


def sender_alive() -> bool:
    return any(thread.name == "klime-sender" for thread in threading.enumerate())


def threads_can_start() -> bool:
    """False where starting a thread at shutdown raises (Python 3.12)."""
    try:
        probe = threading.Thread(target=int)
        probe.start()
    except RuntimeError:
        return False
    probe.join()
    return True


def late_first_event() -> None:
    # The process's first event, from an atexit handler that runs after klime_mp's
    # exit flush (registered before klime_mp was imported): a CLI's "command finished"
    # event. On Python 3.12+ no thread can start here.
    import fork_helpers as h

    h.track(h.make_client(), "late-first")
    h.record("returned")  # after the success line: the call itself saw it delivered


def late_after_use() -> None:
    # Same, on the default client the program already used: the exit flush has sent
    # and closed its worker, and this event still has to go out.
    import klime_mp

    klime_mp.track("Fork Test", {"tag": "late-after-use"}, user_id="usr_fork")


# Registered before klime_mp is imported, so they run after its exit flush.
if NAME == "late_first_event":
    atexit.register(late_first_event)
if NAME == "late_after_use":
    atexit.register(late_after_use)

import os  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

import fork_helpers as h  # noqa: E402

import klime_mp  # noqa: E402


def stored() -> int:
    with urllib.request.urlopen(os.environ[h.ENDPOINT_ENV] + "/v1/stats", timeout=10) as r:
        count: int = h.json.load(r)["stored"]
    return count


def main() -> None:
    if NAME == "late_first_event":
        h.report(tags=["late-first"])
    elif NAME == "late_after_use":
        klime_mp.configure(h.WRITE_KEY, endpoint=os.environ[h.ENDPOINT_ENV], on_error=h._on_error)
        klime_mp.track("Fork Test", {"tag": "early"}, user_id="usr_fork")
        h.report(tags=["early", "late-after-use"])
    elif NAME == "first_event_in_exit_handler":
        # Registered after klime_mp: runs before its exit flush, which must send this
        # event from its own thread when no sender thread could start (3.12+).
        client = h.make_client()

        def handler() -> None:
            allowed = threads_can_start()
            h.track(client, "exit-handler")
            print(f"threads allowed: {allowed}, sender: {sender_alive()}", file=sys.stderr)

        atexit.register(handler)
        h.report(tags=["exit-handler"])
    elif NAME == "bounded":
        # Nothing listens at the endpoint: the exit flush gives up at shutdown_timeout.
        client = h.make_client(shutdown_timeout=1.0, retry_initial_delay=200)
        for i in range(5):
            h.track(client, f"undeliverable-{i}")
        h.report(tags=[], exiting_at=time.time())
    elif NAME == "sync_mode":
        sync_mode()
    else:
        raise SystemExit(f"unknown scenario {NAME}")


def sync_mode() -> None:
    """No thread, ever: the caller sends at flush(), at max_batch_size and at exit."""
    started: list[str] = []
    real_start = threading.Thread.start

    def recording_start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    threading.Thread.start = recording_start  # type: ignore[method-assign]
    client = h.make_client(sync_mode=True, max_batch_size=5)
    tags = [h.track(client, f"sync-{i}") for i in range(3)]
    assert stored() == 0, "sync mode sent before a flush or a full batch"
    assert client.flush(10)
    assert stored() == 3, "flush() did not send from the caller"
    tags += [h.track(client, f"batch-{i}") for i in range(5)]
    assert stored() == 8, "a full batch was not sent by the call that filled it"

    def child() -> None:
        h.track(client, "child-exit")  # sent by the child's exit flush

    assert h.reap(h.fork(child, "sys.exit")) == 0
    assert stored() == 9, "the child's exit did not send its event"
    tags += ["child-exit"]
    tags += [h.track(client, f"exit-{i}") for i in range(2)]  # sent at our exit
    assert threading.active_count() == 1 and started == [], f"threads started: {started}"
    h.report(tags=tags)


main()
