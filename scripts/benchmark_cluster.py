"""Measure what the Ray Serve path adds per request, and what a second try-on replica buys.

On the same machine and the same tiny demo weights (96 x 128, 10 steps, a user mask so that every
request costs the same), three servers are started one after the other:

1. the single process (`python -m app --demo`),
2. the cluster with 1 try-on replica (`scripts/cluster_demo.sh --replicas 1`),
3. the cluster with 2 try-on replicas (`scripts/cluster_demo.sh --replicas 2`).

Overhead per request: the client's wall time minus the model's own stages as the answer reports
them (`timingsMs`: masking and the pipeline's stages, measured where the model runs), median over
`--requests` sequential requests; the cluster's overhead minus the single process's is what Serve,
the extra process hops and the pickled images cost (target <= 50 ms at the median). Throughput:
`--burst` requests at once, requests per second, 2 replicas against 1. On a 2-core machine two
CPU replicas compete for the same cores, so the ratio shows what the routing allows here, not
what two GPUs would give.

    python scripts/benchmark_cluster.py [--requests 20] [--burst 8]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MODEL_STAGES = ("mask", "pipeline_")  # timingsMs keys measured where the model runs
FIELDS = {"num_inference_steps": "10", "guidance_scale": "1.0", "seed": "7"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png(size: tuple[int, int], mode: str = "RGB", box: bool = False) -> bytes:
    image = Image.linear_gradient("L").resize(size).convert(mode)
    if box:
        image = Image.new("L", size, 0)
        image.paste(255, (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


FILES = {
    "person_image": ("person.png", png((120, 160)), "image/png"),
    "cloth_image": ("cloth.png", png((100, 100)), "image/png"),
    "mask_image": ("mask.png", png((120, 160), box=True), "image/png"),
}


@contextmanager
def running(command: list[str], url: str, timeout: float = 900):
    """Start `command` in its own process group, wait for `url`/health to say ok, stop it."""
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).json()["status"] == "ok":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[:3]} did not become ready")
            time.sleep(0.5)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def try_on(url: str) -> tuple[float, float]:
    """(wall seconds, model seconds) of one request."""
    started = time.perf_counter()
    response = httpx.post(f"{url}/api/try-on", data=FIELDS, files=FILES, timeout=300)
    wall = time.perf_counter() - started
    response.raise_for_status()
    timings = response.json()["timingsMs"]
    model_ms = sum(ms for stage, ms in timings.items() if stage.startswith(MODEL_STAGES))
    return wall, model_ms / 1000


def measure(url: str, requests: int, burst: int) -> dict[str, float]:
    for _ in range(2):
        try_on(url)  # warm-up: first-call costs of each replica
    samples = [try_on(url) for _ in range(requests)]
    overhead = statistics.median(wall - model for wall, model in samples)
    started = time.perf_counter()
    with ThreadPoolExecutor(burst) as pool:
        list(pool.map(lambda _: try_on(url), range(burst)))
    throughput = burst / (time.perf_counter() - started)
    return {"overhead_ms": overhead * 1000, "throughput": throughput}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--burst", type=int, default=8)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as demo_dir:
        port = free_port()
        single = [PYTHON, "-m", "app", "--demo", "--demo-dir", demo_dir, "--host", "127.0.0.1",
                  "--port", str(port), "--queue-size", str(args.burst)]  # fmt: skip
        with running(single, f"http://127.0.0.1:{port}"):
            results["single process"] = measure(
                f"http://127.0.0.1:{port}", args.requests, args.burst
            )
    loads.append(os.getloadavg()[0])
    for replicas in (1, 2):
        port = free_port()
        demo = [str(ROOT / "scripts" / "cluster_demo.sh"), "--port", str(port), "--replicas",
                str(replicas), "--max-queued-requests", str(args.burst)]  # fmt: skip
        with running(demo, f"http://127.0.0.1:{port}"):
            results[f"cluster, {replicas} replica(s)"] = measure(
                f"http://127.0.0.1:{port}", args.requests, args.burst
            )
        loads.append(os.getloadavg()[0])

    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores; load average (1 min) during the runs: "
          + ", ".join(f"{load:.1f}" for load in loads))  # fmt: skip
    print(
        f"{args.requests} sequential requests (median), then {args.burst} at once; "
        "tiny demo weights, 96x128, 10 steps, user mask"
    )
    print(f"{'server':<26}{'overhead ms':>12}{'requests/s':>12}")
    for name, result in results.items():
        print(f"{name:<26}{result['overhead_ms']:>12.1f}{result['throughput']:>12.2f}")
    base = results["single process"]["overhead_ms"]
    one, two = results["cluster, 1 replica(s)"], results["cluster, 2 replica(s)"]
    extra = (one["overhead_ms"] - base, two["overhead_ms"] - base)
    print(f"cluster overhead over the single process: {extra[0]:.1f} ms (1 replica), "
          f"{extra[1]:.1f} ms (2 replicas); target <= 50 ms")  # fmt: skip
    print(f"throughput, 2 replicas / 1 replica: {two['throughput'] / one['throughput']:.2f}x")


if __name__ == "__main__":
    main()
