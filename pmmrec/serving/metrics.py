"""Prometheus metrics (prometheus_client): request counts and latency per endpoint, catalogue size, items added.

Each application has its own registry, so several applications in one process (tests) never share counters.
The endpoint label is the route's path template (`/items/{item_id}`), never the raw path, so ids do not create
new series; requests that match no route, or that are refused before routing (a body over the size limit), are
counted under `unmatched`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_CONVERTOR = re.compile(r"\{(\w+):\w+\}")  # /items/{item_id:path} -> /items/{item_id}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """The server's metrics and an ASGI middleware that records every HTTP request."""

    def __init__(self, catalogue_size: Callable[[], int], added: Callable[[], int], batches: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "pmmrec_http_requests_total", "HTTP requests answered.", ["method", "endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "pmmrec_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            ["method", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.items_added = Counter(
            "pmmrec_items_added_total", "Items added with POST /items by this server.", registry=self.registry
        )
        Gauge("pmmrec_catalogue_items", "Items in the catalogue, live ones included.", registry=self.registry).set_function(
            lambda: float(catalogue_size())
        )
        Gauge(
            "pmmrec_live_items", "Items added live (here or by other replicas of a shared store).", registry=self.registry
        ).set_function(lambda: float(added()))
        Gauge("pmmrec_ranking_batches", "Batches ranked by the micro-batcher so far.", registry=self.registry).set_function(
            lambda: float(batches())
        )

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def middleware(self, app: Any) -> Any:
        """Wrap an ASGI app so each HTTP request is counted and timed under its route template."""

        async def record(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def watch(message: dict[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            try:
                await app(scope, receive, watch)
            finally:
                route = scope.get("route")
                endpoint = _CONVERTOR.sub(r"{\1}", getattr(route, "path", None) or "unmatched")
                method = scope.get("method", "GET")
                self.requests.labels(method, endpoint, str(status)).inc()
                self.latency.labels(method, endpoint).observe(time.perf_counter() - started)

        return record
