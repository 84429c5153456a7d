"""Tenants over real HTTP (operations.md, "Tenants"): every client in its own lane.

Two keys on one server with tiny weights: ownership of jobs, fair turns between clients, separate
bounds for the two doors, per-client shares, bounded streams, hang-ups that stop the device, and
`nosniff` on every answer. UNet forward hooks count and order the device's work per request.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from http_helpers import (
    assert_envelope,
    post_try_on,
    serve,
    tiny_settings,
    try_on_parts,
    wait_for_health,
    wait_until_ready,
)
from jobs_helpers import (
    FAST,
    JOBS,
    SLOW,
    counting_unet_calls,
    jobs_server,
    masked_parts,
    submit,
    wait_final,
    wait_for_job,
)

from app.inference.worker import InferenceWorker

ALICE_KEY = "alice-0123456789abcdef"
BOB_KEY = "bob-0123456789abcdefgh"
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
BOB = {"Authorization": f"Bearer {BOB_KEY}"}


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tenants") / "api-keys.txt"
    path.write_text(f"alice {ALICE_KEY}\nbob {BOB_KEY}\n")
    return path


@pytest.fixture(scope="module")
def tenants_server(tiny_weights: Path, keys_file: Path) -> Iterator[tuple[str, InferenceWorker]]:
    """Keys on; deep job bounds and no per-client share, so one client can queue 40 jobs."""
    settings = tiny_settings(
        tiny_weights,
        api_keys_file=keys_file,
        max_queued_jobs=64,
        max_active_per_client=0,
        queue_size=2,
        cache_mb=0,
    )
    worker = InferenceWorker.from_settings(settings)
    with serve(settings, worker) as base_url:
        assert wait_until_ready(base_url)["status"] == "ok"
        yield base_url, worker


# -- ownership ---------------------------------------------------------------------------------


def test_a_job_answers_its_owner_only_and_everyone_else_hears_job_not_found(
    tenants_server: tuple[str, InferenceWorker],
) -> None:
    base_url, _ = tenants_server
    submitted = submit(base_url, masked_parts(**FAST), headers=ALICE)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["jobId"]
    assert wait_final(base_url, job_id, headers=ALICE)["status"] == "succeeded"
    job = f"{base_url}{JOBS}/{job_id}"

    with httpx.Client(timeout=30) as client:
        for method, url in [
            ("GET", job),
            ("GET", f"{job}/events"),
            ("GET", f"{job}/result"),
            ("GET", f"{job}/mask"),
            ("POST", f"{job}/cancel"),
            ("DELETE", job),
        ]:
            response = client.request(method, url, headers=BOB)
            assert_envelope(response, 404, "job_not_found", "No such job")
        # The owner still has it all: nothing of Bob's touched it.
        assert client.get(job, headers=ALICE).json()["status"] == "succeeded"
        assert client.get(f"{job}/result", headers=ALICE).status_code == 200
        assert client.get(f"{job}/mask", headers=ALICE).status_code == 200
        assert client.delete(job, headers=ALICE).status_code == 204


# -- headers -----------------------------------------------------------------------------------


def test_every_answer_says_nosniff(tenants_server: tuple[str, InferenceWorker]) -> None:
    base_url, _ = tenants_server
    with httpx.Client(base_url=base_url, timeout=10) as client:
        answers = [
            client.get("/health"),  # 200 (no key needed)
            client.get("/api/try-on/jobs/nope", headers=ALICE),  # 404 envelope
            client.get("/no-such-route", headers=ALICE),  # the router's own 404
            client.get("/static/app.js"),  # a static file
            client.get(f"{JOBS}/abc"),  # 401: no key
        ]
    assert [answer.status_code for answer in answers] == [200, 404, 404, 200, 401]
    for answer in answers:
        assert answer.headers["X-Content-Type-Options"] == "nosniff", answer.request.url


# -- fair turns ----------------------------------------------------------------------------------


def test_a_lone_job_waits_for_at_most_one_job_of_a_client_with_forty(
    tenants_server: tuple[str, InferenceWorker],
) -> None:
    base_url, worker = tenants_server
    with counting_unet_calls(worker) as calls:
        alice = []
        for _ in range(40):
            response = submit(base_url, masked_parts(seed="-1", **FAST), headers=ALICE)
            assert response.status_code == 202, response.text
            alice.append(response.json())
        bob = submit(base_url, masked_parts(seed="-1", **FAST), headers=BOB)
        assert bob.status_code == 202, bob.text
        started_before = len(calls.order)  # Alice's jobs that reached the device so far
        # Its place is the real one: one of Alice's goes first (the round: Alice, Bob, Alice...).
        assert bob.json()["queuePosition"] <= 1
        done = wait_final(base_url, bob.json()["jobId"], headers=BOB)
        assert done["status"] == "succeeded"
        with calls.lock:
            order = list(calls.order)
        bob_id = done["requestId"]
        between = order[started_before : order.index(bob_id)]
        assert len(between) <= 1, f"{len(between)} of Alice's jobs went first"

        # Cancel and delete race the round-robin pick: every one of Alice's jobs ends, none is
        # lost or run twice.
        with httpx.Client(base_url=base_url, headers=ALICE, timeout=30) as client:
            for index, job in enumerate(alice):
                url = f"{JOBS}/{job['jobId']}"
                answer = client.delete(url) if index % 2 else client.post(f"{url}/cancel")
                assert answer.status_code in (200, 202, 204), answer.text
        for index, job in enumerate(alice):
            if index % 2 == 0:
                assert wait_final(base_url, job["jobId"], headers=ALICE)["status"] in (
                    "succeeded",
                    "canceled",
                )
    assert wait_until_idle(base_url)["queue_depth"] == 0


def wait_until_idle(base_url: str) -> dict:
    return wait_for_health(base_url, lambda body: not body["busy"] and not body["queue_depth"])


# -- separate doors ------------------------------------------------------------------------------


def test_a_synchronous_try_on_is_accepted_while_jobs_fill_their_bound(tiny_weights: Path) -> None:
    # No keys: both doors' work is one client's (127.0.0.1), so it waits in one lane, in order.
    with jobs_server(
        tiny_weights, queue_size=1, max_queued_jobs=3, max_active_per_client=0, cache_mb=0
    ) as (base_url, _):
        blocker = submit(base_url, masked_parts(seed="-1", **SLOW)).json()
        wait_for_job(base_url, blocker["jobId"], lambda body: body["progress"]["step"] >= 1)
        queued = [submit(base_url, masked_parts(seed="-1", **FAST)) for _ in range(3)]
        assert [answer.status_code for answer in queued] == [202, 202, 202]
        full = submit(base_url, masked_parts(seed="-1", **FAST))
        assert_envelope(full, 503, "gpu_busy", "3 jobs are already queued")

        with ThreadPoolExecutor(max_workers=1) as pool:
            synchronous = pool.submit(post_try_on, base_url, try_on_parts(**FAST))
            wait_for_health(base_url, lambda body: body["queue_depth"] == 4)
            httpx.post(f"{base_url}{JOBS}/{blocker['jobId']}/cancel", timeout=30)
            assert synchronous.result(timeout=300).status_code == 200
