"""Prometheus metrics (README, "Metrics"): one registry per app, bounded label values only.

A registry per app rather than prometheus-client's global one: the tests (and a cluster replica
that builds several apps) create many apps in one process, and each /metrics must describe its own
worker, not the sum of every app ever built.

Labels never take a client-chosen value: routes are templates (`/api/jobs/{job_id}`), unknown
paths share UNMATCHED_ROUTE, unknown methods share "OTHER", rejection reasons and cache results come
from fixed sets. A scan of random URLs therefore adds no series.

Hooks for the other concerns:
- rejections (`catvton_rejected_total`) and cache hits (`catvton_cache_requests_total`) are counted
  by the middleware from the request's context (app/edge/context.py): the error code that the
  error envelope records, and `cached` (True: hit, False: miss), which the try-on flow sets where
  it consults the cache. Nothing to call.
- `ServiceMetrics.watch_jobs(counts)`: an async callable returning the job store's
  `{status: count}`, awaited at each scrape for `catvton_jobs` (async: the store may be Redis).
- `ServiceMetrics.observe_inference(outcome, stage_seconds)`: the worker's listener.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.routing import Match

from app.edge.context import RequestContext
from app.edge.envelope import HTTP_METHODS
from app.inference.contract import Worker
from app.jobs.records import JobStatus

UNMATCHED_ROUTE = "unmatched"
KNOWN_METHODS = frozenset(HTTP_METHODS)
INFERENCE_OUTCOMES = ("ok", "out_of_memory", "canceled", "error")
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
CACHE_RESULTS = ("hit", "miss")
# Error codes that mean "refused by policy or capacity", not "bad input": catvton_rejected_total.
REJECTION_REASONS = (
    "unauthorized",
    "rate_limited",
    "too_many_active_requests",
    "too_many_streams",
    "gpu_busy",
    "shutting_down",
    "models_loading",
    "upload_timeout",
)
# Seconds: /health answers in milliseconds, a try-on on a GPU in seconds, on a CPU in minutes.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)

JobCounts = Callable[[], Awaitable[Mapping[str, int]]]


def route_template(scope: Mapping[str, Any]) -> str:
    """The template of the route that served (or would serve) this request, else UNMATCHED_ROUTE.

    The router records the route it chose in `scope["route"]`; a request refused before routing
    (a missing key, a rate limit) is matched here against the same routes.
    """
    route = scope.get("route")
    if route is None:
        route = _match(getattr(getattr(scope.get("app"), "router", None), "routes", ()), scope)
    return getattr(route, "path_format", None) or UNMATCHED_ROUTE


def _match(routes: Iterable[Any], scope: Mapping[str, Any]) -> Any:
    """The first fully matching route, else the first partial one (a 405), else None. FastAPI
    wraps an included router in a route-like object with the router as `original_router`."""
    partial = None
    for candidate in routes:
        match, _ = candidate.matches(scope)
        if match is Match.NONE:
            continue
        included = getattr(candidate, "original_router", None)
        if included is not None:
            candidate = _match(included.routes, scope)
        if match is Match.FULL and candidate is not None:
            return candidate
        partial = partial or candidate
    return partial


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "OTHER"


class ServiceMetrics:
    """Every metric of the spec's table in one registry; `/metrics` renders `registry`."""

    def __init__(self, worker: Worker) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "catvton_http_requests_total",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "catvton_http_request_duration_seconds",
            "Time from the request's first byte to its last response byte, by route template",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "catvton_inference_seconds",
            "Seconds per inference stage on the device (total: the whole inference)",
            ["stage"],
            buckets=INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.inferences = Counter(
            "catvton_inferences_total",
            "Inferences run, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.cache_requests = Counter(
            "catvton_cache_requests_total",
            "Result cache look-ups, by result",
            ["result"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "catvton_rejected_total",
            "Requests refused by policy or capacity, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.jobs = Gauge("catvton_jobs", "Jobs by status", ["status"], registry=self.registry)
        # Known label values start at 0, so rate() and increase() see the first event.
        for outcome in INFERENCE_OUTCOMES:
            self.inferences.labels(outcome)
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason)
        for status in JOB_STATUSES:
            self.jobs.labels(status)
        self._job_counts: JobCounts | None = None
        self.registry.register(_WorkerStateCollector(worker))

    def watch_jobs(self, counts: JobCounts) -> None:
        """Report `await counts()` (status -> number of jobs) as `catvton_jobs` at every scrape."""
        self._job_counts = counts

    async def refresh(self) -> None:
        """Read what only an await can read (the job store) before a scrape renders."""
        if self._job_counts is not None:
            counts = await self._job_counts()
            for status in JOB_STATUSES:  # a status no job has any more reads 0
                self.jobs.labels(status).set(counts.get(status, 0))

    def observe_request(
        self, route: str, method: str, status: int, seconds: float, context: RequestContext
    ) -> None:
        """One finished request; `context` says its error code and cache use."""
        self.requests.labels(route, method_label(method), str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)
        if (reason := context.error_code) in REJECTION_REASONS:
            self.rejected.labels(reason).inc()
        if context.cached is not None:
            result = CACHE_RESULTS[0] if context.cached else CACHE_RESULTS[1]
            self.cache_requests.labels(result).inc()

    def observe_inference(self, outcome: str, stage_seconds: Mapping[str, float]) -> None:
        """The worker's listener (device thread; prometheus-client is thread-safe)."""
        self.inferences.labels(outcome).inc()
        for stage, seconds in stage_seconds.items():
            self.inference_seconds.labels(stage).observe(seconds)


def metrics_of(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


class _WorkerStateCollector(Collector):
    """Gauges read from the worker's status at scrape time: always current, nothing to keep in
    step (the same snapshot /health renders)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        status = self.worker.status()
        yield GaugeMetricFamily(
            "catvton_queue_depth", "Requests waiting for the device", value=status.queue_depth
        )
        yield GaugeMetricFamily(
            "catvton_model_loaded", "1 once the models are loaded", value=int(status.model_loaded)
        )
        if (memory := status.gpu) is not None:
            gpu = GaugeMetricFamily(
                "catvton_gpu_memory_bytes", "CUDA memory of the device, by kind", labels=["kind"]
            )
            for kind in ("allocated", "reserved", "total"):
                gpu.add_metric([kind], getattr(memory, kind))
            yield gpu
