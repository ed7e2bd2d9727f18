"""The Klime API's limits, path and batch framing: their one home.

The sender, the spool's recovery, the importer and the local collector all read them
here, so a limit the API changes is changed once.
"""

from __future__ import annotations

from collections.abc import Sequence

BATCH_PATH = "/v1/batch"  # what requests go to, under the endpoint
MAX_EVENT_BYTES = 200 * 1024  # one event, serialized
MAX_BODY_BYTES = 10 * 1024 * 1024  # one request body
MAX_BATCH_SIZE = 100  # events in one request

_OPEN, _SEPARATOR, _CLOSE = b'{"batch":[', b",", b"]}"
# What the events of one batch may add up to, separators included, so that the framed
# body stays within MAX_BODY_BYTES.
BATCH_BYTES = MAX_BODY_BYTES - len(_OPEN) - len(_CLOSE)


def batch_body(events: Sequence[bytes]) -> bytes:
    """The request body for already-serialized events: ``{"batch":[e1,e2,...]}``."""
    return _OPEN + _SEPARATOR.join(events) + _CLOSE
