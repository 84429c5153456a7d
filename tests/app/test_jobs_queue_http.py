"""Jobs in the one FIFO over real HTTP: cancel, order with synchronous requests, faults, bounds.

The device is kept busy by a long job (100 steps), never by sleeping in the model; UNet calls are
counted per request with forward hooks on the real network, and out-of-memory is injected once
through the same seam.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import pytest
import torch
from http_helpers import assert_envelope, post_try_on, serve, tiny_settings, wait_until_ready
from jobs_helpers import (
    FAST,
    JOBS,
    SLOW,
    UNetCalls,
    counting_unet_calls,
    document,
    jobs_server,
    masked_parts,
    read_events,
    submit,
    wait_final,
    wait_for_job,
)

from app.edge.request_id import current_request_id
from app.inference.worker import InferenceWorker

MAX_QUEUED_JOBS = 3


@pytest.fixture(scope="module")
def queue_server(tiny_weights: Path) -> Iterator[tuple[str, InferenceWorker]]:
    # One client (this test) fills the bounds: no per-client share (a quarter of 3 would be 1).
    with jobs_server(
        tiny_weights, queue_size=4, max_queued_jobs=MAX_QUEUED_JOBS, max_active_per_client=0
    ) as served:
        yield served


@pytest.fixture
def unet_calls(queue_server: tuple[str, InferenceWorker]) -> Iterator[UNetCalls]:
    with counting_unet_calls(queue_server[1]) as calls:
        yield calls


def start_blocker(base_url: str) -> dict:
    """A 100-step job, returned once it is denoising: the device is busy for a while."""
    job_id = submit(base_url, masked_parts(seed="-1", **SLOW)).json()["jobId"]
    return wait_for_job(base_url, job_id, lambda body: body["progress"]["step"] >= 1)


def cancel(base_url: str, job_id: str) -> httpx.Response:
    return httpx.post(f"{base_url}{JOBS}/{job_id}/cancel", timeout=30)


def test_cancel_while_queued_never_reaches_the_gpu_and_while_running_stops_within_a_step(
    queue_server: tuple[str, InferenceWorker], unet_calls: UNetCalls
) -> None:
    base_url, _ = queue_server
    blocker = start_blocker(base_url)
    queued = submit(base_url, masked_parts(seed="-1", **FAST)).json()
    assert queued["status"] == "queued" and queued["queuePosition"] == 0

    response = cancel(base_url, queued["jobId"])
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["error"]["error"]) == (
        "canceled",
        "canceled",
    )
    assert document(base_url, queued["jobId"])["status"] == "canceled"

    response = cancel(base_url, blocker["jobId"])
    calls_when_answered = unet_calls.by_request[blocker["requestId"]]
    assert response.status_code == 202
    assert response.json()["cancelRequested"] is True
    done = wait_final(base_url, blocker["jobId"])
    assert done["status"] == "canceled" and done["progress"]["step"] < 100
    assert unet_calls.by_request[blocker["requestId"]] <= calls_when_answered + 1
    assert unet_calls.by_request[queued["requestId"]] == 0
    refused = httpx.get(f"{base_url}{JOBS}/{blocker['jobId']}/result", timeout=10)
    assert_envelope(refused, 409, "canceled", "canceled")
    # Already final: 200 and nothing changes.
    again = cancel(base_url, blocker["jobId"])
    assert again.status_code == 200 and again.json() == {
        **document(base_url, blocker["jobId"]),
        "etaSeconds": None,
    }
    # The worker is ready for the next job.
    next_job = submit(base_url, masked_parts(seed="-1", **FAST)).json()
    assert wait_final(base_url, next_job["jobId"])["status"] == "succeeded"


def test_a_cancel_of_a_job_the_worker_just_took_stops_it_before_any_unet_call(
    queue_server: tuple[str, InferenceWorker], unet_calls: UNetCalls
) -> None:
    """The cancel arrives while the AutoMasker runs for the job: it is running (202), and it
    ends canceled at its first denoising step."""
    base_url, worker = queue_server
    assert worker.device.models is not None
    masker = worker.device.models.masker
    request_id = "cancel-just-taken"
    answers: list[httpx.Response] = []
    job: dict = {}
    submitted = threading.Event()

    def cancel_once_taken(module: torch.nn.Module, args: tuple) -> None:
        if current_request_id() == request_id and not answers:
            assert submitted.wait(60)
            answers.append(cancel(base_url, job["jobId"]))  # from the device thread

    handles = [
        network.register_forward_pre_hook(cancel_once_taken)
        for network in (masker.densepose, masker.schp_atr, masker.schp_lip)
    ]
    try:
        automatic_mask = masked_parts(seed="-1", **FAST)[:-1]  # no mask_image: the masker runs
        job.update(submit(base_url, automatic_mask, {"X-Request-ID": request_id}).json())
        submitted.set()
        done = wait_final(base_url, job["jobId"])
    finally:
        for handle in handles:
            handle.remove()
    assert answers and answers[0].status_code == 202
    assert done["status"] == "canceled" and done["progress"]["step"] == 0
    assert unet_calls.by_request[job["requestId"]] == 0


def test_synchronous_requests_and_jobs_are_served_in_one_fifo_order(
    queue_server: tuple[str, InferenceWorker], unet_calls: UNetCalls
) -> None:
    base_url, _ = queue_server
    blocker = start_blocker(base_url)
    health = partial(httpx.get, f"{base_url}/health", timeout=10)
    order: list[str] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        sync_answers = []
        for index, door in enumerate(["sync", "job", "sync", "job"]):
            request_id = f"fifo-{index}-{door}"
            headers = {"X-Request-ID": request_id}
            if door == "sync":
                sync_answers.append(
                    pool.submit(post_try_on, base_url, masked_parts(seed="-1", **FAST), headers)
                )
            else:
                body = submit(base_url, masked_parts(seed="-1", **FAST), headers).json()
                assert body["queuePosition"] == index  # everything sent before waits ahead
            order.append(request_id)
            deadline = time.monotonic() + 60
            while health().json()["queue_depth"] < index + 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        cancel(base_url, blocker["jobId"])
        assert [answer.result(timeout=300).status_code for answer in sync_answers] == [200, 200]
    deadline = time.monotonic() + 300
    while unet_calls.by_request[order[-1]] < 10:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    served = [request_id for request_id in unet_calls.order if request_id.startswith("fifo-")]
    assert served == order


def test_an_out_of_memory_job_fails_with_its_code_and_the_next_one_succeeds(
    queue_server: tuple[str, InferenceWorker],
) -> None:
    base_url, worker = queue_server
    assert worker.device.models is not None

    def run_out_of_memory_once(module: torch.nn.Module, args: tuple) -> None:
        handle.remove()
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = worker.device.models.pipeline.unet.register_forward_pre_hook(run_out_of_memory_once)
    failed = wait_final(base_url, submit(base_url, masked_parts(seed="-1", **FAST)).json()["jobId"])
    assert failed["status"] == "failed"
    assert failed["error"]["error"] == "gpu_out_of_memory"
    result = httpx.get(f"{base_url}{JOBS}/{failed['jobId']}/result", timeout=10)
    assert_envelope(result, 503, "gpu_out_of_memory", "GPU out of memory")
    following = submit(base_url, masked_parts(seed="-1", **FAST)).json()
    assert wait_final(base_url, following["jobId"])["status"] == "succeeded"


def test_200_submissions_from_one_loop_meet_the_queue_bound_and_nothing_else_breaks(
    queue_server: tuple[str, InferenceWorker],
) -> None:
    base_url, _ = queue_server
    blocker = start_blocker(base_url)
    answers = [submit(base_url, masked_parts(seed="-1", **FAST)) for _ in range(200)]
    # While the blocker runs, the bound holds: three queued, the fourth refused at once. (Later
    # submissions may find places freed by jobs that finished meanwhile.)
    assert [answer.status_code for answer in answers[: MAX_QUEUED_JOBS + 1]] == [202] * 3 + [503]
    accepted = [answer.json() for answer in answers if answer.status_code == 202]
    for answer in answers:
        if answer.status_code != 202:
            assert_envelope(answer, 503, "gpu_busy", "jobs are already queued")
            assert int(answer.headers["Retry-After"]) > 0
    assert httpx.get(f"{base_url}/health", timeout=10).json()["status"] == "ok"
    for body in [blocker, *accepted[1:]]:
        cancel(base_url, body["jobId"])
    assert wait_final(base_url, accepted[0]["jobId"])["status"] == "succeeded"
    assert post_try_on(base_url, masked_parts(seed="-1", **FAST)).status_code == 200


def test_events_of_a_job_forgotten_meanwhile_end_with_an_expired_event(
    queue_server: tuple[str, InferenceWorker],
) -> None:
    base_url, _ = queue_server
    job_id = submit(base_url, masked_parts(seed="-1", **SLOW)).json()["jobId"]
    with ThreadPoolExecutor(max_workers=1) as pool:
        events = pool.submit(read_events, base_url, job_id)
        wait_for_job(base_url, job_id, lambda body: body["progress"]["step"] >= 1)
        assert httpx.delete(f"{base_url}{JOBS}/{job_id}", timeout=10).status_code == 204
        received = events.result(timeout=60)
    assert received[0][0] == "job" and received[-1][0] == "expired"
    assert received[-1][2]["error"] == "job_expired"


def test_the_oldest_finished_job_is_evicted_beyond_the_cap_and_answers_410(
    tiny_weights: Path,
) -> None:
    """(Expiry after the TTL and 404 after a day: tests/app/test_jobs_store.py, with a clock.)"""
    settings = tiny_settings(tiny_weights, max_jobs=2, cache_mb=0)
    with serve(settings) as base_url:
        wait_until_ready(base_url)
        finished = []
        for _ in range(3):
            job_id = submit(base_url, masked_parts(seed="7", **FAST)).json()["jobId"]
            finished.append(wait_final(base_url, job_id))
        oldest = httpx.get(f"{base_url}{JOBS}/{finished[0]['jobId']}", timeout=10)
        assert_envelope(oldest, 410, "job_expired", "forgotten")
        for path in ("/result", "/mask", "/events"):
            gone = httpx.get(f"{base_url}{JOBS}/{finished[0]['jobId']}{path}", timeout=10)
            assert_envelope(gone, 410, "job_expired", "forgotten")
        for newer in finished[1:]:
            assert document(base_url, newer["jobId"])["status"] == "succeeded"


def test_a_queued_job_keeps_its_clients_active_work_slot_until_it_is_final(
    tiny_weights: Path,
) -> None:
    with jobs_server(tiny_weights, max_active_per_client=1) as (base_url, _):
        first = submit(base_url, masked_parts(seed="-1", **SLOW)).json()
        refused = submit(base_url, masked_parts(seed="-1", **FAST))
        assert_envelope(refused, 429, "too_many_active_requests", "queued or running")
        cancel(base_url, first["jobId"])
        assert wait_final(base_url, first["jobId"])["status"] == "canceled"
        assert submit(base_url, masked_parts(seed="-1", **FAST)).status_code == 202
