"""The scaled-out service through real HTTP: a real Ray cluster and redis-server (conftest), CPU,
tiny demo weights, 2 try-on replicas, 2 ingress replicas.

The single process's own HTTP tests run against the cluster's URL too (imported below: pytest
collects them here with this folder's `tiny_server`, the cluster).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from cluster_helpers import HOLD, QUEUE_BOUND, Cluster, wait_for_replica_running
from http_helpers import FAST, assert_envelope, post_try_on, try_on_parts
from jobs_helpers import JOBS, document, masked_parts, submit, wait_final, wait_for_job
from test_try_on_http import (  # noqa: F401  (collected here, against the cluster)
    test_a_body_that_is_not_multipart_gets_422,
    test_a_mask_of_another_shape_than_the_person_gets_422,
    test_cors_preflight_from_the_app,
    test_invalid_fields_get_422_naming_the_field,
    test_pixel_bomb_gets_413,
    test_react_native_style_multipart_with_jpeg_output,
    test_undecodable_files_get_415_naming_the_field,
    test_unknown_cloth_type_lists_the_allowed_values,
    test_unknown_route_uses_the_envelope,
    test_upload_over_the_byte_cap_gets_413,
    test_user_mask_replaces_the_automatic_one_with_webp_output,
    test_wrong_method_uses_the_envelope_and_keeps_allow,
)

from app.cluster.registry import HEARTBEAT_S
from app.edge.schemas import HealthResponse

SLOWER = {"num_inference_steps": "30", "guidance_scale": "1.0"}


def served_per_replica(cluster: Cluster) -> dict[str, int]:
    return {replica["id"]: replica["inferences_served"] for replica in cluster.health()["replicas"]}


def test_health_lists_every_replica_and_redis(cluster: Cluster) -> None:
    body = cluster.health()
    assert body["status"] == "ok" and body["redis"] == "ok"
    assert body["size"] == [96, 128] and body["demo"] is True
    # The single process's /health route and body, extended: every field (receiving, gpu,
    # draining as a status word) comes from the same worker status.
    assert body.keys() == set(HealthResponse.model_fields)
    assert body["receiving"] == 0 and body["gpu"] is None
    assert len(body["replicas"]) == 2
    for replica in body["replicas"]:
        assert replica.keys() == {"id", "status", "error", "inferences_served"}
        assert replica["status"] == "ok" and replica["error"] is None


def test_concurrent_requests_are_served_by_both_replicas(cluster: Cluster) -> None:
    cluster.wait_for_health(lambda body: not body["busy"])  # earlier tests' work is done...
    time.sleep(2 * HEARTBEAT_S)  # ...and reported
    before = served_per_replica(cluster)
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda _: post_try_on(cluster.url, try_on_parts(**SLOWER)), "ab"))
    assert [response.status_code for response in responses] == [200, 200]
    # One try-on per replica at a time: two at once (seconds each) run on one replica each.
    after = cluster.wait_for_health(
        lambda body: (
            sum(r["inferences_served"] for r in body["replicas"]) >= sum(before.values()) + 2
        )
    )
    counts = {replica["id"]: replica["inferences_served"] for replica in after["replicas"]}
    assert all(counts[replica_id] > before[replica_id] for replica_id in counts), (before, counts)


def test_a_burst_past_the_bound_gets_the_busy_envelope_and_the_rest_succeed(
    cluster: Cluster,
) -> None:
    # Both replicas busy with long jobs: at most QUEUE_BOUND requests may wait per ingress
    # replica, so of 8 at once at least 8 - 2 * QUEUE_BOUND are refused at once. Random seeds:
    # a cached result would answer without waiting. An attempt counts when both replicas still
    # ran a long job once the refusals were in (a loaded machine may take longer to pass the
    # burst on than a long job takes: then it proves nothing, and another is made).
    refused = 8 - 2 * QUEUE_BOUND
    for _ in range(3):
        responses, held = burst_beside_long_jobs(cluster, refused)
        if held.count("running") == 2:
            break
    else:
        pytest.fail(f"the long jobs ended before the burst was in, three times ({held})")
    busy = [response for response in responses if response.status_code == 503]
    assert len(busy) >= refused, [response.status_code for response in responses]
    for response in busy:
        assert_envelope(response, 503, "gpu_busy", "GPU is busy processing another request")
        assert int(response.headers["Retry-After"]) > 0
    statuses = [response.status_code for response in responses if response.status_code != 503]
    assert statuses == [200] * len(statuses)


def burst_beside_long_jobs(
    cluster: Cluster, refused: int
) -> tuple[list[httpx.Response], list[str]]:
    """8 synchronous try-ons at once while 6 long jobs keep both replicas busy, one after another:
    their answers, and the jobs' statuses once `refused` of them were answered (then the jobs
    are deleted)."""
    jobs = [submit(cluster.url, masked_parts(seed="-1", **HOLD)).json()["jobId"] for _ in range(6)]
    deadline = time.monotonic() + 120
    while statuses(cluster, jobs).count("running") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    parts = try_on_parts(seed="-1", **FAST)
    with ThreadPoolExecutor(8) as pool:
        pending = [pool.submit(post_try_on, cluster.url, parts) for _ in range(8)]
        deadline = time.monotonic() + 120
        while sum(future.done() for future in pending) < refused and time.monotonic() < deadline:
            time.sleep(0.1)
        held = statuses(cluster, jobs)
        for job_id in jobs:  # the replicas are free again: the waiting requests run
            httpx.delete(f"{cluster.url}{JOBS}/{job_id}", timeout=30)
        return [future.result() for future in pending], held


def statuses(cluster: Cluster, jobs: list[str]) -> list[str]:
    return [document(cluster.url, job_id)["status"] for job_id in jobs]


def test_rays_client_headers_change_nothing(cluster: Cluster) -> None:
    """Ray's proxy would cut this request after 10 ms (408, plain text); the edge drops it."""
    headers = {"x-request-timeout-seconds": "0.01", "x-request-disconnect-disabled": "?1"}
    response = post_try_on(cluster.url, try_on_parts(**FAST), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["requestId"] == response.headers["X-Request-ID"]


def test_a_killed_replica_fails_its_request_and_serve_replaces_it(cluster: Cluster) -> None:
    before = {replica["id"] for replica in cluster.health()["replicas"]}
    with ThreadPoolExecutor(1) as pool:
        parts, headers = try_on_parts(num_inference_steps="60"), {"X-Request-ID": "doomed-1"}
        pending = pool.submit(post_try_on, cluster.url, parts, headers)
        victim = wait_for_replica_running(cluster, "doomed-1")
        os.kill(victim["pid"], signal.SIGKILL)
        response = pending.result()
    assert_envelope(response, 503, "worker_stopped", "stopped")
    body = cluster.wait_for_health(
        lambda body: (
            len(body["replicas"]) == 2
            and victim["id"] not in {replica["id"] for replica in body["replicas"]}
            and all(replica["status"] == "ok" for replica in body["replicas"])
        ),
        timeout=300,
    )
    assert {replica["id"] for replica in body["replicas"]} - before  # a new replica took its place
    assert post_try_on(cluster.url, try_on_parts(**FAST)).status_code == 200


def test_a_service_drain_says_draining_on_every_ingress_replica(cluster: Cluster) -> None:
    """What `python -m app.cluster` does on SIGTERM/SIGINT (app/cluster/__main__.py): every
    ingress replica answers /health 503 "draining" and new try-ons 503 shutting_down, while the
    job already running finishes; the service comes back when the drain ends."""
    import asyncio

    from app.cluster.redis_client import connect
    from app.cluster.registry import announce_drain, end_drain

    redis_url = f"redis://127.0.0.1:{cluster.redis_port}/0"
    cluster.wait_for_health(lambda body: body["status"] == "ok" and not body["busy"])
    running = submit(cluster.url, masked_parts(**SLOWER))
    assert running.status_code == 202, running.text
    job_id = running.json()["jobId"]
    wait_for_job(cluster.url, job_id, lambda body: body["status"] == "running")
    asyncio.run(announce_drain(connect(redis_url), 60))
    try:
        # Through Serve's proxy, both ingress replicas answer alike (each reads the flag within
        # a second; a loaded machine may take a few).
        assert every_ingress_replica_says(cluster, status=503, state="draining")
        refused = post_try_on(cluster.url, try_on_parts(**FAST))
        assert_envelope(refused, 503, "shutting_down", "shutting down")
        assert wait_final(cluster.url, job_id)["status"] == "succeeded"
    finally:
        asyncio.run(end_drain(connect(redis_url)))
        assert every_ingress_replica_says(cluster, status=200, state="ok")


def every_ingress_replica_says(
    cluster: Cluster, *, status: int, state: str, timeout: float = 30.0
) -> bool:
    """Whether /health answers `status` and `state` from both ingress replicas in a row."""
    deadline = time.monotonic() + timeout
    streak: set[str] = set()
    while time.monotonic() < deadline:
        response = httpx.get(f"{cluster.url}/health", timeout=10)
        if response.status_code == status and response.json()["status"] == state:
            streak.add(response.headers["X-Served-By"])
            if len(streak) == 2:
                return True
        else:
            streak.clear()
        time.sleep(0.1)
    return False


def test_a_hang_up_stops_the_replicas_inference(cluster: Cluster) -> None:
    """A synchronous client that hangs up: Serve's proxy cancels the call, the ingress cancels
    the replica's, and the replica's worker stops the inference at its next step (the stop a
    cancel uses) instead of running the longest try-on there is to its end."""
    cluster.wait_for_health(lambda body: not body["busy"])
    started = time.monotonic()
    assert post_try_on(cluster.url, try_on_parts(seed="-1", **HOLD)).status_code == 200
    whole_s = time.monotonic() - started  # what a try-on left running would still take
    cluster.wait_for_health(lambda body: not body["busy"])

    request_id = "hang-up-in-the-cluster"
    ran: dict = {}
    watcher = threading.Thread(
        target=lambda: ran.update(wait_for_replica_running(cluster, request_id))
    )
    watcher.start()
    give_up_s = whole_s / 4  # the client hangs up a quarter of the way in
    with pytest.raises(httpx.TimeoutException):
        post_try_on(
            cluster.url,
            try_on_parts(seed="-1", **HOLD),
            headers={"X-Request-ID": request_id},
            timeout=give_up_s,
        )
    hung_up_at = time.monotonic()
    watcher.join(60)
    assert ran, "the try-on never reached a replica"
    cluster.wait_for_health(lambda body: not body["busy"], timeout=whole_s)
    stopped_after = time.monotonic() - hung_up_at
    assert stopped_after < whole_s / 2, (stopped_after, whole_s)
