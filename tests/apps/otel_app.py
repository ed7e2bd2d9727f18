"""A WSGI app that reads klime_mp's OpenTelemetry metrics in its own worker.

Imported once in the Gunicorn master (``--preload``): the MeterProvider, its in-memory
reader and the client are set up there, before the fork, as an app with a metrics
exporter would. ``/track`` tracks one event; ``/metrics`` flushes, then answers what the
reader collects in this worker, as JSON ({name: {reason or "": value}}).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any, Callable

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import klime_mp

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
klime_mp.configure(flush_interval=600_000)  # KLIME_WRITE_KEY, KLIME_ENDPOINT


def collected() -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            if scope.scope.name != "klime_mp":
                continue
            for metric in scope.metrics:
                points = found.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    points[str(point.attributes.get("reason", ""))] = point.value
    return found


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    body: Any = {"pid": os.getpid()}
    if path == "/track":
        klime_mp.track("Metered", {"worker_pid": os.getpid()}, user_id="usr_1")
    elif path == "/metrics":
        klime_mp.flush(10)
        body["metrics"] = collected()
    payload = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [payload]
