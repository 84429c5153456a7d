"""Measure the tenants rules (issue 18's three numbers) on tiny generated weights, in < 3 min.

1. The scheduler's cost per pick: `WaitingLine.take_next` (the round robin plus the positions and
   ETAs it re-announces) with 1, 10 and 100 clients waiting, 4 tickets each. Target: < 1 ms at 100.
2. /health p99 while 8 event streams per client x 4 clients (keys) watch a running job, one
   keep-alive client polling. Target: < 100 ms.
3. The wait of a lone client's job submitted behind 40 jobs of another client (fair turns, real
   HTTP), against first come first served, whose wait is the lone job's FIFO position times the
   measured time per job.

    python scripts/benchmark_tenants.py [--picks 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from benchmark_jobs import percentile
from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "app")]

from http_helpers import multipart, serve, tiny_settings, wait_until_ready  # noqa: E402
from jobs_helpers import masked_parts  # noqa: E402

from app.edge.schemas import TryOnOptions  # noqa: E402
from app.inference.contract import QueuedWork, TryOnJob  # noqa: E402
from app.inference.estimates import StepTimes  # noqa: E402
from app.inference.waiting import WaitingLine  # noqa: E402
from catvton.tiny import write_tiny_weights  # noqa: E402

JOBS = "/api/try-on/jobs"
FAST = {"num_inference_steps": "10", "guidance_scale": "1.0", "seed": "-1"}
CLIENTS = ["alice", "bob", "carol", "dave"]


def pick_cost_ms(clients: int, picks: int) -> float:
    """Median ms of one `take_next` with `clients` x 4 tickets waiting (one added per pick)."""
    loop = asyncio.new_event_loop()
    times = StepTimes()
    times.observe_step(False, 0.05)  # measured step times: every pick also computes ETAs
    line = WaitingLine(times)
    job = TryOnJob(images=None, options=TryOnOptions())  # type: ignore[arg-type]

    def ticket(client: int) -> QueuedWork:
        work = QueuedWork(
            TryOnJob(job.images, job.options, client=f"c{client}"),
            loop,
            loop.create_future(),
            loop.create_future(),
            door="job",
        )
        return work

    for index in range(clients * 4):
        line.add(ticket(index % clients))
    costs = []
    for index in range(picks):
        started = time.perf_counter()
        line.take_next()
        costs.append(time.perf_counter() - started)
        line.running = None
        line.add(ticket(index % clients))
    loop.close()
    return statistics.median(costs) * 1000


def submit(client: httpx.Client, key: str) -> dict:
    body, content_type = multipart(masked_parts(**FAST))
    response = client.post(
        JOBS,
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {key}"},
    )
    response.raise_for_status()
    return response.json()


def wait_final(client: httpx.Client, job_id: str, key: str) -> dict:
    while True:
        body = client.get(f"{JOBS}/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()
        if body["status"] in ("succeeded", "failed", "canceled"):
            return body
        time.sleep(0.02)


def health_under_streams(base_url: str) -> list[float]:
    """/health latencies while 8 streams x 4 clients each watch their own long job (Alice's runs,
    the others wait behind it), polled by one keep-alive client for 15 s."""
    keys = {name: f"{name}-key-0123456789" for name in CLIENTS}
    stop = threading.Event()
    with httpx.Client(base_url=base_url, timeout=120) as client:
        jobs = {name: submit_slow(client, key) for name, key in keys.items()}

        def watch(name: str) -> None:
            url = f"{base_url}{JOBS}/{jobs[name]['jobId']}/events"
            headers = {"Authorization": f"Bearer {keys[name]}"}
            with httpx.stream("GET", url, headers=headers, timeout=120) as stream:
                for _ in stream.iter_lines():
                    if stop.is_set():
                        return

        threads = [
            threading.Thread(target=watch, args=(name,), daemon=True)
            for name in CLIENTS
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        latencies = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client.get("/health")
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
        stop.set()
        for name, job in jobs.items():  # deleting ends each job and its streams
            client.delete(
                f"{JOBS}/{job['jobId']}", headers={"Authorization": f"Bearer {keys[name]}"}
            )
    return latencies


def submit_slow(client: httpx.Client, key: str) -> dict:
    body, content_type = multipart(
        masked_parts(num_inference_steps="100", guidance_scale="1.0", seed="-1")
    )
    response = client.post(
        JOBS, content=body, headers={"Content-Type": content_type, "Authorization": f"Bearer {key}"}
    )
    response.raise_for_status()
    return response.json()


def lone_wait(base_url: str) -> tuple[float, float, float]:
    """(fair wait s, FIFO wait s, s per job) of Bob's one job behind Alice's 40."""
    alice, bob = "alice-key-0123456789", "bob-key-0123456789"
    with httpx.Client(base_url=base_url, timeout=120) as client:
        alice_jobs = [submit(client, alice) for _ in range(40)]
        submitted = time.monotonic()
        lone = submit(client, bob)
        statuses = [
            client.get(
                f"{JOBS}/{job['jobId']}", headers={"Authorization": f"Bearer {alice}"}
            ).json()["status"]
            for job in alice_jobs
        ]
        wait_final(client, lone["jobId"], bob)
        fair_s = time.monotonic() - submitted
        # Time per job: ten more of Alice's jobs, as they run now, one after the other.
        started = time.monotonic()
        auth = {"Authorization": f"Bearer {alice}"}
        first = next(
            index
            for index, job in enumerate(alice_jobs)
            if client.get(f"{JOBS}/{job['jobId']}", headers=auth).json()["status"] == "queued"
        )
        for job in alice_jobs[first : first + 10]:
            wait_final(client, job["jobId"], alice)
        per_job_s = (time.monotonic() - started) / 10
        for job in alice_jobs:  # the rest is not needed
            client.delete(f"{JOBS}/{job['jobId']}", headers=auth)
        ahead_in_fifo = sum(status in ("queued", "running") for status in statuses)
        return fair_s, (ahead_in_fifo + 1) * per_job_s, per_job_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picks", type=int, default=2000)
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    for clients in (1, 10, 100):
        cost_ms = pick_cost_ms(clients, args.picks)
        print(f"pick cost, {clients:3d} clients x 4 waiting: {cost_ms:.3f} ms (median)")

    with tempfile.TemporaryDirectory() as folder:
        weights = write_tiny_weights(Path(folder) / "weights")
        keys_file = Path(folder) / "keys.txt"
        keys_file.write_text("".join(f"{name} {name}-key-0123456789\n" for name in CLIENTS))
        settings = tiny_settings(
            weights,
            api_keys_file=keys_file,
            max_queued_jobs=64,
            max_active_per_client=0,
            cache_mb=0,
        )
        with serve(settings) as base_url:
            wait_until_ready(base_url)
            latencies = health_under_streams(base_url)
            p50, p99 = (percentile(latencies, share) * 1000 for share in (0.5, 0.99))
            print(
                f"/health under 8 streams x 4 clients: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
                f"({len(latencies)} calls)"
            )
            time.sleep(0.5)
            fair_s, fifo_s, per_job_s = lone_wait(base_url)
            print(
                f"lone job behind 40 of another client: {fair_s:.1f} s with fair turns, "
                f"{fifo_s:.1f} s first come first served ({per_job_s:.2f} s per job)"
            )
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
