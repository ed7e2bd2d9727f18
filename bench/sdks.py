"""One adapter per SDK: build a client against a URL and expose its own track call.

Each SDK makes its own equivalent of Klime's
``track("Report Generated", {...}, user_id="usr_1", group_id="org_1")``:

* klime_mp, klime: ``client.track(event, properties, user_id=..., group_id=...)``
* Segment: ``client.track(user_id, event, properties, context={"groupId": ...})``
  (Segment's documented way to tie a track to an account)
* PostHog: ``client.capture(event, distinct_id=..., properties=..., groups={...})``

``call(properties=...)`` is a ``functools.partial`` over the SDK's bound method, so
timing a call adds no Python frame of ours. Imports are lazy: a benchmark subprocess
loads one SDK only.
Options left as ``None`` keep each SDK's own default.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable

EVENT = "Report Generated"
USER = "usr_1"
GROUP = "org_1"
WRITE_KEY = "bench-write-key"

SDKS = ("klime_mp", "klime_mp_spool", "klime", "segment", "posthog")
PEERS = ("klime", "segment", "posthog")
LABELS = {
    "klime_mp": "klime_mp",
    "klime_mp_spool": "klime_mp + spool",
    "klime": "klime 1.1.0 (official)",
    "segment": "Segment analytics-python",
    "posthog": "PostHog",
    "none": "no SDK",
}

Call = Callable[..., Any]  # called as call(properties={...})


@dataclass(frozen=True)
class Settings:
    url: str
    queue_size: int | None = None
    batch_size: int | None = None
    flush_interval_s: float | None = None


class Adapter:
    name = ""
    default_queue_size = 0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: Any = None
        self.call: Call = _noop

    def flush(self, timeout: float) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError

    def queued(self) -> int:
        raise NotImplementedError

    @property
    def queue_limit(self) -> int:
        return self.settings.queue_size or self.default_queue_size


def _noop(properties: dict[str, Any] | None = None) -> None:
    return None


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


class KlimeMp(Adapter):
    name = "klime_mp"
    default_queue_size = 10000
    spool = False  # the durable spool (KlimeMpSpool): every event written to disk too

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        import tempfile

        from klime_mp import KlimeClient

        self.client = KlimeClient(
            WRITE_KEY,
            endpoint=settings.url,
            max_queue_size=settings.queue_size,
            max_batch_size=settings.batch_size,
            flush_interval=_ms(settings.flush_interval_s),
            spool_dir=tempfile.mkdtemp(prefix="klime-bench-spool-") if self.spool else None,
        )
        self.call = functools.partial(self.client.track, EVENT, user_id=USER, group_id=GROUP)

    def flush(self, timeout: float) -> None:
        self.client.flush(timeout)

    def shutdown(self) -> None:
        self.client.shutdown()

    def queued(self) -> int:
        return int(self.client.queue_size())


class KlimeMpSpool(KlimeMp):
    name = "klime_mp_spool"
    spool = True


class Klime(Adapter):
    name = "klime"
    default_queue_size = 1000

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        from klime import KlimeClient  # type: ignore[import-untyped]  # no py.typed

        self.client = KlimeClient(
            WRITE_KEY,
            endpoint=settings.url,
            max_queue_size=settings.queue_size,
            max_batch_size=settings.batch_size,
            flush_interval=_ms(settings.flush_interval_s),
        )
        self.call = functools.partial(self.client.track, EVENT, user_id=USER, group_id=GROUP)

    def flush(self, timeout: float) -> None:
        # flush() returns at once while its timer thread is flushing: wait for that too.
        self.client.flush()
        _wait(lambda: self.client.queue_size() == 0, timeout)

    def shutdown(self) -> None:
        self.client.shutdown()

    def queued(self) -> int:
        return int(self.client.queue_size())


class Segment(Adapter):
    name = "segment"
    default_queue_size = 10000

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        from segment.analytics import Client  # type: ignore[import-untyped]  # no py.typed

        options: dict[str, Any] = {"host": settings.url}
        if settings.queue_size is not None:
            options["max_queue_size"] = settings.queue_size
        if settings.batch_size is not None:
            options["upload_size"] = settings.batch_size
        if settings.flush_interval_s is not None:
            options["upload_interval"] = settings.flush_interval_s
        self.client = Client(WRITE_KEY, **options)
        self.call = functools.partial(self.client.track, USER, EVENT, context={"groupId": GROUP})

    def flush(self, timeout: float) -> None:
        self.client.flush()  # queue.join(): returns when every item was uploaded

    def shutdown(self) -> None:
        self.client.shutdown()

    def queued(self) -> int:
        return int(self.client.queue.qsize())


class PostHog(Adapter):
    name = "posthog"
    default_queue_size = 10000

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        from posthog import Posthog

        options: dict[str, Any] = {"host": settings.url}
        if settings.queue_size is not None:
            options["max_queue_size"] = settings.queue_size
        if settings.batch_size is not None:
            options["flush_at"] = settings.batch_size
        if settings.flush_interval_s is not None:
            options["flush_interval"] = settings.flush_interval_s
        self.client = Posthog(WRITE_KEY, **options)
        self.call = functools.partial(
            self.client.capture, EVENT, distinct_id=USER, groups={"company": GROUP}
        )

    def flush(self, timeout: float) -> None:
        self.client.flush(timeout_seconds=timeout)

    def shutdown(self) -> None:
        self.client.shutdown()

    def queued(self) -> int:
        return int(self.client.queue.qsize())


ADAPTERS: dict[str, type[Adapter]] = {
    "klime_mp": KlimeMp,
    "klime_mp_spool": KlimeMpSpool,
    "klime": Klime,
    "segment": Segment,
    "posthog": PostHog,
}


def make(name: str, settings: Settings) -> Adapter:
    quiet_logging()
    return ADAPTERS[name](settings)


def quiet_logging() -> None:
    """An application with logging configured but quiet: SDK warnings are built and
    dispatched (their cost counts) but written nowhere, and Python's last-resort
    handler does not print them to stderr."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    root.setLevel(logging.WARNING)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("klime_mp", "klime", "segment-analytics-python", "posthog", "gunicorn"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "not installed"
    return found


def _wait(done: Callable[[], bool], timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True
