"""A local Klime-compatible collector (HTTP + SQLite) for tests and benchmarks.

Standard library only: ``Collector`` serves the Klime ingestion API on loopback, stores
events de-duplicated by messageId, counts what it saw, and can misbehave on purpose
according to a ``FaultPlan``.
"""

from __future__ import annotations

from .faults import FaultPlan
from .service import Collector
from .stats import CollectorStats

__all__ = ["Collector", "CollectorStats", "FaultPlan"]
