"""Print the figures of a reliability run as the Markdown tables of docs/reliability.md.

KLIME_RELIABILITY_REPORT_DIR=/tmp/rel python -m pytest tests/reliability tests/test_fuzz.py
python tests/reliability/report.py /tmp/rel
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def load(folder: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def faults(figures: dict[str, Any]) -> str:
    injected = figures["faults_injected"]
    return ", ".join(f"{kind} {count}" for kind, count in injected.items()) or "none"


def row(*cells: Any) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def chaos_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        row(
            "run",
            "batch requests",
            "faults injected",
            "tracked",
            "stored",
            "lost",
            "duplicated (raw)",
            "unavoidable (unacknowledged)",
        ),
        row(*["---"] * 8),
    ]
    for name in ("chaos_gunicorn", "chaos_pool"):
        if name in runs:
            r = runs[name]
            lines.append(
                row(
                    r["run"],
                    r["batch_requests"],
                    faults(r),
                    r["events_tracked"],
                    r["events_stored"],
                    r["events_lost"],
                    r["duplicates_raw"],
                    r["unacknowledged"],
                )
            )
    return lines


def fault_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        row(
            "fault (30 % of batches unless noted)",
            "faults injected",
            "tracked",
            "stored",
            "duplicated (raw)",
            "unavoidable",
        ),
        row(*["---"] * 6),
    ]
    for name, r in runs.items():
        if name.startswith("fault_"):
            lines.append(
                row(
                    name[6:],
                    faults(r),
                    r["events_tracked"],
                    r["stored"],
                    r["duplicates_raw"],
                    r["unacknowledged"],
                )
            )
    return lines


def main() -> None:
    runs = load(Path(sys.argv[1]))
    python = {r["python"] for r in runs.values()}
    print(f"Python {', '.join(sorted(python))}\n")
    print("\n".join(chaos_table(runs)), end="\n\n")
    print("\n".join(fault_table(runs)), end="\n\n")
    for name in (
        "soak_server_down",
        "exit_server_down_refused",
        "exit_server_down_black_hole",
        "fuzz_client",
        "fuzz_collector",
        "torture",
        "torture_long",
    ):
        if name in runs:
            figures = {k: v for k, v in runs[name].items() if k not in ("samples", "name")}
            print(f"{name}: {json.dumps(figures)}")


if __name__ == "__main__":
    main()
