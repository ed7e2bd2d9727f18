"""A Celery app that uses klime_mp the way a new user would: ``configure()`` at import.

Nothing else: no signal handlers, no worker hooks. Each task tracks one event tagged
with the PID of the pool process that ran it, and records that PID in a file.
"""

from __future__ import annotations

import os

from celery import Celery

import klime_mp

# KLIME_WRITE_KEY and KLIME_ENDPOINT from the environment. HOLD_EVENTS=1 (a test's
# choice) keeps events queued until the process exits, so only the exit path sends them.
HOLD = {"flush_interval": 600_000, "max_batch_size": 100} if os.environ.get("HOLD_EVENTS") else {}
klime_mp.configure(**HOLD)

app = Celery("celery_app", broker=os.environ["CELERY_BROKER_URL"])
DONE_DIR = os.environ["TASKS_DONE_DIR"]  # one file per finished task, holding its PID


@app.task(name="celery_app.work")
def work(n: int) -> None:
    klime_mp.track("Task Done", {"n": n, "worker_pid": os.getpid()}, user_id=f"usr_{n}")
    # Written then renamed, so the test never reads a half-written file. A file instead
    # of a result backend: the test process then holds no Redis subscription at exit.
    path = os.path.join(DONE_DIR, str(n))
    with open(f"{path}.tmp", "w") as out:
        out.write(str(os.getpid()))
    os.replace(f"{path}.tmp", path)
