"""Prometheus metrics (prometheus-client) for one service instance.

Requests by route template and status, latency histograms, and the served state: query
model version, live rows, index kind, generation switches, failed loads and how far
the served snapshot lags the store (staleness). One registry per app, so several
services (tests) in one process never share counters.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, staleness: Callable[[], float]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("gallery_http_requests", "HTTP requests by route template, method "
                                "and status", ["route", "method", "status"], registry=r)
        self.latency = Histogram("gallery_http_request_duration_seconds", "Request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_progress = Gauge("gallery_http_requests_in_progress", "Requests being served now",
                                 registry=r)
        self.model = Gauge("gallery_query_model", "1 for the query model version being served",
                           ["version"], registry=r)
        self.live_rows = Gauge("gallery_live_rows", "Live rows in the served snapshot", registry=r)
        self.index = Gauge("gallery_index", "1 for the kind of the served index", ["kind"], registry=r)
        self.switches = Counter("gallery_generation_switches", "Snapshots swapped in", registry=r)
        self.load_failures = Counter("gallery_generation_load_failures", "Failed snapshot loads",
                                     registry=r)
        self.load_seconds = Histogram("gallery_generation_load_seconds", "Time to load a snapshot",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.staleness = Gauge("gallery_staleness_seconds", "How long the served snapshot has lagged "
                               "a newer store generation (0 when current)", registry=r)
        self.staleness.set_function(staleness)

    def on_switcher(self, event: str, value: Any) -> None:
        """Switcher listener: keep the state gauges in step with the served snapshot."""
        if event == "swap":
            self.model.clear()
            self.model.labels(value.active_model).set(1)
            self.index.clear()
            self.index.labels(value.content.index.kind).set(1)
            self.live_rows.set(value.live)
            self.switches.inc()
        elif event == "load_failed":
            self.load_failures.inc()
        elif event == "load_seconds":
            self.load_seconds.observe(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI: counts and times every request under its route template (never the raw
    path, whose item ids would make one series per item)."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_progress.dec()
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
