"""Percentiles of one run, and the median with min-max over several runs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

Summary = dict[str, Any]  # {"median", "min", "max", "runs"}

LATENCY_LEVELS = (0.5, 0.9, 0.99, 0.999, 0.9999)
TIMES = "\u00d7"  # the multiplication sign, written so linters see it is meant
DASH = "\u2013"  # the en dash of "min-max"


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..1)."""
    if not ordered:
        return math.nan
    rank = max(math.ceil(q * len(ordered)), 1)
    return float(ordered[rank - 1])


def summarize(values: Sequence[float | None]) -> Summary:
    """Median with min and max over runs; runs without a value are left out."""
    present = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not present:
        return {"median": None, "min": None, "max": None, "runs": list(values)}
    return {
        "median": statistics.median(present),
        "min": min(present),
        "max": max(present),
        "runs": list(values),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    if math.isnan(numerator) or math.isnan(denominator):
        return None
    return numerator / denominator
