"""An instrumented FastAPI app: signing in, joining an organisation, generating reports.

    POST /login                  {"user_id", "email", "name"}
        -> identify(user) + track("Signed In")
    POST /orgs/{org_id}/members  {"user_id", "org_name"}
        -> group(org, traits, user) + track("Joined Organization")
    POST /reports                {"user_id", "org_id", "report_type"}
        -> track("Report Generated")
    GET  /healthz                -> nothing tracked

The client is set up once per worker process, in the lifespan (FastAPI's start-up
hook), from KLIME_WRITE_KEY and KLIME_ENDPOINT. ``KlimeMiddleware`` sends each worker's
queued events at the lifespan shutdown: uvicorn re-raises SIGTERM after it, so no
``atexit`` handler would. Run it with ``uvicorn app:app --workers 2`` from this directory.

Every response says how many events it queued (``X-Klime-Events``) and which worker
served it (``X-Worker-Pid``); track events carry ``worker_pid``. The test counts them.
"""

# ruff: noqa: UP045  # pydantic evaluates field annotations: "str | None" fails on 3.9
from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import FastAPI, Response
from pydantic import BaseModel

import klime_mp
from klime_mp.asgi import KlimeMiddleware


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    klime_mp.configure()  # once per worker; starts nothing until the first event
    yield
    # Nothing to do here: KlimeMiddleware flushes after this code, at the shutdown.


app = FastAPI(lifespan=lifespan)
app.add_middleware(KlimeMiddleware)


class Login(BaseModel):
    user_id: str
    email: Optional[str] = None
    name: Optional[str] = None


class Membership(BaseModel):
    user_id: str
    org_name: Optional[str] = None


class Report(BaseModel):
    user_id: str
    org_id: Optional[str] = None
    report_type: str = "revenue"


def tracked(response: Response, count: int) -> dict[str, str]:
    response.headers["X-Klime-Events"] = str(count)
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return {"status": "ok"}


@app.get("/healthz")
async def healthz(response: Response) -> dict[str, str]:
    return tracked(response, 0)


@app.post("/login")
async def login(body: Login, response: Response) -> dict[str, str]:
    klime_mp.identify(body.user_id, {"email": body.email, "name": body.name})
    klime_mp.track("Signed In", {"worker_pid": os.getpid()}, user_id=body.user_id)
    return tracked(response, 2)


@app.post("/orgs/{org_id}/members")
async def join_org(org_id: str, body: Membership, response: Response) -> dict[str, str]:
    klime_mp.group(org_id, {"name": body.org_name or org_id}, user_id=body.user_id)
    klime_mp.track(
        "Joined Organization", {"worker_pid": os.getpid()}, user_id=body.user_id, group_id=org_id
    )
    return tracked(response, 2)


@app.post("/reports")
async def create_report(body: Report, response: Response) -> dict[str, str]:
    properties = {"report_type": body.report_type, "worker_pid": os.getpid()}
    klime_mp.track("Report Generated", properties, user_id=body.user_id, group_id=body.org_id)
    return tracked(response, 1)
