"""GET /metrics over real HTTP (README, "Metrics"): exact counts, histograms, few series."""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_helpers import (
    FAST,
    assert_envelope,
    post_try_on,
    serve,
    tiny_settings,
    try_on_parts,
    wait_until_ready,
)
from prometheus_client.parser import text_string_to_metric_families

from app.inference.worker import InferenceWorker
from app.observe.metrics import UNMATCHED_ROUTE, ServiceMetrics
from app.settings import Settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def server(tiny_weights: Path) -> Iterator[str]:
    with serve(tiny_settings(tiny_weights)) as base_url:
        assert wait_until_ready(base_url)["status"] == "ok"
        yield base_url


def scrape(base_url: str) -> Samples:
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if not sample.name.endswith("_created")  # creation times, not counts
    }


def delta(before: Samples, after: Samples) -> Samples:
    """Every sample that moved, by how much (new samples count from 0)."""
    return {
        key: value - before.get(key, 0) for key, value in after.items() if value != before.get(key)
    }


def requests_key(route: str, method: str, status: int) -> tuple[str, frozenset]:
    labels = {"route": route, "method": method, "status": str(status)}
    return ("catvton_http_requests_total", frozenset(labels.items()))


def test_counters_move_by_exactly_the_requests_made(server: str) -> None:
    before = scrape(server)
    for _ in range(3):
        httpx.get(f"{server}/health")
    httpx.get(f"{server}/no/such/page")
    httpx.get(f"{server}/api/try-on")  # 405: the route's template, not "unmatched"
    changed = delta(before, scrape(server))
    counted = {key: value for key, value in changed.items() if key[0].endswith("_total")}
    assert counted == {
        requests_key("/health", "GET", 200): 3,
        requests_key(UNMATCHED_ROUTE, "GET", 404): 1,
        requests_key("/api/try-on", "GET", 405): 1,
        requests_key("/metrics", "GET", 200): 1,  # the first scrape
    }
    health = frozenset({("route", "/health")})
    assert changed[("catvton_http_request_duration_seconds_count", health)] == 3


def test_a_try_on_lands_in_the_request_and_inference_histograms(server: str) -> None:
    before = scrape(server)
    response = post_try_on(server, try_on_parts(**FAST))
    assert response.status_code == 200
    changed = delta(before, scrape(server))
    route = frozenset({("route", "/api/try-on")})
    assert changed[("catvton_http_request_duration_seconds_count", route)] == 1
    assert changed[requests_key("/api/try-on", "POST", 200)] == 1
    infinite = frozenset({("route", "/api/try-on"), ("le", "+Inf")})
    assert changed[("catvton_http_request_duration_seconds_bucket", infinite)] == 1
    for stage in ("mask", "denoise", "decode", "total"):
        key = ("catvton_inference_seconds_count", frozenset({("stage", stage)}))
        assert changed[key] == 1, stage
    ok = ("catvton_inferences_total", frozenset({("outcome", "ok")}))
    assert changed[ok] == 1
    total = ("catvton_inference_seconds_sum", frozenset({("stage", "total")}))
    duration = ("catvton_http_request_duration_seconds_sum", route)
    assert 0 < changed[total] < changed[duration]


def test_a_thousand_random_paths_and_methods_add_no_series(server: str) -> None:
    rng = random.Random(0)

    def random_request(client: httpx.Client) -> None:
        path = "/" + "".join(rng.choices(string.ascii_letters + string.digits, k=12))
        method = rng.choice(["GET", "POST", "DELETE", "PROPFIND", "X" + path[1:7].upper()])
        client.request(method, path + "?id=" + path[1:])

    with httpx.Client(base_url=server, timeout=10) as client:
        for _ in range(5):  # the first few create the one "unmatched" series per method group
            random_request(client)
        series_before = scrape(server).keys()
        for _ in range(1000):
            random_request(client)
    scraped = httpx.get(f"{server}/metrics").text
    series_after = scrape(server).keys()
    assert series_after == series_before
    assert "PROPFIND" not in scraped and 'method="OTHER"' in scraped


