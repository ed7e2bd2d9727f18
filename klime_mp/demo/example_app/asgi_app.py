"""The example app as a plain ASGI app (no framework), for uvicorn.

The same routes and Klime calls as ``app.py`` (its ``handle()`` is reused as it is);
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

# The WSGI example beside this file (on uvicorn's --app-dir): its routes and handlers.
from app import Body, handle  # type: ignore[import-not-found]  # isort: skip


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return  # no lifespan of its own: KlimeMiddleware answers it
    data = await _read_body(receive)
    status, payload, queued = handle(scope["method"], scope["path"], lambda: data)
    await _reply(send, status, payload, queued)


async def _read_body(receive: Receive) -> bytes:
    data = b""
    while True:
        message = await receive()
        data += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return data


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
