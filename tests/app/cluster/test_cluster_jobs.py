"""Jobs on the cluster: the single process's job tests against the cluster's URL, a job read,
streamed and canceled through another ingress replica than the one that took it, a replica killed
in the middle of a job, and finished jobs that outlive a Redis restart (persistence)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import httpx
import pytest
from cluster_helpers import (
    ELSEWHERE_TIMEOUT_S,
    HOLD,
    Cluster,
    answers_until_elsewhere,
    stream_held_on,
    wait_for_replica_running,
)
from http_helpers import assert_envelope, multipart
from jobs_helpers import (
    FAST,
    JOBS,
    SLOW,
    document,
    masked_parts,
    read_events,
    submit,
    wait_final,
    wait_for_job,
)
from test_jobs_http import (  # noqa: F401  (collected here, against the cluster)
    test_a_deleted_job_is_forgotten_and_its_result_not_before_it_exists,
    test_idempotency_key_replays_the_job_and_refuses_a_different_body,
    test_return_mask_answers_the_mask_the_model_used,
    test_unknown_and_malformed_job_ids_get_404,
)

from app.cluster.headers import SERVED_BY_HEADER
from app.cluster.shared_jobs import LEASE_PREFIX

ATTEMPTS = 8  # jobs whose cancel may reach their own ingress replica (then another is tried)


@pytest.fixture
def served_jobs(cluster: Cluster) -> tuple[str, None]:
    """The job tests' server: the cluster (they only use its URL)."""
    return cluster.url, None


def test_events_stream_the_replicas_progress_then_end_after_the_final_state(
    cluster: Cluster,
) -> None:
    """As in the single process, except that a stream opened after the job started (here, often:
    two replicas take a job at once) begins at the step it finds; the store may skip versions."""
    job_id = submit(cluster.url, masked_parts(seed="-1", **FAST)).json()["jobId"]
    events = read_events(cluster.url, job_id)
    assert {name for name, _, _ in events} == {"job", "preview"}
    events = [event for event in events if event[0] == "job"]
    ids = [int(event_id) for _, event_id, _ in events]
    assert ids == sorted(set(ids))
    steps = [body["progress"]["step"] for _, _, body in events]
    # Progress is coalesced to at most 10 events a second: some steps may share one event.
    assert steps == sorted(steps) and len(set(steps)) >= 2
    assert events[-1][2]["status"] == "succeeded" and steps[-1] == 10
    replay = read_events(cluster.url, job_id, timeout=30)
    assert [body.get("status") for _, _, body in replay] == ["succeeded", None]  # + its preview


def test_previews_travel_from_the_replica_to_every_ingress_replica(cluster: Cluster) -> None:
    """The replica encodes each preview and streams it to the ingress that drives the job, which
    stores it in Redis: another ingress replica serves it (ETag, 304, Preview-Step)."""
    submitted = submit(cluster.url, masked_parts(seed="-1", **FAST))  # every 5: steps 5, 10
    owner, job_id = submitted.headers[SERVED_BY_HEADER], submitted.json()["jobId"]
    events = read_events(cluster.url, job_id)
    steps = [data["step"] for name, _, data in events if name == "preview"]
    assert steps in ([5, 10], [10])  # a stream opened late begins at the step it finds
    assert wait_final(cluster.url, job_id)["preview"]["step"] == 10
    url = f"{cluster.url}{JOBS}/{job_id}/preview"
    response = answers_until_elsewhere(lambda: httpx.get(url, timeout=10), owner)[-1]
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert (response.headers["etag"], response.headers["preview-step"]) == ('"10"', "10")
    assert response.content.startswith(b"\xff\xd8")  # JPEG
    again = httpx.get(url, headers={"If-None-Match": '"10"'}, timeout=10)
    assert again.status_code == 304 and again.content == b""


def read_elsewhere(cluster: Cluster, owner: str, job_id: str) -> dict:
    """The job's document, read through another ingress replica than `owner`."""
    url = f"{cluster.url}{JOBS}/{job_id}"
    return answers_until_elsewhere(lambda: httpx.get(url, timeout=10), owner)[-1].json()


def stream_steps_elsewhere(cluster: Cluster, owner: str, job_id: str, count: int) -> list[dict]:
    """`count` step events of the job's stream, served by another ingress replica than `owner`."""
    deadline = time.monotonic() + ELSEWHERE_TIMEOUT_S
    while time.monotonic() < deadline:
        with httpx.stream("GET", events_url(cluster, job_id), timeout=60) as stream:
            if stream.headers[SERVED_BY_HEADER] == owner:
                continue
            documents, event = [], ""
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:") and event != "preview":
                    documents.append(json.loads(line.removeprefix("data:")))
                    if len(documents) > count:
                        return documents[1:]  # after the current document: one per step
    raise AssertionError(f"every stream went to {owner}")


