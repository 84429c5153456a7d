"""Measure what observing costs: the metrics/usage middleware per request, and /metrics' size.

1. Added cost per request of app.observe's middleware (metrics + the usage log line, formatted
   for real and written to /dev/null, text and JSON): the middleware wraps a FastAPI app whose own
   time is clocked separately, so added = total - inner, per request (no difference of two noisy
   distributions). Half the requests hit a route, half a random path (404, the fallback matching).
   Wall-clock and CPU time (this thread's): on a shared machine the wall-clock tail is mostly the
   process waiting for a core, which the CPU time leaves out.
2. The size of a /metrics answer of the real app (create_app) after 100, 1,000 and 10,000
   requests to /health, random paths, random methods and a 405: it must stay constant.

    python scripts/benchmark_observe.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import statistics
import string
import sys
import time
from pathlib import Path

import httpx
from fastapi import FastAPI
from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.inference.worker import InferenceWorker  # noqa: E402
from app.main import create_app  # noqa: E402
from app.observe.logs import configure_logging  # noqa: E402
from app.observe.metrics import ServiceMetrics  # noqa: E402
from app.observe.middleware import RequestObserver  # noqa: E402
from app.settings import Settings  # noqa: E402


def random_path(rng: random.Random) -> str:
    return "/" + "".join(rng.choices(string.ascii_lowercase + string.digits, k=16))


def never_loads(progress: object) -> object:
    raise RuntimeError("the benchmark never starts the worker")


async def added_cost_ms(requests: int, rng: random.Random) -> tuple[list[float], list[float]]:
    """Per request: (wall-clock ms, CPU ms) spent in the middleware itself."""
    inner = FastAPI()

    @inner.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"item": item_id}

    inner_wall = inner_cpu = 0.0

    async def timed_inner(scope: dict, receive: object, send: object) -> None:
        nonlocal inner_wall, inner_cpu
        wall, cpu = time.perf_counter(), time.thread_time()
        await inner(scope, receive, send)  # type: ignore[arg-type]
        inner_wall, inner_cpu = time.perf_counter() - wall, time.thread_time() - cpu

    worker = InferenceWorker.from_settings(Settings(), never_loads)
    observer = RequestObserver(timed_inner, ServiceMetrics(worker))

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        pass

    walls, cpus = [], []
    for index in range(requests):
        path = f"/items/{index}" if index % 2 else random_path(rng)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"bench")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        wall, cpu = time.perf_counter(), time.thread_time()
        await observer(scope, receive, send)  # type: ignore[arg-type]
        walls.append((time.perf_counter() - wall - inner_wall) * 1000)
        cpus.append((time.thread_time() - cpu - inner_cpu) * 1000)
    return walls, cpus


async def metrics_sizes(checkpoints: list[int], rng: random.Random) -> list[tuple[int, int, int]]:
    app = create_app(Settings(device="cpu"), InferenceWorker.from_settings(Settings(), never_loads))
    sizes = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        await client.get("/metrics")  # the /metrics route's own series exist from here on
        done = 0
        for checkpoint in checkpoints:
            while done < checkpoint:
                kind = done % 4
                if kind == 0:
                    await client.get("/health")
                elif kind == 1:
                    await client.get(random_path(rng))
                elif kind == 2:
                    method = "X" + random_path(rng)[1:8].upper()
                    await client.request(method, random_path(rng))
                else:
                    await client.get("/api/try-on")  # 405
                done += 1
            text = (await client.get("/metrics")).text
            series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
            sizes.append((checkpoint, len(text.encode()), series))
    return sizes


def summarize(costs: list[float]) -> str:
    ordered = sorted(costs)
    p99 = ordered[int(len(ordered) * 0.99)]
    return f"p50 {statistics.median(ordered):.3f} ms, p99 {p99:.3f} ms, max {ordered[-1]:.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()
    print(f"machine: {describe_machine()}")
    devnull = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the benchmark)
    gc.collect()
    gc.freeze()  # as the app's lifespan does: the imports are not the collector's business
    # "warning": the usage line is below the level, so this row is the metrics alone.
    for level, log_format in (("warning", "text"), ("info", "text"), ("info", "json")):
        configure_logging(level, log_format)  # type: ignore[arg-type]
        logging.getLogger().handlers[0].setStream(devnull)  # type: ignore[attr-defined]
        walls, cpus = asyncio.run(added_cost_ms(args.requests, random.Random(0)))
        skip = len(walls) // 10  # the first tenth warms caches and creates the series
        logged = "metrics only" if level == "warning" else f"metrics + {log_format} usage line"
        print(f"middleware added cost, {logged}, {len(walls) - skip} requests:")
        print(f"  wall-clock: {summarize(walls[skip:])}")
        print(f"  CPU time:   {summarize(cpus[skip:])}")
    logging.getLogger().setLevel(logging.WARNING)
    for count, size, series in asyncio.run(metrics_sizes([100, 1_000, 10_000], random.Random(1))):
        print(f"/metrics after {count:>6} requests: {size} bytes, {series} samples")


if __name__ == "__main__":
    main()
