"""Module-level calls on one default client, like the Elixir SDK's application config.

``configure()`` belongs in the pre-fork master (Gunicorn ``--preload``, a Celery
parent): it validates and records settings and starts nothing, so the master stays
single-threaded and every worker starts its own sender on its first event.
"""

from __future__ import annotations

from typing import Any

from klime_mp import host_hooks
from klime_mp.client import KlimeClient, Properties
from klime_mp.events import Id
from klime_mp.lifecycle import forksafe
from klime_mp.timestamps import Timestamp

_default: KlimeClient | None = None


def configure(write_key: str | None = None, **options: Any) -> KlimeClient:
    """Create the default client (replacing, after flushing, any earlier one).

    Takes every ``KlimeClient`` argument; ``write_key`` falls back to KLIME_WRITE_KEY.
    Starts no thread and opens no socket. Inside uWSGI or a Celery worker it hooks
    their exit paths too (``klime_mp.host_hooks``), in the master before it forks."""
    global _default
    client = KlimeClient(write_key, **options)  # validate before replacing anything
    host_hooks.install_for_process(forksafe.getpid())
    with forksafe.process_lock():
        previous, _default = _default, client
    if previous is not None:
        previous.shutdown()
    return client


def get_client() -> KlimeClient:
    """The default client; created from the environment (KLIME_WRITE_KEY) if
    ``configure()`` was not called."""
    global _default
    client = _default
    if client is not None:
        return client
    with forksafe.process_lock():
        if _default is None:
            try:
                _default = KlimeClient()
            except ValueError as exc:
                raise ValueError(f"{exc}; or call klime_mp.configure() first") from None
        return _default


def current() -> KlimeClient | None:
    """The default client if there is one; never creates it."""
    return _default


def track(
    event: str,
    properties: Properties = None,
    user_id: Id | None = None,
    group_id: Id | None = None,
    *,
    timestamp: Timestamp | None = None,
    message_id: str | None = None,
) -> None:
    get_client().track(
        event,
        properties,
        user_id=user_id,
        group_id=group_id,
        timestamp=timestamp,
        message_id=message_id,
    )


def identify(
    user_id: Id,
    traits: Properties = None,
    *,
    timestamp: Timestamp | None = None,
    message_id: str | None = None,
) -> None:
    get_client().identify(user_id, traits, timestamp=timestamp, message_id=message_id)


def group(
    group_id: Id,
    traits: Properties = None,
    user_id: Id | None = None,
    *,
    timestamp: Timestamp | None = None,
    message_id: str | None = None,
) -> None:
    get_client().group(
        group_id, traits, user_id=user_id, timestamp=timestamp, message_id=message_id
    )


def flush(timeout: float | None = None) -> bool:
    """Flush the default client (a no-op returning True if there is none)."""
    client = _default
    return True if client is None else client.flush(timeout)


async def flush_async(timeout: float | None = None) -> bool:
    """``flush()`` for async code: waits in a thread, never blocking the event loop."""
    client = _default
    return True if client is None else await client.flush_async(timeout)


def shutdown() -> bool:
    """Shut the default client down in this process (True if there is none)."""
    client = _default
    return True if client is None else client.shutdown()
