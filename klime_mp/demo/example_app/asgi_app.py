"""The example app as a plain ASGI app (no framework), for uvicorn.

The same routes and Klime calls as ``app.py`` (its handlers are reused as they are);
only the server interface differs. The one ASGI-specific line is the wrap in
``KlimeMiddleware``: uvicorn ends a worker by re-raising SIGTERM after the lifespan
shutdown, so no ``atexit`` hook runs, and the middleware sends the worker's events (and
any a SIGKILLed sibling left in the spool) in that lifespan shutdown instead.

    uvicorn --workers 4 asgi_app:app
"""

from __future__ import annotations

import json
import os

from klime_mp.asgi import KlimeMiddleware, Receive, Scope, Send

# The WSGI example beside this file (on uvicorn's --app-dir): its handlers, unchanged.
from app import (  # type: ignore[import-not-found]  # isort: skip
    ORG_MEMBERS,
    Body,
    create_report,
    join_org,
    login,
)


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return  # no lifespan of its own: KlimeMiddleware answers it
    method, path = scope["method"], scope["path"]
    if method == "GET" and path == "/healthz":
        return await _reply(send, 200, {"status": "ok"}, 0)
    if method != "POST":
        return await _reply(send, 405, {"error": "use POST"}, 0)
    try:
        body = await _read_json(receive)
        members = ORG_MEMBERS.match(path)
        if path == "/login":
            queued = login(body)
        elif path == "/reports":
            queued = create_report(body)
        elif members:
            queued = join_org(body, members["org_id"])
        else:
            return await _reply(send, 404, {"error": "no such route"}, 0)
    except ValueError as exc:  # bad JSON, or a missing or invalid id (klime_mp says which)
        return await _reply(send, 400, {"error": str(exc)}, 0)
    await _reply(send, 200, {"status": "ok"}, queued)


async def _read_json(receive: Receive) -> Body:
    data = b""
    while True:
        message = await receive()
        data += message.get("body", b"")
        if not message.get("more_body"):
            break
    body = json.loads(data or b"{}")
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


async def _reply(send: Send, status: int, payload: Body, queued: int) -> None:
    data = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"x-klime-events", str(queued).encode()),
        (b"x-worker-pid", str(os.getpid()).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


app = KlimeMiddleware(_app)
