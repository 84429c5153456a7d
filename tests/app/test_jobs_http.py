"""Try-on jobs over real HTTP on tiny weights: lifecycle, events, results, idempotency, cache."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from http_helpers import assert_envelope, post_try_on
from jobs_helpers import (
    FAST,
    JOBS,
    UNetCalls,
    counting_unet_calls,
    document,
    jobs_server,
    masked_parts,
    read_events,
    submit,
    wait_final,
)
from PIL import Image

from app.inference.worker import InferenceWorker
from catvton.tiny import TINY_SIZE


@pytest.fixture(scope="module")
def served_jobs(tiny_weights: Path) -> Iterator[tuple[str, InferenceWorker]]:
    with jobs_server(tiny_weights, queue_size=4) as served:
        yield served


@pytest.fixture
def unet_calls(served_jobs: tuple[str, InferenceWorker]) -> Iterator[UNetCalls]:
    with counting_unet_calls(served_jobs[1]) as calls:
        yield calls


def test_a_job_runs_through_its_states_with_progress_that_only_grows(
    served_jobs: tuple[str, InferenceWorker],
) -> None:
    base_url, _ = served_jobs
    jobs = [submit(base_url, masked_parts(seed="-1", **FAST)) for _ in range(3)]
    for response in jobs:
        assert response.status_code == 202, response.text
        assert response.headers["Location"] == f"{JOBS}/{response.json()['jobId']}"
        assert response.headers["Retry-After"] == "1"
    last = jobs[-1].json()
    assert last["status"] == "queued" and last["queuePosition"] >= 1
    seen = [last]
    while seen[-1]["status"] not in ("succeeded", "failed", "canceled"):
        seen.append(document(base_url, last["jobId"]))
    order = ["queued", "running", "succeeded"]
    assert [order.index(body["status"]) for body in seen] == sorted(
        order.index(body["status"]) for body in seen
    )
    positions = [body["queuePosition"] for body in seen if body["status"] == "queued"]
    assert positions == sorted(positions, reverse=True) and positions[-1] >= 0
    steps = [body["progress"]["step"] for body in seen]
    assert steps == sorted(steps)
    done = seen[-1]
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"step": 10, "totalSteps": 10, "fraction": 1.0}
    assert done["stage"] is None and done["etaSeconds"] is None
    assert done["expiresAt"] > done["finishedAt"] >= done["startedAt"] > done["createdAt"]
    assert any(body["etaSeconds"] is not None for body in seen if body["status"] != "succeeded")
    result = done["result"]
    assert (result["width"], result["height"], result["mimeType"]) == (*TINY_SIZE, "image/png")

    image = httpx.get(f"{base_url}{result['imageUrl']}", timeout=10)
    assert image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == TINY_SIZE
    as_json = httpx.get(
        f"{base_url}{result['imageUrl']}", headers={"Accept": "application/json"}, timeout=10
    ).json()
    assert as_json["success"] is True and as_json["message"] == "Try-on completed successfully"
    assert base64.b64decode(as_json["imageBase64"]) == image.content
    assert as_json["requestId"] == done["requestId"] and as_json["seed"] == result["seed"]
    mask = httpx.get(f"{base_url}{result['maskUrl']}", timeout=10)
    with Image.open(io.BytesIO(mask.content)) as mask_image:
        assert (mask_image.mode, mask_image.size) == ("L", TINY_SIZE)
        assert set(np.unique(np.asarray(mask_image))) == {0, 255}


def test_events_stream_each_step_then_end_after_the_final_state(
    served_jobs: tuple[str, InferenceWorker],
) -> None:
    base_url, _ = served_jobs
    job_id = submit(base_url, masked_parts(seed="-1", **FAST)).json()["jobId"]
    events = read_events(base_url, job_id)
    assert {name for name, _, _ in events} == {"job", "preview"}  # previews: test_previews_http
    events = [event for event in events if event[0] == "job"]
    ids = [int(event_id) for _, event_id, _ in events]
    assert ids == sorted(set(ids))
    documents = [data for _, _, data in events]
    steps = [body["progress"]["step"] for body in documents]
    assert steps == sorted(steps)
    # Progress is coalesced to at most 10 events a second (README, "Tenants"): tiny steps
    # come faster, so not every step has its event, but the last one and the final state do.
    assert steps[-1] == 10
    assert documents[-1]["status"] == "succeeded"
    # A finished job: the final document at once, then the stream ends.
    replay = read_events(base_url, job_id, timeout=30)
    assert [(name, body.get("status")) for name, _, body in replay] == [
        ("job", "succeeded"),
        ("preview", None),  # its last preview, by URL
    ]


def test_unknown_and_malformed_job_ids_get_404(served_jobs: tuple[str, InferenceWorker]) -> None:
    base_url, _ = served_jobs
    for job_id in ("A" * 22, "short", "x" * 5000, "%00%ff", "a%20b", "a.b"):
        for method, suffix in (
            ("GET", ""),
            ("GET", "/result"),
            ("GET", "/mask"),
            ("GET", "/events"),
            ("POST", "/cancel"),
            ("DELETE", ""),
        ):
            response = httpx.request(method, f"{base_url}{JOBS}/{job_id}{suffix}", timeout=10)
            assert_envelope(response, 404, "job_not_found", "No such job")


@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS"])
def test_a_wrong_method_on_a_job_lists_every_method_served_there(
    served_jobs: tuple[str, InferenceWorker], method: str
) -> None:
    """The job's path serves GET and DELETE; Allow used to name only the GET route's methods."""
    base_url, _ = served_jobs
    response = httpx.request(method, f"{base_url}{JOBS}/{'A' * 22}", timeout=10)
    assert_envelope(response, 405, "http_405", "Method Not Allowed")
    assert response.headers["Allow"] == "DELETE, GET"
    submit_path = httpx.request(method, f"{base_url}{JOBS}", timeout=10)
    assert submit_path.headers["Allow"] == "POST"


def test_a_deleted_job_is_forgotten_and_its_result_not_before_it_exists(
    served_jobs: tuple[str, InferenceWorker],
) -> None:
    base_url, _ = served_jobs
    job_id = submit(base_url, masked_parts(seed="-1", **FAST)).json()["jobId"]
    early = httpx.get(f"{base_url}{JOBS}/{job_id}/result", timeout=10)
    if early.status_code == 409:  # unless the tiny job already finished
        assert_envelope(early, 409, "job_not_finished", "poll its status")
        assert early.headers["Retry-After"] == "1"
    assert httpx.delete(f"{base_url}{JOBS}/{job_id}", timeout=10).status_code == 204
    gone = httpx.get(f"{base_url}{JOBS}/{job_id}", timeout=10)
    assert_envelope(gone, 404, "job_not_found", "No such job")


def test_idempotency_key_replays_the_job_and_refuses_a_different_body(
    served_jobs: tuple[str, InferenceWorker],
) -> None:
    base_url, _ = served_jobs
    parts = masked_parts(seed="-1", **FAST)
    key = {"Idempotency-Key": "order-7f3a/phone-1"}
    first = submit(base_url, parts, key)
    assert first.status_code == 202
    again = submit(base_url, parts, key)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["jobId"] == first.json()["jobId"]
    other_body = submit(base_url, masked_parts(seed="5", **FAST), key)
    assert_envelope(other_body, 422, "idempotency_key_reused", "different request body")
    for bad_key in ("k" * 256, "tab\there", "space here"):
        response = submit(base_url, parts, {"Idempotency-Key": bad_key})
        assert_envelope(response, 422, "invalid_field", "Idempotency-Key")
    # The same new key twice at once: one job.
    with ThreadPoolExecutor(max_workers=2) as pool:
        both = list(pool.map(lambda _: submit(base_url, parts, {"Idempotency-Key": "twin"}), "ab"))
    assert sorted(response.status_code for response in both) == [200, 202]
    assert both[0].json()["jobId"] == both[1].json()["jobId"]
    assert wait_final(base_url, first.json()["jobId"])["status"] == "succeeded"


def test_a_fixed_seed_is_answered_from_the_cache_by_both_doors_without_the_gpu(
    served_jobs: tuple[str, InferenceWorker], unet_calls: UNetCalls
) -> None:
    base_url, _ = served_jobs
    parts = masked_parts(seed="1234", **FAST)
    computed = post_try_on(base_url, parts)
    assert computed.status_code == 200 and computed.json()["cached"] is False
    assert unet_calls.by_request[computed.json()["requestId"]] == 10
    again = post_try_on(base_url, [*parts, ("return_mask", b"true", None, None)])
    assert again.json()["cached"] is True
    assert again.json()["imageBase64"] == computed.json()["imageBase64"]
    job = submit(base_url, parts)
    assert job.status_code == 202
    body = job.json()
    assert (body["status"], body["cached"], body["progress"]["fraction"]) == (
        "succeeded",
        True,
        1.0,
    )
    image = httpx.get(f"{base_url}{body['result']['imageUrl']}", timeout=10).content
    assert image == base64.b64decode(computed.json()["imageBase64"])
    mask = httpx.get(f"{base_url}{body['result']['maskUrl']}", timeout=10).content
    assert mask == base64.b64decode(again.json()["maskBase64"])
    # Neither hit reached the UNet (the worker runs work under its request's id).
    assert unet_calls.by_request[again.json()["requestId"]] == 0
    assert unet_calls.by_request[body["requestId"]] == 0
    # A random seed is never cached.
    for _ in range(2):
        random = post_try_on(base_url, masked_parts(seed="-1", **FAST)).json()
        assert random["cached"] is False
        assert unet_calls.by_request[random["requestId"]] == 10


def test_return_mask_answers_the_mask_the_model_used(
    served_jobs: tuple[str, InferenceWorker],
) -> None:
    base_url, _ = served_jobs
    plain = post_try_on(base_url, masked_parts(seed="-1", **FAST)).json()
    assert "maskBase64" not in plain
    body = post_try_on(base_url, masked_parts(seed="-1", return_mask="true", **FAST)).json()
    with Image.open(io.BytesIO(base64.b64decode(body["maskBase64"]))) as mask:
        assert (mask.format, mask.mode, mask.size) == ("PNG", "L", TINY_SIZE)
        pixels = np.asarray(mask)
    assert set(np.unique(pixels)) == {0, 255}
    assert pixels[TINY_SIZE[1] // 2, TINY_SIZE[0] // 2] == 255  # the torso box is repainted
    assert pixels[2, 2] == 0
