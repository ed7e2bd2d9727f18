"""The examples in the README run as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import CollectorProcess

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_delivers_its_events(collector_process: CollectorProcess) -> None:
    env = {**os.environ, "KLIME_WRITE_KEY": "dev", "KLIME_ENDPOINT": collector_process.url}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "sent 5 events" in result.stdout
    assert collector_process.stats()["stored"] == 5
    types = [event["type"] for event in collector_process.events()]
    assert types == ["identify", "group", "track", "track", "track"]
