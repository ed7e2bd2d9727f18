"""Queue events for a server that is down, then leave through a normal exit.

``exit_server_down.py ENDPOINT COUNT``: prints ``{"tracked": COUNT}`` and returns from
main; the exit flush (atexit) must give up at ``shutdown_timeout`` (1.5 s) and report
every event it could not send to on_error, printed as one ``on_error N`` line each.
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
from typing import Any

import klime_mp


def on_error(error: BaseException, events: list[dict[str, Any]]) -> None:
    sys.stderr.write(f"on_error {len(events)} {type(error).__name__}\n")


def main() -> None:
    endpoint, count = sys.argv[1], int(sys.argv[2])
    klime_mp.configure(
        "exit-key",
        endpoint=endpoint,
        shutdown_timeout=1.5,
        retry_max_attempts=10,
        timeout=5.0,
        on_error=on_error,
    )
    for n in range(count):
        klime_mp.track("Exit", {"n": n}, user_id="usr_exit")
    print(json.dumps({"tracked": count}), flush=True)


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test's dump on a hang
    main()
