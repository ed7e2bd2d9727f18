"""Queue each user's tasks and wait for their results (what a web app's views would do).

    python send_tasks.py [--users N] [--reports N]

Prints how many tasks ran and how many Klime events they tracked, and which pool
processes ran them.
"""

from __future__ import annotations

import argparse
from collections import Counter

from tasks import export_report, join_organization, sign_in


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--reports", type=int, default=3)
    args = parser.parse_args()
    results = []
    for user in range(args.users):
        user_id, org_id = f"usr_{user}", f"org_{user % 2}"
        results.append(sign_in.delay(user_id, f"user{user}@example.com"))
        results.append(join_organization.delay(user_id, org_id, f"Org {user % 2}"))
        for report in range(args.reports):
            results.append(export_report.delay(user_id, org_id, f"type_{report}"))
    pids = Counter(result.get(timeout=60) for result in results)
    events = args.users * (2 + 2 + args.reports)
    print(f"ran {len(results)} tasks tracking {events} events in {len(pids)} pool processes")


if __name__ == "__main__":
    main()
