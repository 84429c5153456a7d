"""Tenants over real HTTP (README, "Tenants"): every client in its own lane.

Two keys on one server with tiny weights: ownership of jobs, fair turns between clients, separate
bounds for the two doors, per-client shares, bounded streams, hang-ups that stop the device, and
`nosniff` on every answer. UNet forward hooks count and order the device's work per request.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import torch
from http_helpers import (
    assert_envelope,
    image_bytes,
    post_try_on,
    send_unread,
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

from app.edge.request_id import current_request_id
from app.inference.worker import InferenceWorker

ALICE_KEY = "alice-0123456789abcdef"
BOB_KEY = "bob-0123456789abcdefgh"
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
BOB = {"Authorization": f"Bearer {BOB_KEY}"}
MAX_STREAMS = 8  # --max-streams-per-client's default


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
            ("GET", f"{job}/preview"),
            ("POST", f"{job}/cancel"),
            ("DELETE", job),
        ]:
            response = client.request(method, url, headers=BOB)
            assert_envelope(response, 404, "job_not_found", "No such job")
        # The owner still has it all: nothing of Bob's touched it.
        assert client.get(job, headers=ALICE).json()["status"] == "succeeded"
        assert client.get(f"{job}/result", headers=ALICE).status_code == 200
        assert client.get(f"{job}/mask", headers=ALICE).status_code == 200
        assert client.get(f"{job}/preview", headers=ALICE).status_code == 200
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
    assert worker.device.models is not None
    gate = threading.Event()  # the device waits at its first UNet call until the test opens it

    def wait_for_gate(module: torch.nn.Module, args: tuple) -> None:
        gate.wait(60)  # returns None: the arguments pass unchanged

    gated = worker.device.models.pipeline.unet.register_forward_pre_hook(wait_for_gate)
    with counting_unet_calls(worker) as calls:
        alice = []
        for _ in range(40):
            response = submit(base_url, masked_parts(seed="-1", **FAST), headers=ALICE)
            assert response.status_code == 202, response.text
            alice.append(response.json())
        bob = submit(base_url, masked_parts(seed="-1", **FAST), headers=BOB)
        assert bob.status_code == 202, bob.text
        # Alice's first job holds the device; Bob's place is the real one: one of Alice's goes
        # first (the round: Alice, Bob, Alice, ...), not 39.
        assert bob.json()["queuePosition"] == 1
        gated.remove()
        gate.set()
        done = wait_final(base_url, bob.json()["jobId"], headers=BOB)
        assert done["status"] == "succeeded"
        with calls.lock:
            order = list(calls.order)
        assert order[0] == alice[0]["requestId"]  # the one running when Bob came
        between = order[1 : order.index(done["requestId"])]
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


# -- a hang-up stops the work --------------------------------------------------------------------


class TimedUNetCalls:
    """The time of each UNet forward, per request id (the device runs work in its context)."""

    def __init__(self, worker: InferenceWorker) -> None:
        assert worker.device.models is not None
        self.calls: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.handle = worker.device.models.pipeline.unet.register_forward_pre_hook(self.count)

    def count(self, module: torch.nn.Module, args: tuple) -> None:
        with self.lock:
            self.calls.append((time.perf_counter(), current_request_id() or "-"))

    def of(self, request_id: str) -> list[float]:
        with self.lock:
            return [at for at, called_by in self.calls if called_by == request_id]


def test_a_hang_up_mid_inference_stops_it_and_the_next_one_starts_at_once(
    tiny_weights: Path,
) -> None:
    with jobs_server(tiny_weights, cache_mb=0) as (base_url, worker):
        unet = TimedUNetCalls(worker)
        try:
            quitter = send_unread(base_url, try_on_parts(**SLOW), {"X-Request-ID": "quitter"})
            deadline = time.monotonic() + 120
            while len(unet.of("quitter")) < 4:
                assert time.monotonic() < deadline, "the try-on never started"
                time.sleep(0.005)
            queued = submit(base_url, masked_parts(seed="-1", **FAST)).json()
            wait_for_health(base_url, lambda body: body["queue_depth"] == 1)
            quitter.close()
            hung_up_at = time.perf_counter()
            done = wait_final(base_url, queued["jobId"])
            assert done["status"] == "succeeded"
            steps = unet.of("quitter")
            step_s = (steps[3] - steps[0]) / 3
            next_step_at = unet.of(done["requestId"])[0]
            # It stopped at its next step (one more may have begun as the hang-up arrived) ...
            assert len([at for at in steps if at > hung_up_at]) <= 1, len(steps)
            assert len(steps) < 100
            # ... and the next job's first step came within two step times of it (plus the job's
            # own VAE encoding before its first step, measured on the same machine as a step).
            assert next_step_at - hung_up_at < 2 * step_s + 0.5, (next_step_at - hung_up_at, step_s)
        finally:
            unet.handle.remove()
        assert wait_until_idle(base_url)["inferences_served"] >= 1


# -- streams -------------------------------------------------------------------------------------


def test_streams_are_capped_per_client_and_coalesce_progress(
    tenants_server: tuple[str, InferenceWorker],
) -> None:
    base_url, _ = tenants_server
    job = submit(base_url, masked_parts(seed="-1", **SLOW), headers=ALICE).json()
    events_url = f"{base_url}{JOBS}/{job['jobId']}/events"
    with contextlib.ExitStack() as streams, httpx.Client(timeout=60) as client:
        opened = [
            streams.enter_context(client.stream("GET", events_url, headers=ALICE))
            for _ in range(MAX_STREAMS)
        ]
        assert all(stream.status_code == 200 for stream in opened)
        refused = client.get(events_url, headers=ALICE)
        assert_envelope(refused, 429, "too_many_streams", "at most 8")
        assert int(refused.headers["Retry-After"]) > 0
        # Another client's streams are its own: Bob is refused only for not owning the job.
        assert client.get(events_url, headers=BOB).status_code == 404

        # Reading one stream to its end: progress at most 10 events a second, the final state.
        started = time.monotonic()
        events = read_stream(opened[0])
        elapsed = time.monotonic() - started
        assert events[-1]["status"] == "succeeded"
        assert len(events) <= 10 * elapsed + 3, (len(events), elapsed)

    # Every stream closed: Alice's slots are free again.
    with httpx.stream("GET", events_url, headers=ALICE, timeout=30) as again:
        assert again.status_code == 200


def read_stream(response: httpx.Response) -> list[dict]:
    """The `job` events' documents of an open event stream, until it ends (preview events,
    which name a URL, are left out)."""
    documents, event = [], ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:") and event == "job":
            documents.append(json.loads(line.removeprefix("data:").strip()))
    return documents


# -- nothing reads a body unbounded ------------------------------------------------------------


def test_idempotent_replays_are_admitted_before_their_body_is_read(tiny_weights: Path) -> None:
    """40 replays of one key held open mid-body: all but the job door's places are refused at
    once, before their bodies are read (no per-client share here: the admission bounds them)."""
    with jobs_server(tiny_weights, max_queued_jobs=4, max_active_per_client=0) as (base_url, _):
        headers = {"Idempotency-Key": "replayed-key"}
        first = submit(base_url, masked_parts(**FAST), headers=headers)
        assert first.status_code == 202, first.text
        wait_final(base_url, first.json()["jobId"])

        url = urlsplit(base_url)
        head = (
            f"POST {JOBS} HTTP/1.1\r\nHost: {url.netloc}\r\nIdempotency-Key: replayed-key\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 15000000\r\n\r\n"
            '--x\r\nContent-Disposition: form-data; name="person_image"; filename="p.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode() + image_bytes()
        connections = [socket.create_connection((url.hostname, url.port)) for _ in range(40)]
        try:
            for connection in connections:
                connection.sendall(head + b"\0" * 65536)  # a large photo, still arriving
            answers = [read_head(connection) for connection in connections]
        finally:
            for connection in connections:
                connection.close()
    refused = [answer for answer in answers if answer.startswith(b"HTTP/1.1 503")]
    assert len(refused) >= 36, answers


def read_head(connection: socket.socket, wait_s: float = 1.0) -> bytes:
    """The status line the server sent within `wait_s` (b"" when it is still reading)."""
    connection.settimeout(wait_s)
    try:
        return connection.recv(65536).split(b"\r\n", 1)[0]
    except TimeoutError:
        return b""


# -- retention per client ------------------------------------------------------------------------

FLOOD_SHARE = 10  # --max-jobs-per-client here (100 by default)
RESULTS_FITTING = 200_000  # --job-store-mb here, in bytes: about six results of the tiny model


def test_a_cache_hit_flood_evicts_the_flooders_own_oldest_never_another_clients_result(
    tiny_weights: Path, keys_file: Path
) -> None:
    """40 cache-hit jobs of Alice's after one of Bob's: without the per-client share the count
    cap (40 > --max-jobs) would evict Bob's older result, and if each hit counted its own bytes
    the byte cap would (Alice's 10 kept x the result > --job-store-mb). Only Alice's own oldest
    go (410); her kept jobs share one result."""
    with jobs_server(
        tiny_weights,
        api_keys_file=keys_file,
        max_jobs_per_client=FLOOD_SHARE,
        max_jobs=30,
        job_store_mb=RESULTS_FITTING / 2**20,
        max_active_per_client=0,
    ) as (base_url, _):
        bob = submit(base_url, masked_parts(seed="-1", **FAST), headers=BOB).json()
        assert wait_final(base_url, bob["jobId"], headers=BOB)["status"] == "succeeded"
        flood = []
        for index in range(40):
            answer = submit(base_url, masked_parts(seed="1234", **FAST), headers=ALICE)
            assert answer.status_code == 202, answer.text
            if index == 0:  # the one computed; every later one is a hit, succeeded at once
                done = wait_final(base_url, answer.json()["jobId"], headers=ALICE)
                assert done["status"] == "succeeded"
            else:
                assert answer.json()["cached"] is True
            flood.append(answer.json()["jobId"])
        with httpx.Client(base_url=f"{base_url}{JOBS}", timeout=30) as client:
            kept = client.get(f"/{bob['jobId']}/result", headers=BOB)
            assert kept.status_code == 200 and kept.content[:4] == b"\x89PNG"
            for job_id in flood[:-FLOOD_SHARE]:
                assert_envelope(
                    client.get(f"/{job_id}/result", headers=ALICE), 410, "job_expired", ""
                )
            newest = [
                client.get(f"/{job_id}/result", headers=ALICE) for job_id in flood[-FLOOD_SHARE:]
            ]
            assert [answer.status_code for answer in newest] == [200] * FLOOD_SHARE
            images = {answer.content for answer in newest}
            assert len(images) == 1  # one result, shared by Alice's kept jobs
            # The bound fits both results, not Alice's kept ones counted one by one.
            size = len(next(iter(images)))
            assert 2 * size < RESULTS_FITTING < FLOOD_SHARE * size, size