def events_url(cluster: Cluster, job_id: str) -> str:
    return f"{cluster.url}{JOBS}/{job_id}/events"


def test_a_job_is_read_streamed_and_canceled_through_another_ingress_replica(
    cluster: Cluster,
) -> None:
    for _ in range(ATTEMPTS):
        submitted = submit(cluster.url, masked_parts(seed="-1", **SLOW))
        assert submitted.status_code == 202, submitted.text
        owner, job_id = submitted.headers[SERVED_BY_HEADER], submitted.json()["jobId"]
        wait_for_job(cluster.url, job_id, lambda body: body["progress"]["step"] >= 2)
        with stream_held_on(owner, events_url(cluster, job_id)):
            assert read_elsewhere(cluster, owner, job_id)["status"] == "running"
            steps = [
                body["progress"]["step"]
                for body in stream_steps_elsewhere(cluster, owner, job_id, 3)
            ]
            assert steps == sorted(steps) and len(set(steps)) == 3  # the replica's, live
            canceled = httpx.post(f"{cluster.url}{JOBS}/{job_id}/cancel", timeout=30)
        final = wait_final(cluster.url, job_id, timeout=60)
        if canceled.headers[SERVED_BY_HEADER] == owner:
            continue  # canceled by its own ingress: try again for the cross-replica path
        assert canceled.status_code == 202 and canceled.json()["cancelRequested"] is True
        assert final["status"] == "canceled" and final["progress"]["step"] < 100
        return
    pytest.fail("every cancel went to the job's own ingress replica")


def test_a_queued_job_canceled_through_another_replica_never_runs(cluster: Cluster) -> None:
    """Both replicas busy: the job waits; a cancel through any ingress ends it at once (200).
    An attempt counts when the cancel went to the other ingress replica while both blockers
    still ran (on a loaded machine a submit may take as long as a try-on)."""
    for _ in range(ATTEMPTS):
        blockers = [
            submit(cluster.url, masked_parts(seed="-1", **HOLD)).json()["jobId"] for _ in "ab"
        ]
        for blocker in blockers:  # each ingress keeps its own queue: wait until both replicas work
            wait_for_job(cluster.url, blocker, lambda body: body["status"] != "queued")
        submitted = submit(cluster.url, masked_parts(seed="-1", **FAST))
        owner, job_id = submitted.headers[SERVED_BY_HEADER], submitted.json()["jobId"]
        with stream_held_on(owner, events_url(cluster, job_id)):
            canceled = httpx.post(f"{cluster.url}{JOBS}/{job_id}/cancel", timeout=30)
        blocked = all(document(cluster.url, blocker)["status"] == "running" for blocker in blockers)
        for blocker in blockers:
            httpx.delete(f"{cluster.url}{JOBS}/{blocker}", timeout=30)
        if blocked and canceled.headers[SERVED_BY_HEADER] != owner:
            break
    else:
        pytest.fail("no cancel went to another ingress replica while both replicas were busy")
    assert canceled.status_code == 200, canceled.json()
    assert canceled.json()["status"] == "canceled"
    assert canceled.json()["progress"]["step"] == 0


def from_address(cluster: Cluster, address: str) -> httpx.Client:
    """A client whose requests come from `address` (every 127.x.y.z is this machine): without
    keys each address is a client of its own."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=cluster.url, transport=transport, timeout=60)


def test_a_lone_job_waits_for_at_most_one_job_of_a_client_with_forty_per_ingress_replica(
    cluster: Cluster,
) -> None:
    """Fair turns in front of Serve: an ingress replica takes the clients waiting there in turn,
    so Bob's job is at most second in its line behind Alice's 40 (the single process's rule, per
    ingress replica). Of Alice's jobs in that line, only the one ahead of it and those already
    handed to Serve (one per try-on replica at most) start after Bob's came and before it."""
    body, content_type = multipart(masked_parts(seed="-1", **FAST))
    headers = {"Content-Type": content_type}
    with from_address(cluster, "127.0.0.2") as alice, from_address(cluster, "127.0.0.3") as bob:
        alice_jobs = [alice.post(JOBS, content=body, headers=headers) for _ in range(40)]
        assert [job.status_code for job in alice_jobs] == [202] * 40, alice_jobs[-1].text
        bobs = bob.post(JOBS, content=body, headers=headers)
        assert bobs.status_code == 202, bobs.text
        assert bobs.json()["queuePosition"] <= 1, bobs.json()
        bobs_job = wait_final(cluster.url, bobs.json()["jobId"])
        alice_line = [  # Alice's jobs that Bob's ingress replica took, as they are now
            alice.get(f"{JOBS}/{job.json()['jobId']}").json()
            for job in alice_jobs
            if job.headers[SERVED_BY_HEADER] == bobs.headers[SERVED_BY_HEADER]
        ]
        for job in alice_jobs:
            alice.delete(f"{JOBS}/{job.json()['jobId']}")
    came, began = bobs_job["createdAt"], bobs_job["startedAt"]
    went_first = [job for job in alice_line if job["startedAt"] and came < job["startedAt"] < began]
    assert len(went_first) <= 1 + 2, f"{len(went_first)} of Alice's jobs went before Bob's"


