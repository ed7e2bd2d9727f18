"""klime_mp: a Klime analytics client that is safe under fork and multiprocessing.

Public API: ``KlimeClient`` (a drop-in for ``klime.KlimeClient``) and module-level
calls on a default client (``configure``, ``track``, ``identify``, ``group``, ``flush``,
``flush_async``, ``shutdown``).
"""

from __future__ import annotations

from klime_mp._version import __version__
from klime_mp.client import KlimeClient
from klime_mp.default import (
    configure,
    flush,
    flush_async,
    get_client,
    group,
    identify,
    shutdown,
    track,
)
from klime_mp.delivery.accounting import Stats
from klime_mp.errors import DeliveryError, EventTooLargeError, KlimeError, LossReport, SendError
from klime_mp.options import Options
from klime_mp.responses import BatchResponse, ValidationError

__all__ = [
    "BatchResponse",
    "DeliveryError",
    "EventTooLargeError",
    "KlimeClient",
    "KlimeError",
    "LossReport",
    "Options",
    "SendError",
    "Stats",
    "ValidationError",
    "__version__",
    "configure",
    "flush",
    "flush_async",
    "get_client",
    "group",
    "identify",
    "shutdown",
    "track",
]
