"""A Celery task app instrumented with klime_mp.

``klime_mp.configure()`` at import is the whole setup: it reads KLIME_WRITE_KEY and
KLIME_ENDPOINT and starts nothing, so the Celery parent stays single-threaded, and each
prefork child starts its own sender on its first event. Celery's children leave through
``os._exit`` (recycled by --max-tasks-per-child, or at a warm shutdown); klime_mp hooks
``worker_process_shutdown`` on its own, so each child sends what it still holds.
"""

from __future__ import annotations

import os

from celery import Celery

import klime_mp

klime_mp.configure()

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("tasks", broker=BROKER, backend=os.environ.get("CELERY_RESULT_BACKEND", BROKER))


@app.task
def sign_in(user_id: str, email: str) -> int:
    """A user signed in: who they are, and that they came back."""
    klime_mp.identify(user_id, {"email": email})
    klime_mp.track("Signed In", user_id=user_id)
    return os.getpid()


@app.task
def join_organization(user_id: str, org_id: str, org_name: str) -> int:
    klime_mp.group(org_id, {"name": org_name}, user_id=user_id)
    klime_mp.track("Organization Joined", user_id=user_id, group_id=org_id)
    return os.getpid()


@app.task
def export_report(user_id: str, org_id: str, report_type: str) -> int:
    """The slow work a web request hands to Celery, then the event that records it."""
    klime_mp.track(
        "Report Exported", {"report_type": report_type}, user_id=user_id, group_id=org_id
    )
    return os.getpid()