def test_a_job_whose_replica_is_killed_finishes_on_the_other(cluster: Cluster) -> None:
    before = {replica["id"] for replica in cluster.health()["replicas"]}
    job_id = submit(cluster.url, masked_parts(seed="-1", num_inference_steps="40")).json()["jobId"]
    running = wait_for_job(cluster.url, job_id, lambda body: body["progress"]["step"] >= 2)
    victim = wait_for_replica_running(cluster, running["requestId"])
    os.kill(victim["pid"], signal.SIGKILL)
    seen = [running]
    while seen[-1]["status"] not in ("succeeded", "failed", "canceled"):
        seen.append(wait_for_job(cluster.url, job_id, lambda body: body != seen[-1]))
    assert seen[-1]["status"] == "succeeded", seen[-1]
    steps = [body["progress"]["step"] for body in seen]
    assert steps == sorted(steps)  # the second attempt never reports a step twice
    cluster.wait_for_health(
        lambda body: (
            len(body["replicas"]) == 2
            and victim["id"] not in {replica["id"] for replica in body["replicas"]}
            and all(replica["status"] == "ok" for replica in body["replicas"])
        ),
        timeout=300,
    )
    assert {replica["id"] for replica in cluster.health()["replicas"]} != before


def test_finished_jobs_survive_a_redis_restart(cluster: Cluster) -> None:
    job_id = submit(cluster.url, masked_parts(seed="-1", **FAST)).json()["jobId"]
    done = wait_final(cluster.url, job_id)
    image = httpx.get(f"{cluster.url}{done['result']['imageUrl']}", timeout=10).content
    folder = cluster.stop_redis()
    down = cluster.wait_for_health(lambda body: body["redis"] != "ok", timeout=30)
    assert down["status"] == "ok" and down["redis"].startswith("unreachable")
    response = httpx.get(f"{cluster.url}{JOBS}/{job_id}", timeout=60)
    assert_envelope(response, 503, "storage_unavailable", "try again")
    assert response.headers["Retry-After"] == "5"
    cluster.start_redis(folder)
    cluster.wait_for_health(lambda body: body["redis"] == "ok", timeout=30)
    for _ in range(ATTEMPTS):  # every ingress replica still knows the replicas are ready
        fresh = submit(cluster.url, masked_parts(seed="-1", **FAST))
        assert fresh.status_code == 202, fresh.text
    assert wait_final(cluster.url, job_id)["status"] == "succeeded"
    again = httpx.get(f"{cluster.url}{done['result']['imageUrl']}", timeout=10)
    assert again.content == image, again.text[:300]
    events = read_events(cluster.url, job_id, timeout=30)
    assert [body["status"] for event, _, body in events if event == "job"] == ["succeeded"]


def test_a_job_whose_ingress_replica_dies_fails_instead_of_running_forever(
    cluster: Cluster,
) -> None:
    response = submit(cluster.url, masked_parts(seed="-1", **SLOW))
    assert response.status_code == 202, response.text
    job_id, driver = response.json()["jobId"], response.headers[SERVED_BY_HEADER]
    wait_for_job(cluster.url, job_id, lambda body: body["status"] == "running")
    redis = cluster.redis()
    os.kill(json.loads(redis.get(LEASE_PREFIX + driver))["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the proxy may still pick the dead replica for a moment
        with contextlib.suppress(httpx.HTTPError):
            answer = httpx.get(f"{cluster.url}{JOBS}/{job_id}", timeout=10)
            if answer.status_code == 200 and answer.json()["status"] != "running":
                break
        time.sleep(0.5)
    body = answer.json()
    assert body["status"] == "failed" and body["error"]["error"] == "worker_stopped", body
    while time.monotonic() < deadline:  # Serve starts another ingress replica in its place
        leases = {key.decode() for key in redis.scan_iter(LEASE_PREFIX + "*")}
        if len(leases) == 2 and LEASE_PREFIX + driver not in leases:
            break
        time.sleep(0.5)
    assert len(leases) == 2 and LEASE_PREFIX + driver not in leases, leases
