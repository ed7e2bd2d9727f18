"""The example app's actions as Celery tasks: the same Klime calls, run by a prefork pool.

    celery -A celery_tasks worker -P prefork -c 4 --max-tasks-per-child 10

Importing ``app`` (the WSGI example beside this file) is the whole klime_mp setup: it
calls ``klime_mp.configure()``, which starts nothing, so the Celery main process can
load it before it forks its pool. Each pool process starts its own sender on its first
event, and klime_mp sends what a pool process still holds when Celery recycles it
(``--max-tasks-per-child``) or stops it (warm shutdown): nothing to hook by hand.

Each task returns how many events it queued and the PID of the pool process that ran
it, which ``celery_front.py`` turns into the ``X-Klime-Events`` and ``X-Worker-Pid``
headers ``klime-mp demo`` counts.

``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` name the broker and the result
backend (the demo runs one redis-server for both).
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

from app import create_report, join_org, login  # type: ignore[import-not-found]
from celery import Celery  # type: ignore[import-untyped]

app = Celery(
    "celery_tasks",
    broker=os.environ["CELERY_BROKER_URL"],
    backend=os.environ["CELERY_RESULT_BACKEND"],
)
# Results are read once, by the front, right away: an hour is plenty.
app.conf.result_expires = 3600

Body = dict[str, Any]
Done = dict[str, int]
Task = TypeVar("Task", bound=Callable[..., Done])


def task(name: str) -> Callable[[Task], Task]:
    """``app.task(name=name)``, typed: Celery ships no types, and mypy would otherwise
    stop checking the functions it decorates. (Celery returns a Task object, which is
    called like the function.)"""
    decorator: Callable[[Task], Task] = app.task(name=name)
    return decorator


def _done(events: int) -> Done:
    return {"events": events, "pid": os.getpid()}


@task("demo.login")
def login_task(body: Body) -> Done:
    return _done(login(body))


@task("demo.join_org")
def join_org_task(body: Body, org_id: str) -> Done:
    return _done(join_org(body, org_id))


@task("demo.create_report")
def create_report_task(body: Body) -> Done:
    return _done(create_report(body))


@task("demo.ping")
def ping() -> Done:
    """The front's health check: a round trip through the broker, a pool process and the
    result backend. Tracks nothing."""
    return _done(0)
