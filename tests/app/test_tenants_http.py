"""Tenants over real HTTP (operations.md, "Tenants"): every client in its own lane.

Two keys on one server with tiny weights: ownership of jobs, fair turns between clients, separate
bounds for the two doors, per-client shares, bounded streams, hang-ups that stop the device, and
`nosniff` on every answer. UNet forward hooks count and order the device's work per request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_helpers import assert_envelope, serve, tiny_settings, wait_until_ready
from jobs_helpers import (
    FAST,
    JOBS,
    masked_parts,
    submit,
    wait_final,
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
