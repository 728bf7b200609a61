"""Prometheus metrics, one registry per app (several apps can live in one test process).

Request latency is labelled by route template (not the raw path, whose ids would make
unbounded label sets). Queue depth, index size and lag are read at scrape time."""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _StateCollector:
    def __init__(self, app) -> None:
        self.app = app

    def collect(self):
        service = self.app.state.service
        size = GaugeMetricFamily("identity_index_faces", "Faces in the search index")
        lag = GaugeMetricFamily("identity_index_lag", "Change-log entries committed but not yet in the index")
        if service.opened()["index"]:
            try:
                status = service.index.status()
                size.add_metric([], status.count)
                if status.lag is not None:
                    lag.add_metric([], status.lag)
            except Exception as exc:  # a scrape must never fail
                log.warning("metrics: index status unavailable (%s)", exc)
        yield size
        yield lag
        depth = queue_depth(service.settings)
        if depth is not None:
            queue = GaugeMetricFamily("identity_queue_depth", "Tasks waiting in the worker queue")
            queue.add_metric([], depth)
            yield queue


def queue_depth(settings) -> int | None:
    if not settings.workers.broker_url:
        return None
    try:
        import redis

        from identity.runners.celery import QUEUE

        client = redis.Redis.from_url(settings.workers.broker_url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return int(client.llen(QUEUE))
        finally:
            client.close()
    except Exception as exc:
        log.warning("metrics: queue depth unavailable (%s)", exc)
        return None


class Metrics:
    def __init__(self, app) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "identity_request_seconds", "HTTP request latency", ["method", "route", "status"],
            buckets=BUCKETS, registry=self.registry,
        )
        self.faces_embedded = Counter(
            "identity_faces_embedded", "Faces embedded by this API process", registry=self.registry
        )
        self.registry.register(_StateCollector(app))

    async def middleware(self, scope, receive, send, app) -> None:
        """Time one HTTP request (a plain ASGI wrapper: Starlette's BaseHTTPMiddleware
        costs a task and a stream per request, several percent of a search's CPU)."""
        start = time.perf_counter()
        status = 500

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.latency.labels(scope["method"], template, str(status)).observe(time.perf_counter() - start)


class MetricsMiddleware:
    def __init__(self, app, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.metrics.middleware(scope, receive, send, self.app)
