"""What the Flask example tracks, checked with klime_mp's pytest fixture: nothing is
sent, and a test fails if an expected event is missing. Run: pytest examples/flask_app"""

from __future__ import annotations

from typing import Any

from app import create_app


def test_a_session_tracks_sign_in_join_and_report(klime_events: list[dict[str, Any]]) -> None:
    web = create_app({"KLIME_WRITE_KEY": "test-key", "TESTING": True}).test_client()
    web.post("/login", json={"user_id": "usr_1", "email": "jane@acme.com", "name": "Jane"})
    web.post("/orgs/org_1/join", json={"org_name": "Acme"})
    web.post("/reports", json={"report_type": "cost"})
    tracked = [(e["type"], e.get("event")) for e in klime_events]
    assert tracked == [
        ("identify", None),
        ("track", "Signed In"),
        ("group", None),
        ("track", "Organization Joined"),
        ("track", "Report Generated"),
    ]
    report = klime_events[-1]
    assert report["properties"] == {"report_type": "cost"}
    assert (report["userId"], report["groupId"]) == ("usr_1", "org_1")
