"""What the collector answers, independent of HTTP plumbing.

The request handler turns each request into one call here and writes back the
``Reply``; keeping the protocol apart from ``http.server`` makes both easier to read.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from . import faults
from .faults import FaultDice, FaultPlan
from .query import QueryError, parse_query
from .stats import StatsRecorder
from .store import EventStore, InsertResult, Run
from .validation import BatchError, check_batch, parse_batch

MAX_RUN_NAME = 200
NEXT_AFTER_HEADER = "X-Klime-Next-After"
# What a misconfigured proxy might send back: a 200 that is not the API's JSON.
GARBAGE_BODY = b"<html><body>502 Bad Gateway (injected)</body></html>"


@dataclass(frozen=True)
class Reply:
    """One response; ``status`` None means: close the connection without answering."""

    status: int | None
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"
    stored: int = 0  # events of the request that are in the store, acknowledged by it


DROP = Reply(None)


def json_reply(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, json.dumps(payload, separators=(",", ":")).encode(), headers)


def error_reply(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return json_reply(status, {"status": "error", "message": message}, headers)


def bearer_token(header: str | None) -> bytes | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None if malformed."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token.encode("utf-8", "surrogateescape")


class CollectorApp:
    """The collector's endpoints over a store, a stats recorder and a fault plan."""

    def __init__(
        self, store: EventStore, write_keys: Iterable[str], plan: FaultPlan, sink: bool = False
    ) -> None:
        self.store = store
        self.sink = sink  # see Collector: bench mode, every POST counted, nothing stored
        self.stats = StatsRecorder()
        self.stopping = threading.Event()  # cuts injected delays short on stop()
        self._keys = tuple(key.encode("utf-8") for key in write_keys)
        self._dice = FaultDice(plan)

    @property
    def faults(self) -> FaultPlan:
        return self._dice.plan

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        self._dice.plan = plan

    def refuse_batch(self, status: int, message: str) -> Reply:
        """Answer a batch request the HTTP layer refused before reading its body."""
        self.stats.request_answered(status)
        return error_reply(status, message)

    def batch(self, authorization: str | None, body: bytes) -> Reply:
        """``POST /v1/batch`` with the body already read in full."""
        reply = self._batch(authorization, body)
        self.stats.request_answered(reply.status)
        return reply

    def _batch(self, authorization: str | None, body: bytes) -> Reply:
        plan, fault, delayed = self._dice.draw()
        if delayed:
            self.stats.fault_injected(faults.DELAY)
            if self.stopping.wait(plan.delay):
                # Stopped (or taken down) mid-delay: nothing is stored, so a client
                # that resends after the outage cannot create a duplicate here.
                return DROP
        early = self._fault_before_processing(plan, fault)
        if early is not None:
            return early
        if not self._authorized(authorization):
            return error_reply(401, "missing, malformed or unknown write key")
        if plan.max_body_bytes is not None and len(body) > plan.max_body_bytes:
            self.stats.fault_injected(faults.TOO_LARGE)
            return error_reply(413, f"body of {len(body)} bytes; at most {plan.max_body_bytes}")
        try:
            events = parse_batch(body)
        except BatchError as exc:
            return error_reply(400, str(exc))
        if plan.poison_event is not None and _holds(events, plan.poison_event):
            self.stats.fault_injected(faults.POISON)
            return error_reply(400, f"the batch holds a bad event ({plan.poison_event!r})")
        checked = check_batch(events)
        stored = self.store.insert(checked.valid) if checked.valid else InsertResult(0, 0)
        self.stats.events_received(len(events), stored.duplicates, len(checked.errors))
        if fault == faults.DROP_AFTER_STORE:
            # The client cannot know these arrived: resending them is right, and each
            # resend is a raw duplicate that storage absorbs. Counted so tests can tell
            # such unavoidable duplicates from a client that resends for no reason.
            self.stats.fault_injected(fault)
            self.stats.events_unacknowledged(len(checked.valid))
            return DROP
        if fault == faults.GARBAGE:
            self.stats.fault_injected(fault)
            return Reply(200, GARBAGE_BODY, (), "text/html", len(checked.valid))
        payload: dict[str, Any] = {
            "status": "ok",
            "accepted": len(checked.valid),
            "failed": len(checked.errors),
        }
        if checked.errors:
            payload["errors"] = [
                {"index": index, "message": error.message, "code": error.code}
                for index, error in checked.errors
            ]
        return dataclasses.replace(json_reply(200, payload), stored=len(checked.valid))

    def count(self, body: bytes) -> None:
        """Sink mode: count a batch already answered 200, in any SDK's shape; store nothing."""
        try:
            batch = json.loads(body).get("batch")
        except (ValueError, AttributeError):  # not JSON, or JSON but not an object
            batch = None
        self.stats.request_answered(200)
        self.stats.events_received(len(batch) if isinstance(batch, list) else 0, 0, 0)

    def unacknowledged(self, reply: Reply) -> None:
        """The client left before ``reply`` could reach it (it timed out): what the
        reply acknowledged will come again, as from a dropped connection."""
        if reply.stored:
            self.stats.events_unacknowledged(reply.stored)

    def _fault_before_processing(self, plan: FaultPlan, fault: str | None) -> Reply | None:
        if fault == faults.ERROR:
            reply = error_reply(plan.status, "injected server error")
        elif fault == faults.RATE_LIMIT:
            retry_after = plan.retry_after_header()
            reply = error_reply(429, "injected rate limit", (("Retry-After", retry_after),))
        elif fault == faults.DROP:
            reply = DROP
        else:
            return None
        self.stats.fault_injected(fault)
        return reply

    def _authorized(self, authorization: str | None) -> bool:
        token = bearer_token(authorization)
        if token is None:
            return False
        if not self._keys:
            return True  # no keys configured: any well-formed key is accepted
        # Compare against every key without stopping early, so timing reveals nothing.
        matches = [hmac.compare_digest(token, key) for key in self._keys]
        return any(matches)

    def stats_reply(self) -> Reply:
        return json_reply(200, self.stats.snapshot(self.store.count).to_json())

    def events_reply(self, query: str) -> Reply:
        """``GET /v1/events``: stored events with their id, run and receipt time,
        oldest first, narrowed by the query's filters (see ``query.parse_query``)."""
        try:
            wanted = parse_query(query)
        except QueryError as exc:
            return error_reply(400, str(exc))
        rows = self.store.page(wanted)
        next_after = rows[-1].id if rows else wanted.after
        # The bodies are stored as compact JSON already: splice, do not re-encode.
        records = (
            f'{{"id":{row.id},"run":{row.run},"received_at":"{utc(row.received_at)}",'
            f'"event":{row.body}}}'
            for row in rows
        )
        body = ("[" + ",".join(records) + "]").encode("utf-8")
        return Reply(200, body, ((NEXT_AFTER_HEADER, str(next_after)),))

    def start_run(self, body: bytes) -> Reply:
        """``POST /v1/runs`` with an optional ``{"name": ...}``: events stored from now
        on carry the new run's number, so ``GET /v1/events?run=latest`` shows only them."""
        name: Any = None
        if body.strip():
            try:
                payload = json.loads(body)
            except ValueError:
                return error_reply(400, 'body must be JSON, such as {"name": "smoke test"}')
            name = payload.get("name") if isinstance(payload, dict) else payload
        if name is not None and not (isinstance(name, str) and 0 < len(name) <= MAX_RUN_NAME):
            return error_reply(400, f"name must be a string of 1 to {MAX_RUN_NAME} characters")
        return json_reply(201, run_json(self.store.start_run(name)))

    def runs_reply(self) -> Reply:
        """``GET /v1/runs``: every run started, oldest first, with its event count."""
        return json_reply(200, [run_json(run) for run in self.store.runs()])


def _holds(events: list[Any], name: str) -> bool:
    return any(isinstance(event, dict) and event.get("event") == name for event in events)


def utc(seconds: float) -> str:
    """An epoch time as UTC ISO 8601 with milliseconds and ``Z``, as events carry it."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_json(run: Run) -> dict[str, Any]:
    return {
        "run": run.run,
        "name": run.name,
        "started_at": utc(run.started_at),
        "events": run.events,
    }
