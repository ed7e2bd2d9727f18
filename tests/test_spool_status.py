"""``klime-mp spool status`` names each app by the endpoint it sends to, never by its
write key: an operator looking at a full disk must know whose events wait there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from klime_mp import KlimeClient

pytestmark = pytest.mark.timeout(60)

SECRET_KEY = "wk-secret-0123"


def test_status_shows_each_apps_endpoint_and_never_the_key(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    # Nothing listens on either port: the events stay pending in the spool.
    endpoints = ["http://127.0.0.1:9/", "http://proxyuser:pa55word@127.0.0.1:7/klime"]
    for endpoint in endpoints:
        client = KlimeClient(SECRET_KEY, endpoint, spool_dir=spool, send=False)
        client.track("Spooled", user_id="usr_1")
        client.shutdown()

    command = [sys.executable, "-m", "klime_mp", "spool", "status", str(spool)]
    table = subprocess.run(command, capture_output=True, text=True, timeout=30)
    as_json = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=30)

    assert table.returncode == 0, table.stderr
    shown = {row.split()[1] for row in table.stdout.splitlines()[1:]}
    assert shown == {"http://127.0.0.1:9", "http://127.0.0.1:7/klime"}
    assert {entry["endpoint"] for entry in json.loads(as_json.stdout)} == shown
    everything = table.stdout + as_json.stdout
    for secret in (SECRET_KEY, "pa55word", "proxyuser"):
        assert secret not in everything
        for path in spool.rglob("*.endpoint"):
            assert secret not in path.read_text()
            assert path.stat().st_mode & 0o777 == 0o600
    assert "skipping" not in table.stderr  # the endpoint files are not taken for strays


def test_status_marks_an_app_directory_without_an_endpoint_file(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    client = KlimeClient(SECRET_KEY, "http://127.0.0.1:9", spool_dir=spool, send=False)
    client.track("Spooled", user_id="usr_1")
    client.shutdown()
    for path in spool.glob("*.endpoint"):
        os.unlink(path)  # as a directory made by klime_mp 0.1.0

    command = [sys.executable, "-m", "klime_mp", "spool", "status", str(spool)]
    table = subprocess.run(command, capture_output=True, text=True, timeout=30)

    assert table.stdout.splitlines()[1].split()[1] == "?"
