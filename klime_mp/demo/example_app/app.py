"""A small instrumented WSGI app: signing in, joining an organisation, doing things.

Each user action becomes Klime events the way the Klime docs suggest:

    POST /login                  {"user_id", "email", "name"}
        -> identify(user) + track("Signed In")
    POST /orgs/<org_id>/members  {"user_id", "org_name"}
        -> group(org, traits, user) + track("Joined Organization")
    POST /reports                {"user_id", "org_id", "report_type"}
        -> track("Report Generated")
    GET  /healthz                -> nothing tracked

Plain WSGI, no framework: the same calls go in a Flask view or a Django view. Every
track event carries the PID of the worker that served it (``worker_pid``), and every
response says how many events it queued (``X-Klime-Events``) and which worker served
it (``X-Worker-Pid``), so ``klime-mp demo`` can check delivery per worker.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Callable

import klime_mp

# Reads KLIME_WRITE_KEY and KLIME_ENDPOINT. Starts no thread and opens no socket, so it
# is safe in a Gunicorn master with --preload or a uWSGI master: each worker starts its
# own sender on its first event.
klime_mp.configure()

StartResponse = Callable[..., Any]
Body = dict[str, Any]

ORG_MEMBERS = re.compile(r"^/orgs/(?P<org_id>[\w-]+)/members$")


def login(body: Body) -> int:
    user_id = _required(body, "user_id")
    klime_mp.identify(user_id, {"email": body.get("email"), "name": body.get("name")})
    klime_mp.track("Signed In", {"worker_pid": os.getpid()}, user_id=user_id)
    return 2


def join_org(body: Body, org_id: str) -> int:
    user_id = _required(body, "user_id")
    klime_mp.group(org_id, {"name": body.get("org_name", org_id)}, user_id=user_id)
    klime_mp.track(
        "Joined Organization", {"worker_pid": os.getpid()}, user_id=user_id, group_id=org_id
    )
    return 2


def create_report(body: Body) -> int:
    properties = {"report_type": body.get("report_type", "revenue"), "worker_pid": os.getpid()}
    klime_mp.track(
        "Report Generated",
        properties,
        user_id=_required(body, "user_id"),
        group_id=body.get("org_id"),
    )
    return 1


def handle(method: str, path: str, read_body: Callable[[], bytes]) -> tuple[int, Body, int]:
    """One request, whatever the server interface: its HTTP status, its JSON answer,
    and how many events it queued. ``read_body`` is called for a POST only."""
    if method == "GET" and path == "/healthz":
        return 200, {"status": "ok"}, 0
    if method != "POST":
        return 405, {"error": "use POST"}, 0
    try:
        body = json.loads(read_body() or b"{}")
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object")
        members = ORG_MEMBERS.match(path)
        if path == "/login":
            queued = login(body)
        elif path == "/reports":
            queued = create_report(body)
        elif members:
            queued = join_org(body, members["org_id"])
        else:
            return 404, {"error": "no such route"}, 0
    except ValueError as exc:  # bad JSON, or a missing or invalid id (klime_mp says which)
        return 400, {"error": str(exc)}, 0
    return 200, {"status": "ok"}, queued


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    def read_body() -> bytes:
        data: bytes = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        return data

    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
    status, payload, queued = handle(method, path, read_body)
    return _reply(start_response, f"{status} {HTTPStatus(status).phrase}", payload, queued)


def _required(body: Body, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} is required")
    return value


def _reply(start_response: StartResponse, status: str, payload: Body, queued: int) -> list[bytes]:
    data = json.dumps(payload).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("X-Klime-Events", str(queued)),
            ("X-Worker-Pid", str(os.getpid())),
        ],
    )
    return [data]
