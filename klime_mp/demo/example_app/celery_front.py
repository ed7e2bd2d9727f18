"""A small HTTP front for the Celery example: each request becomes a task, and the
answer waits for the task's result.

    python celery_front.py --port 8000

It speaks the same routes as ``app.py`` (``POST /login``, ``/orgs/<org_id>/members``,
``/reports``; ``GET /healthz``), so ``klime-mp demo`` drives it like a web server. The
events are tracked by the Celery pool process that ran the task; this front tracks
nothing and does not import klime_mp. Its answers carry that pool process's figures:
``X-Klime-Events`` (events queued) and ``X-Worker-Pid``.

Why it polls for results instead of ``AsyncResult.get()``: Celery's Redis result
backend waits on one shared pub/sub connection, which is not safe to use from several
threads at once (celery/celery#4670, #6335). Sending through an app without a result
backend and reading each result with a plain ``GET`` (redis-py's connection pool is
thread-safe) keeps every request thread independent. Results are left to expire
(``result_expires`` in ``celery_tasks.py``): ``forget()`` goes through that pub/sub too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from celery import Celery, states  # type: ignore[import-untyped]

HOST = "127.0.0.1"
TASK_TIMEOUT_S = 20.0  # below the demo's request timeout (30 s)
HEALTH_TIMEOUT_S = 1.5  # below the demo's health-check timeout (2 s)
POLL_FIRST_S, POLL_MAX_S = 0.002, 0.05

ORG_MEMBERS = re.compile(r"^/orgs/(?P<org_id>[\w-]+)/members$")

sender = Celery("celery_front", broker=os.environ["CELERY_BROKER_URL"])
results = Celery("celery_front_results", backend=os.environ["CELERY_RESULT_BACKEND"]).backend


class TaskFailed(Exception):
    def __init__(self, exc_type: str, message: str) -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type


def run_task(name: str, args: list[Any], timeout: float = TASK_TIMEOUT_S) -> dict[str, int]:
    """Send the task and wait for its result: ``{"events": n, "pid": pid}``."""
    task_id = sender.send_task(name, args=args).id
    deadline = time.monotonic() + timeout
    pause = POLL_FIRST_S
    while True:
        meta = results.get_task_meta(task_id, cache=False)
        if meta["status"] == states.SUCCESS:
            done: dict[str, int] = meta["result"]
            return done
        if meta["status"] in states.READY_STATES:  # FAILURE or REVOKED
            error = meta["result"] or {}
            raise TaskFailed(str(error.get("exc_type")), str(error.get("exc_message")))
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {name} {task_id} had no result after {timeout} s")
        time.sleep(pause)
        pause = min(pause * 2, POLL_MAX_S)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path != "/healthz":
            self._reply(404, {"error": "no such route"})
            return
        try:
            run_task("demo.ping", [], HEALTH_TIMEOUT_S)
        except (TimeoutError, TaskFailed, OSError) as exc:  # the worker is not ready yet
            self._reply(503, {"error": str(exc)})
            return
        self._reply(200, {"status": "ok"})

    def do_POST(self) -> None:
        members = ORG_MEMBERS.match(self.path)
        try:
            body = self._read_json()
            if self.path == "/login":
                done = run_task("demo.login", [body])
            elif self.path == "/reports":
                done = run_task("demo.create_report", [body])
            elif members:
                done = run_task("demo.join_org", [body, members["org_id"]])
            else:
                self._reply(404, {"error": "no such route"})
                return
        except ValueError as exc:  # bad JSON
            self._reply(400, {"error": str(exc)})
            return
        except TaskFailed as exc:  # the task refused the body (a missing user_id)
            self._reply(400 if exc.exc_type == "ValueError" else 500, {"error": str(exc)})
            return
        except (TimeoutError, OSError) as exc:
            self._reply(503, {"error": str(exc)})
            return
        self._reply(200, {"status": "ok"}, done["events"], done["pid"])

    def _read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object")
        return body

    def _reply(self, status: int, payload: dict[str, Any], events: int = 0, pid: int = 0) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Klime-Events", str(events))
        self.send_header("X-Worker-Pid", str(pid))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would bury the log's useful lines


class Front(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops connections under a burst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    port = parser.parse_args().port
    server = Front((HOST, port), Handler)

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever() to return: not from its own thread.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"celery front listening on http://{HOST}:{port}", flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
