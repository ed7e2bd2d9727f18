"""4. Fork: what happens to events around os.fork() and multiprocessing pools.

The parent tracks ``parent_events`` events (queued, not yet sent) and then forks:

* ``fork``: ``children`` processes from ``os.fork()``; each tracks a marker event,
  waits up to ``wait_s`` for it to arrive, tracks ``child_events`` more and leaves
  through a normal interpreter exit (``sys.exit``: atexit hooks run).
* ``pool``: a ``multiprocessing`` fork-context pool of ``children`` workers runs
  ``tasks`` tasks doing the same; pool workers leave through ``os._exit`` after
  multiprocessing's finalizers, never running atexit.

The parent then leaves through a normal exit too. Every event carries a unique
``properties.eid``, so whoever receives them (the sink or the real collector) tells
delivered, lost and duplicated events apart; markers give the time from a child's
first track() to its arrival. The gunicorn --preload mode lives in ``bench.gunicorn``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.sdks import Adapter, Settings, make

_sdk: Adapter | None = None  # inherited by the children
_config: dict[str, Any] = {}


def expected_eids(config: dict[str, Any]) -> list[str]:
    """Every eid the run should deliver exactly once (parent's and children's)."""
    eids = [f"p-{i}" for i in range(config["parent_events"])]
    count = config["children"] if config["mode"] == "fork" else config["tasks"]
    tag = "f" if config["mode"] == "fork" else "t"
    for k in range(count):
        eids.extend(f"{tag}{k}-{i}" for i in range(config["child_events"] + 1))
    return eids


def _track(sdk: Adapter, eid: str, marker: str | None = None) -> None:
    props: dict[str, Any] = {"report_type": "revenue", "eid": eid}
    if marker is not None:
        props["marker"] = marker
    sdk.call(properties=props)


def _arrived(marker: str) -> bool:
    control = _config.get("control")
    if not control:
        return False
    with urllib.request.urlopen(f"{control}/marker?m={marker}", timeout=5) as reply:
        return json.load(reply)["ns"] is not None


def _child_work(tag: str) -> int:
    """A child's life: marker, wait for it (bounded), the rest. Returns the marker's
    track() time (time.monotonic_ns)."""
    assert _sdk is not None
    started = time.monotonic_ns()
    _track(_sdk, f"{tag}-0", marker=tag)
    deadline = time.monotonic() + _config["wait_s"]
    while time.monotonic() < deadline and not _arrived(tag):
        time.sleep(0.02)
    for i in range(1, _config["child_events"] + 1):
        _track(_sdk, f"{tag}-{i}")
    return started


def _pool_task(k: int) -> tuple[str, int]:
    tag = f"t{k}"
    return tag, _child_work(tag)


def run_fork_workload(config: dict[str, Any], out: str) -> None:
    global _sdk
    _config.update(config)
    _sdk = make(
        config["sdk"], Settings(url=config["url"], flush_interval_s=config["flush_interval_s"])
    )
    for i in range(config["parent_events"]):
        _track(_sdk, f"p-{i}")
    starts: dict[str, int] = {}
    if config["mode"] == "fork":
        starts = _run_forks(config, Path(out).parent)
    else:
        ctx = multiprocessing.get_context("fork")
        pool = ctx.Pool(config["children"])
        starts = dict(pool.map(_pool_task, range(config["tasks"]), chunksize=1))
        pool.close()
        pool.join()
    with open(out, "w") as result:
        json.dump({"starts_ns": starts, "expected": expected_eids(config)}, result)
    # The parent leaves like an application does: a normal exit, exit hooks and all.
    sys.exit(0)


def _run_forks(config: dict[str, Any], folder: Path) -> dict[str, int]:
    pids = []
    for k in range(config["children"]):
        tag = f"f{k}"
        pid = os.fork()
        if pid == 0:
            _fork_child(tag, folder)
        pids.append((tag, pid))
    starts = {}
    for tag, pid in pids:
        os.waitpid(pid, 0)
        path = folder / f"{tag}.start"
        if path.exists():
            starts[tag] = int(path.read_text())
    return starts


def _fork_child(tag: str, folder: Path) -> None:
    try:
        started = _child_work(tag)
        (folder / f"{tag}.start").write_text(str(started))
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)
    # A normal interpreter exit, as a forked script that simply ends would take.
    sys.exit(0)
