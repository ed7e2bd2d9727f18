"""``before_send``: the app's last look at each event before it leaves the process.

The hook gets the event as a dict decoded from its encoding, so it sees exactly what
will be sent (wire keys, ``messageId``, the timestamp, values already converted: a
datetime is its ISO text) and owns that dict: changing it changes neither the caller's
properties nor any other event. What it returns is encoded again and sent; ``None``
drops the event. The client, its ``*_sync`` calls and ``klime-mp import`` all screen
through ``screen`` here, so they treat a hook's answer the same way.
"""

from __future__ import annotations

import json

from klime_mp import events, values
from klime_mp.errors import BeforeSendError
from klime_mp.options import BeforeSend

# Stats.dropped keys. FILTERED is the app's own choice (sampling, a test user): counted,
# never logged or reported as a loss. FAILED is a loss: counted, logged, on_error.
FILTERED = "before_send"
FAILED = "before_send_error"


def screen(hook: BeforeSend, data: bytes) -> bytes | None:
    """Pass one encoded event through ``hook``: the encoding of what it returned, or
    None when it dropped the event. BeforeSendError when the hook raised or returned
    what cannot be sent."""
    try:
        kept = hook(json.loads(data))
    except Exception as exc:
        raise BeforeSendError(f"before_send raised {type(exc).__name__}: {exc}") from exc
    if kept is None:
        return None
    if not isinstance(kept, dict):
        raise BeforeSendError(f"before_send must return a dict or None, got {type(kept).__name__}")
    try:
        # The server de-duplicates by messageId: an id the hook broke would lose events.
        values.message_id(kept.get("messageId"), "the messageId before_send returned")
        return events.serialize(kept)
    except (TypeError, ValueError) as exc:
        raise BeforeSendError(f"before_send returned an event that cannot be sent: {exc}") from None
