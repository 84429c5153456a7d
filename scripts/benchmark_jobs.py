"""Measure the job door (issue 9's four numbers) through real HTTP on tiny generated weights.

uvicorn runs in this process on 127.0.0.1 (96x128 working size, CPU), so the device worker's step
times and the client's clock are the same `perf_counter`:

1. Submit cost: the server-side time of `POST /api/try-on/jobs` (its `submit` timing, from the
   first byte read to the queued job) against the synchronous route's intake (upload + decode +
   preprocess from its `timingsMs`), both with two 12-megapixel JPEGs. Target: within 10 %.
2. Status GET latency with 32 jobs queued behind a running one, one keep-alive client.
   Target: p99 <= 5 ms.
3. Step -> SSE delay: from the end of each denoising step's UNet call (a forward hook) to the
   arrival of that step's `job` event at a streaming client. Target: <= 50 ms.
4. A cache hit end to end with two 3 MB uploads: the synchronous route, and submit + result
   through the job door. Target: <= 60 ms.

    python scripts/benchmark_jobs.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "app")]

from benchmark_service import jpeg_bytes, synthetic_photo  # noqa: E402
from http_helpers import multipart, serve, tiny_settings, wait_until_ready  # noqa: E402

from app.inference.worker import InferenceWorker  # noqa: E402
from catvton.tiny import write_tiny_weights  # noqa: E402

JOBS = "/api/try-on/jobs"
STEPS = [("num_inference_steps", b"10", None, None), ("guidance_scale", b"1.0", None, None)]
FAST = [*STEPS, ("seed", b"-1", None, None)]  # a random seed: never a cache hit


def parts_of(files: dict[str, bytes], *fields: tuple[str, bytes, None, None]) -> list:
    return [(name, data, f"{name}.jpg", "image/jpeg") for name, data in files.items()] + [*fields]


def post(client: httpx.Client, path: str, parts: list) -> httpx.Response:
    body, content_type = multipart(parts)
    return client.post(path, content=body, headers={"Content-Type": content_type})


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def submit_cost(base_url: str, files: dict[str, bytes], repeats: int) -> None:
    sync_ms, submit_ms = [], []
    with httpx.Client(base_url=base_url, timeout=600) as client:
        for _ in range(repeats):
            answer = post(client, "/api/try-on", parts_of(files, *FAST))
            timings = answer.json()["timingsMs"]
            sync_ms.append(timings["upload"] + timings["decode"] + timings["preprocess"])
            job = post(client, JOBS, parts_of(files, *FAST)).json()
            while job["status"] not in ("succeeded", "failed", "canceled"):
                time.sleep(0.05)
                job = client.get(f"{JOBS}/{job['jobId']}").json()
            submit_ms.append(job["result"]["timingsMs"]["submit"])
    sync, submit = statistics.median(sync_ms), statistics.median(submit_ms)
    print(
        f"1. submit (server side) {submit:6.1f} ms vs synchronous intake {sync:6.1f} ms: "
        f"{submit / sync - 1:+.1%} (median of {repeats}; target within 10 %)"
    )


def status_latency(base_url: str, files: dict[str, bytes], gets: int) -> None:
    with httpx.Client(base_url=base_url, timeout=600) as client:
        slow = [("num_inference_steps", b"100", None, None), ("seed", b"-1", None, None)]
        blocker = post(client, JOBS, parts_of(files, *slow)).json()["jobId"]
        queued = [post(client, JOBS, parts_of(files, *FAST)).json() for _ in range(32)]
        assert all(job["status"] == "queued" for job in queued), queued[-1]
        path = f"{JOBS}/{queued[-1]['jobId']}"
        latencies = []
        for _ in range(gets):
            started = time.perf_counter()
            assert client.get(path).status_code == 200
            latencies.append((time.perf_counter() - started) * 1000)
        for job in [*queued, {"jobId": blocker}]:
            client.post(f"{JOBS}/{job['jobId']}/cancel")
    print(
        f"2. status GET with 32 queued: p50 {percentile(latencies, 0.5):.2f} ms, "
        f"p99 {percentile(latencies, 0.99):.2f} ms over {gets} GETs (target p99 <= 5 ms)"
    )


def step_to_event_delay(base_url: str, worker: InferenceWorker, files: dict[str, bytes]) -> None:
    assert worker.device.models is not None
    step_ends: list[float] = []
    handle = worker.device.models.pipeline.unet.register_forward_hook(
        lambda module, args, output: step_ends.append(time.perf_counter())
    )
    arrivals: dict[int, float] = {}
    steps = [("num_inference_steps", b"50", None, None), ("guidance_scale", b"1.0", None, None)]
    try:
        with httpx.Client(base_url=base_url, timeout=600) as client:
            job_id = post(client, JOBS, parts_of(files, *steps)).json()["jobId"]
            with client.stream("GET", f"{JOBS}/{job_id}/events") as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        step = json.loads(line[5:])["progress"]["step"]
                        arrivals.setdefault(step, time.perf_counter())
    finally:
        handle.remove()
    delays = [
        (arrivals[step] - step_ends[step - 1]) * 1000 for step in range(1, 51) if step in arrivals
    ]
    print(
        f"3. step -> SSE event: p50 {percentile(delays, 0.5):.1f} ms, max {max(delays):.1f} ms "
        f"over {len(delays)} of 50 steps (target <= 50 ms)"
    )


def cache_hit(base_url: str, repeats: int) -> None:
    # Two ~3 MB uploads: smooth photo-like content at about 5 megapixels.
    files = {
        "person_image": jpeg_bytes(synthetic_photo((2000, 2600), seed=3)),
        "cloth_image": jpeg_bytes(synthetic_photo((2400, 2200), seed=4)),
    }
    sizes = ", ".join(f"{len(data) / 1e6:.1f} MB" for data in files.values())
    parts = parts_of(files, *STEPS, ("seed", b"7", None, None))
    sync_ms, job_ms = [], []
    with httpx.Client(base_url=base_url, timeout=600) as client:
        assert post(client, "/api/try-on", parts).json()["cached"] is False
        for _ in range(repeats):
            started = time.perf_counter()
            assert post(client, "/api/try-on", parts).json()["cached"] is True
            sync_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            job = post(client, JOBS, parts).json()
            assert job["cached"] is True and job["status"] == "succeeded"
            assert client.get(job["result"]["imageUrl"]).status_code == 200
            job_ms.append((time.perf_counter() - started) * 1000)
    print(
        f"4. cache hit end to end ({sizes}): synchronous {statistics.median(sync_ms):.1f} ms, "
        f"job submit + result {statistics.median(job_ms):.1f} ms "
        f"(median of {repeats}; target <= 60 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--gets", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the tiny networks gain nothing from more; the server needs a core
    print(describe_machine())
    twelve_mp = {
        "person_image": jpeg_bytes(synthetic_photo((4032, 3024), seed=1), orientation=6),
        "cloth_image": jpeg_bytes(synthetic_photo((4000, 3000), seed=2)),
    }
    weights_dir = write_tiny_weights(Path(tempfile.mkdtemp(prefix="catvton-bench-")))
    settings = tiny_settings(weights_dir, log_level="warning", max_upload_mb=20.0)
    worker = InferenceWorker.from_settings(settings)
    with serve(settings, worker) as base_url:
        wait_until_ready(base_url)
        submit_cost(base_url, twelve_mp, args.repeats)
        status_latency(base_url, twelve_mp, args.gets)
        step_to_event_delay(base_url, worker, twelve_mp)
        cache_hit(base_url, args.repeats)
    print(f"load average at the end {os.getloadavg()[0]:.1f} (a shared machine inflates times)")


if __name__ == "__main__":
    main()
