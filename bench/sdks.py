"""One adapter per SDK: a client against a URL and its own equivalent of Klime's
``track("Report Generated", {...}, user_id="usr_1", group_id="org_1")`` as
``call(properties=...)``, a ``functools.partial`` (no frame of ours); see "Each SDK's
own call" in docs/performance.md. Imports are lazy: a subprocess loads one SDK only."""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from bench.collector import wait_until

EVENT = "Report Generated"
USER = "usr_1"
GROUP = "org_1"
WRITE_KEY = "bench-write-key"

SDKS = ("klime_mp", "klime_mp_spool", "klime", "segment", "posthog")
PEERS = ("klime", "segment", "posthog")
# The apps of the Gunicorn parts besides the SDKs: none at all, and the least an SDK can
# do in the request (encode the event; send nothing), which bounds what any SDK can reach.
BASELINES = ("none", "encode_only")

Call = Callable[..., Any]  # called as call(properties={...})


@dataclass(frozen=True)
class Settings:
    url: str
    queue_size: int | None = None
    batch_size: int | None = None
    flush_interval_s: float | None = None

    def options(self, queue: str, batch: str, interval: str, in_ms: bool = False) -> dict[str, Any]:
        """The settings under one SDK's option names; unset ones left out (its default)."""
        seconds = self.flush_interval_s
        every = round(seconds * 1000) if in_ms and seconds is not None else seconds
        named = {queue: self.queue_size, batch: self.batch_size, interval: every}
        return {name: value for name, value in named.items() if value is not None}


class Adapter:
    """One SDK's client and its track call (the base class's call does nothing)."""

    default_queue_size = 10000

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: Any = None
        self.call: Call = _noop

    def flush(self, timeout: float) -> None:
        pass

    @property
    def queue_limit(self) -> int:
        return self.settings.queue_size or self.default_queue_size


def _noop(properties: dict[str, Any] | None = None) -> None:
    return None


# klime_mp keeps the official SDK's option names (milliseconds for the interval).
KLIME_OPTIONS = {"queue": "max_queue_size", "batch": "max_batch_size", "interval": "flush_interval"}


class KlimeMp(Adapter):
    spool = False  # the durable spool (KlimeMpSpool): every event written to disk too

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        import tempfile

        from klime_mp import KlimeClient

        self.client = KlimeClient(
            WRITE_KEY,
            endpoint=settings.url,
            spool_dir=tempfile.mkdtemp(prefix="klime-bench-spool-") if self.spool else None,
            **settings.options(**KLIME_OPTIONS, in_ms=True),
        )
        self.call = functools.partial(self.client.track, EVENT, user_id=USER, group_id=GROUP)

    def flush(self, timeout: float) -> None:
        self.client.flush(timeout)


class KlimeMpSpool(KlimeMp):
    spool = True


class Klime(Adapter):
    default_queue_size = 1000

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        from klime import KlimeClient  # type: ignore[import-untyped]  # no py.typed

        self.client = KlimeClient(
            WRITE_KEY, endpoint=settings.url, **settings.options(**KLIME_OPTIONS, in_ms=True)
        )
        self.call = functools.partial(self.client.track, EVENT, user_id=USER, group_id=GROUP)

    def flush(self, timeout: float) -> None:
        # flush() returns at once while its timer thread is flushing: wait for that too.
        self.client.flush()
        wait_until(lambda: self.client.queue_size() == 0, timeout)


class Segment(Adapter):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        from segment.analytics import Client  # type: ignore[import-untyped]  # no py.typed

        options = settings.options("max_queue_size", "upload_size", "upload_interval")
        self.client = Client(WRITE_KEY, host=settings.url, **options)
        self.call = functools.partial(self.client.track, USER, EVENT, context={"groupId": GROUP})

    def flush(self, timeout: float) -> None:
        self.client.flush()  # queue.join(): returns when every item was uploaded


class PostHog(Adapter):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        from posthog import Posthog

        options = settings.options("max_queue_size", "flush_at", "flush_interval")
        self.client = Posthog(WRITE_KEY, host=settings.url, **options)
        self.call = functools.partial(
            self.client.capture, EVENT, distinct_id=USER, groups={"company": GROUP}
        )

    def flush(self, timeout: float) -> None:
        self.client.flush(timeout_seconds=timeout)


class EncodeOnly(Adapter):
    """No SDK: the least any SDK does in the request (a UUID, the time, one json.dumps)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.client = []
        self.call = self._track

    def _track(self, properties: dict[str, Any] | None = None) -> None:
        event = {
            "type": "track",
            "messageId": str(uuid.uuid4()),
            "timestamp": time.time(),
            "event": EVENT,
            "userId": USER,
            "groupId": GROUP,
            "properties": properties or {},
        }
        if len(self.client) >= 100:
            self.client.clear()
        self.client.append(json.dumps(event))


ADAPTERS: dict[str, type[Adapter]] = {
    "klime_mp": KlimeMp,
    "klime_mp_spool": KlimeMpSpool,
    "klime": Klime,
    "segment": Segment,
    "posthog": PostHog,
    "encode_only": EncodeOnly,
}


def make(name: str, settings: Settings) -> Adapter:
    quiet_logging()
    return ADAPTERS[name](settings)


def quiet_logging() -> None:
    """Logging configured but quiet: SDK warnings are built and dispatched, not printed."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    root.setLevel(logging.WARNING)
