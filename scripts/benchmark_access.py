"""Measure what access control adds to each request: the key check and the rate limiter.

A keys file of `--keys` clients (half plain, half `sha256:`), every request from another client
(so the limiter keeps one window per client, as in production), `--rate-limit` per client and the
active-work cap on. Each request runs the real middleware stack (AccessMiddleware ->
LimitsMiddleware) in this process around an app that answers at once, and the same app bare; the
difference is the added cost. Target: <= 1 ms at p99 with 1,000 keys.

    python scripts/benchmark_access.py [--keys 1000] [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from app.access.guard import AccessMiddleware  # noqa: E402
from app.access.keys import KeyStore  # noqa: E402
from app.access.limits import (  # noqa: E402
    ActiveWork,
    LimitsMiddleware,
    RateLimits,
    parse_rate_limit,
)


def write_keys(folder: Path, count: int) -> tuple[Path, list[str]]:
    keys = [f"client{index:05d}-{os.urandom(16).hex()}" for index in range(count)]
    lines = []
    for index, key in enumerate(keys):
        secret = key if index % 2 else f"sha256:{hashlib.sha256(key.encode()).hexdigest()}"
        lines.append(f"client{index:05d} {secret}\n")
    path = folder / "keys.txt"
    path.write_text("".join(lines))
    return path, keys


async def answer_at_once(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def time_requests(app: ASGIApp, keys: list[str], requests: int) -> tuple[list[float], float]:
    """Wall microseconds per request through `app`, cycling over `keys`, and the mean CPU
    microseconds per request of the whole process (background tasks and threads included)."""

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    timings, thread_cpu = [], []
    cpu_started = time.process_time()
    for index in range(requests):
        key = keys[index % len(keys)].encode()
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/api/try-on",
            "headers": [(b"authorization", b"Bearer " + key), (b"content-type", b"x")],
            "client": ("127.0.0.1", 50000),
            "state": {},
        }
        started, thread_started = time.perf_counter_ns(), time.thread_time_ns()
        await app(scope, receive, send)
        timings.append((time.perf_counter_ns() - started) / 1000)
        thread_cpu.append((time.thread_time_ns() - thread_started) / 1000)
        await asyncio.sleep(0)  # let background tasks (the limiter's expiry sweeps) run
    return timings, thread_cpu, (time.process_time() - cpu_started) * 1e6 / requests


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def benchmark(keys_count: int, requests: int, rate_limit: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path, keys = write_keys(Path(folder), keys_count)
        store = KeyStore(path)

    def limiter(app: ASGIApp) -> LimitsMiddleware:
        """A fresh limiter per stack: each client stays under its limit (every answer a 200)."""
        rate_limits = RateLimits(parse_rate_limit(rate_limit))
        return LimitsMiddleware(app, rate_limits=rate_limits, active_work=ActiveWork(4))

    stacks = {
        "bare app": answer_at_once,
        "key check only": AccessMiddleware(answer_at_once, keys=store),
        "limiter only": limiter(answer_at_once),
        "key check + limiter": AccessMiddleware(limiter(answer_at_once), keys=store),
    }
    await time_requests(AccessMiddleware(answer_at_once, keys=store), keys, 2000)  # warm up
    results = {name: await time_requests(app, keys, requests) for name, app in stacks.items()}
    bare, bare_thread, bare_cpu = results["bare app"]
    print(
        f"{keys_count} keys, {requests} requests from {len(keys)} clients, rate limit {rate_limit}"
    )
    print("added microseconds per request (the bare app's own time subtracted):")
    print("                          wall p50  wall p99  thread-CPU p50  thread-CPU p99  CPU mean")
    for name, (timings, thread, cpu) in results.items():
        if name == "bare app":
            continue
        columns = [
            statistics.median(timings) - statistics.median(bare),
            percentile(timings, 0.99) - percentile(bare, 0.99),
            statistics.median(thread) - statistics.median(bare_thread),
            percentile(thread, 0.99) - percentile(bare_thread, 0.99),
            cpu - bare_cpu,
        ]
        print(
            f"  {name:22}"
            + "".join(f"{value:{w}.0f}" for value, w in zip(columns, WIDTHS, strict=True))
        )


WIDTHS = (9, 10, 16, 16, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rate-limit", default="30/minute;500/day")
    args = parser.parse_args()
    print(f"{cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}")
    print(f"load average {os.getloadavg()[0]:.1f} at the start (other work inflates times)")
    asyncio.run(benchmark(args.keys, args.requests, args.rate_limit))


if __name__ == "__main__":
    main()
