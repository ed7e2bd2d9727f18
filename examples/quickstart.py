"""Send a few events to the endpoint in KLIME_ENDPOINT (the local collector, say).

klime-mp collector --port 8800 --db events.sqlite3 &
KLIME_WRITE_KEY=dev KLIME_ENDPOINT=http://127.0.0.1:8800 python examples/quickstart.py
"""

from __future__ import annotations

import klime_mp


def main() -> int:
    client = klime_mp.configure()  # KLIME_WRITE_KEY and KLIME_ENDPOINT from the environment
    klime_mp.identify("usr_abc123", {"email": "jane@acme.com", "name": "Jane Smith"})
    klime_mp.group("org_456", {"name": "Acme Inc", "plan": "enterprise"}, user_id="usr_abc123")
    for report in ("revenue", "churn", "usage"):
        klime_mp.track("Report Generated", {"report_type": report}, user_id="usr_abc123")
    delivered = klime_mp.shutdown()
    stats = client.stats()
    print(f"sent {stats.sent} events in {stats.batches} batch(es); all delivered: {delivered}")
    return 0 if delivered else 1


if __name__ == "__main__":
    raise SystemExit(main())
