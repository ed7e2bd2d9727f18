"""The example app's routes as a Starlette app, instrumented with one line of klime_mp setup
beyond ``configure()``: ``app.add_middleware(KlimeMiddleware)``.

Same contract as examples/gunicorn_app (the demo's load driver counts on it): each
response says how many events it queued (``X-Klime-Events``) and which worker served
it (``X-Worker-Pid``); each track event carries ``worker_pid``. NO_KLIME_MIDDLEWARE=1
leaves the middleware out (what an app that only calls ``configure()`` runs);
KLIME_TEST_FLUSH_INTERVAL_MS sets the flush interval (a long one: only a shutdown sends).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import klime_mp
from klime_mp.asgi import KlimeMiddleware

# KLIME_WRITE_KEY and KLIME_ENDPOINT from the environment
klime_mp.configure(flush_interval=int(os.environ.get("KLIME_TEST_FLUSH_INTERVAL_MS", "2000")))


def reply(queued: int) -> JSONResponse:
    headers = {"X-Klime-Events": str(queued), "X-Worker-Pid": str(os.getpid())}
    return JSONResponse({"status": "ok"}, headers=headers)


async def healthz(request: Request) -> JSONResponse:
    return reply(0)


async def login(request: Request) -> JSONResponse:
    body = await request.json()
    user_id = body["user_id"]
    klime_mp.identify(user_id, {"email": body.get("email"), "name": body.get("name")})
    klime_mp.track("Signed In", {"worker_pid": os.getpid()}, user_id=user_id)
    return reply(2)


async def join_org(request: Request) -> JSONResponse:
    body, org_id = await request.json(), request.path_params["org_id"]
    klime_mp.group(org_id, {"name": body.get("org_name", org_id)}, user_id=body["user_id"])
    properties = {"worker_pid": os.getpid()}
    klime_mp.track("Joined Organization", properties, user_id=body["user_id"], group_id=org_id)
    return reply(2)


async def create_report(request: Request) -> JSONResponse:
    body = await request.json()
    properties = {"report_type": body.get("report_type"), "worker_pid": os.getpid()}
    klime_mp.track(
        "Report Generated", properties, user_id=body["user_id"], group_id=body.get("org_id")
    )
    return reply(1)


app = Starlette(
    routes=[
        Route("/healthz", healthz),
        Route("/login", login, methods=["POST"]),
        Route("/orgs/{org_id}/members", join_org, methods=["POST"]),
        Route("/reports", create_report, methods=["POST"]),
    ]
)
if not os.environ.get("NO_KLIME_MIDDLEWARE"):
    app.add_middleware(KlimeMiddleware)
