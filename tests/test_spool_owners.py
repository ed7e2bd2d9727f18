"""Whose files a spool trusts: a log of another user in our app directory is never sent
with our key (it may have been planted) nor deleted; an app directory that others can read
is narrowed to 0700, one that another user owns is refused; every directory the spool
creates is 0700, parents included. (The tests run as root: another owner is made with
``os.chown`` to uid 65534, ``nobody``.)
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from klime_mp import KlimeClient
from klime_mp.collector import Collector
from klime_mp.errors import SpoolUnavailable
from klime_mp.spool import log as spool

KEY = "owners-key"
NOBODY = 65534
STAMP = "2024-05-01T12:00:00.000Z"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def event(index: int) -> bytes:
    body = {"type": "track", "event": "Planted", "userId": "u", "messageId": f"p{index}"}
    return json.dumps({**body, "timestamp": STAMP}).encode()


def leave_orphan(app: Path, count: int) -> None:
    log = spool.EventLog.open(app, max_bytes=1 << 30, on_loss=lambda reason, records: None)
    for index in range(count):
        log.append(event(index))
    log.close()


@pytest.mark.parametrize("owned", ["ledger", "segment"])
def test_a_log_of_another_user_is_not_sent_with_our_key(
    tmp_path: Path, collector: Collector, caplog: pytest.LogCaptureFixture, owned: str
) -> None:
    spool_dir = tmp_path / "spool"
    app = spool.app_directory(spool_dir, collector.url, KEY)
    leave_orphan(app, 20)
    (target,) = app.glob("*.ledger" if owned == "ledger" else "*.seg")
    os.chown(target, NOBODY, NOBODY)
    files = sorted(path.name for path in app.iterdir())
    with caplog.at_level(logging.WARNING, logger="klime_mp.spool"):
        client = KlimeClient(KEY, collector.url, spool_dir=spool_dir, shutdown_timeout=10)
        client.track("Ours", user_id="u")
        assert client.shutdown() is True
    assert client.stats().recovered == 0
    assert collector.stats().stored == 1  # ours only
    assert sorted(path.name for path in app.iterdir()) == files  # left as it is
    warnings = [r.getMessage() for r in caplog.records if "uid 65534" in r.getMessage()]
    assert len(warnings) == 1, warnings


def test_an_app_directory_others_can_read_is_narrowed_to_0700(tmp_path: Path) -> None:
    app = tmp_path / "spool" / "0123456789abcdef"
    app.mkdir(parents=True)
    app.chmod(0o755)
    log = spool.EventLog.open(app, max_bytes=1 << 30, on_loss=lambda reason, records: None)
    assert stat.S_IMODE(app.stat().st_mode) == 0o700
    log.close()


def test_an_app_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    app = tmp_path / "spool" / "0123456789abcdef"
    app.mkdir(parents=True, mode=0o700)
    os.chown(app, NOBODY, NOBODY)
    with pytest.raises(SpoolUnavailable, match="belongs to uid 65534"):
        spool.EventLog.open(app, max_bytes=1 << 30, on_loss=lambda reason, records: None)
    assert list(app.iterdir()) == []


def test_every_directory_the_spool_creates_is_0700_parents_included(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask: os.makedirs would leave parents 0755
    try:
        spool_dir = tmp_path / "a" / "b" / "spool"
        app = spool.app_directory(spool_dir, "http://127.0.0.1:9", KEY)
        log = spool.EventLog.open(app, max_bytes=1 << 30, on_loss=lambda reason, records: None)
        log.close()
    finally:
        os.umask(old)
    for path in (tmp_path / "a", tmp_path / "a" / "b", spool_dir, app):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