def test_state_gauges_and_no_gpu_series_on_the_cpu(server: str) -> None:
    samples = scrape(server)
    assert samples[("catvton_queue_depth", frozenset())] == 0
    assert samples[("catvton_model_loaded", frozenset())] == 1
    assert not any(name == "catvton_gpu_memory_bytes" for name, _ in samples)
    for outcome in ("ok", "out_of_memory", "canceled", "error"):  # known values start at 0
        assert ("catvton_inferences_total", frozenset({("outcome", outcome)})) in samples


def test_draining_answers_health_503_and_counts_the_refused_try_on(tiny_weights: Path) -> None:
    settings = tiny_settings(tiny_weights)
    worker = InferenceWorker.from_settings(settings)
    with serve(settings, worker) as base_url:
        wait_until_ready(base_url)
        before = scrape(base_url)
        worker.begin_drain()
        health = httpx.get(f"{base_url}/health")
        assert (health.status_code, health.json()["status"]) == (503, "draining")
        refused = post_try_on(base_url, try_on_parts(**FAST))
        assert_envelope(refused, 503, "shutting_down", "shutting down")
        changed = delta(before, scrape(base_url))
        assert changed[("catvton_rejected_total", frozenset({("reason", "shutting_down")}))] == 1
        assert changed[requests_key("/api/try-on", "POST", 503)] == 1


def test_every_job_status_has_a_series_at_0_right_after_the_start(tiny_weights: Path) -> None:
    """Known label values start at 0: before the first job there used to be no catvton_jobs."""
    with serve(tiny_settings(tiny_weights)) as base_url:
        samples = scrape(base_url)  # at once: the models may still be loading
    jobs = {
        dict(labels)["status"]: value
        for (name, labels), value in samples.items()
        if name == "catvton_jobs"
    }
    assert jobs == dict.fromkeys(("queued", "running", "succeeded", "failed", "canceled"), 0)


def test_job_counts_are_read_at_each_scrape_once_a_store_is_watched() -> None:
    """The hook the job routes use: an async `{status: count}` (the store may be Redis)."""
    metrics = ServiceMetrics(InferenceWorker.from_settings(Settings()))
    counts = {"queued": 2, "running": 1}

    async def job_counts() -> dict[str, int]:
        return dict(counts)

    metrics.watch_jobs(job_counts)
    asyncio.run(metrics.refresh())
    assert metrics.registry.get_sample_value("catvton_jobs", {"status": "queued"}) == 2
    counts.pop("queued")
    asyncio.run(metrics.refresh())
    assert metrics.registry.get_sample_value("catvton_jobs", {"status": "queued"}) == 0
    assert metrics.registry.get_sample_value("catvton_jobs", {"status": "running"}) == 1


def test_refusals_by_access_control_and_limits_are_counted_by_reason(
    tiny_weights: Path, tmp_path: Path
) -> None:
    """The observer sits outside access and limits: a 401 or 429 is counted under its route."""
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("phone-app secret-key-0123456789abcdef\n")
    settings = tiny_settings(tiny_weights, api_keys_file=keys_file, rate_limit="1/minute")
    with serve(settings) as base_url:
        wait_until_ready(base_url)
        before = scrape(base_url)  # loopback: /metrics needs no key
        assert_envelope(post_try_on(base_url, try_on_parts(**FAST)), 401, "unauthorized", "")
        key = {"Authorization": "Bearer secret-key-0123456789abcdef"}
        assert post_try_on(base_url, try_on_parts(**FAST), headers=key).status_code == 200
        limited = post_try_on(base_url, try_on_parts(**FAST), headers=key)
        assert_envelope(limited, 429, "rate_limited", "")
        changed = delta(before, scrape(base_url))
    for reason in ("unauthorized", "rate_limited"):
        assert changed[("catvton_rejected_total", frozenset({("reason", reason)}))] == 1
    assert changed[requests_key("/api/try-on", "POST", 401)] == 1
    assert changed[requests_key("/api/try-on", "POST", 429)] == 1
