"""Run issue 8's hostile mix concurrently against a real server; print what a monitor would see.

Starts `python -m app --demo` (tiny random weights) on a free loopback port, runs every hostile
client at once for a bounded number of requests, polls /health all along, then sends one
legitimate try-on, stops the server and prints: /health p50/p99/max during the mix, the server
process's peak RSS (VmHWM) and its RSS when idle, the answers each hostile client got, and the
machine with its load average. Limits are the defaults but the two upload deadlines, shortened
so the mix ends in about a minute (they change how long a place is held, not what it costs).

    python scripts/hostile_mix.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import multiprocessing.synchronize
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "app")]

from hostile_payloads import (  # noqa: E402
    corrupt_png,
    deep_png,
    many_scan_jpeg,
    near_boundary_part_data,
    open_post,
    read_response,
    try_on_parts_with,
)
from http_helpers import multipart  # noqa: E402

IDLE_TIMEOUT_S = 5
UPLOAD_TIMEOUT_S = 15


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of `pid` in KiB, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def post(url: str, parts: list, boundary: str = "----RNFormBoundary7MA4YWxk") -> str:
    body, content_type = multipart(parts, boundary=boundary)
    try:
        response = httpx.post(
            f"{url}/api/try-on", content=body, headers={"Content-Type": content_type}, timeout=300
        )
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return f"{response.status_code} {response.json().get('error', 'ok')}"


def stalled_upload(url: str) -> str:
    """Finding 1: the head and the first boundary, then nothing."""
    connection = open_post(url, "multipart/form-data; boundary=b", 100_000)
    connection.sendall(b"--b\r\n")
    status, _, closed = read_response(connection, timeout=IDLE_TIMEOUT_S + 30)
    connection.close()
    return f"{status} closed={closed}"


def trickling_upload(url: str) -> str:
    """Finding 1: a byte a second, never idle, never done."""
    connection = open_post(url, "multipart/form-data; boundary=b", 100_000)
    connection.sendall(b'--b\r\nContent-Disposition: form-data; name="person_image"\r\n\r\n')
    connection.settimeout(1.0)
    deadline = time.monotonic() + UPLOAD_TIMEOUT_S + 30
    while time.monotonic() < deadline:
        try:
            connection.recv(1, socket.MSG_PEEK)  # an answer (or the close) has come
            break
        except TimeoutError:
            connection.sendall(b"x")
    status, _, closed = read_response(connection, timeout=10)
    connection.close()
    return f"{status} closed={closed}"


def hang_up_during_decoding(url: str, payload: bytes) -> str:
    """Finding 5: a whole request, gone while its 40-megapixel photo decodes."""
    body, content_type = multipart(try_on_parts_with(person_image=payload))
    connection = open_post(url, content_type, len(body))
    connection.sendall(body)
    time.sleep(1.0)
    connection.close()
    return "hung up"


def poll_health(url: str, stop: multiprocessing.synchronize.Event, results: Connection) -> None:
    """GET /health every 20 ms on one connection until `stop`; send back latencies and failures."""
    latencies: list[float] = []
    failures: collections.Counter[str] = collections.Counter()
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                client.get("/health")
                latencies.append(time.perf_counter() - started)
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] += 1
            stop.wait(0.02)
    results.send((latencies, dict(failures)))


class HealthPoller:
    """`poll_health` in its own process: the mix's client threads share this process's GIL, and
    their megabyte copies would show up as /health latency that the server never caused."""

    def __init__(self, url: str) -> None:
        self._stop = multiprocessing.Event()
        self._results, sender = multiprocessing.Pipe(duplex=False)
        self._process = multiprocessing.Process(target=poll_health, args=(url, self._stop, sender))
        self.latencies: list[float] = []
        self.failures: dict[str, int] = {}

    def summary(self) -> str:
        latencies_ms = sorted(latency * 1000 for latency in self.latencies)
        p99 = latencies_ms[int(0.99 * (len(latencies_ms) - 1))]
        return (
            f"{len(latencies_ms)} polls, p50 {statistics.median(latencies_ms):.1f} ms, "
            f"p99 {p99:.1f} ms, max {latencies_ms[-1]:.1f} ms, failed: {self.failures}"
        )

    def __enter__(self) -> HealthPoller:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.latencies, self.failures = self._results.recv()
        self._process.join()


def start_server(port: int, demo_dir: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "app",
        "--demo",
        "--demo-dir",
        demo_dir,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--upload-idle-timeout",
        str(IDLE_TIMEOUT_S),
        "--upload-timeout",
        str(UPLOAD_TIMEOUT_S),
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).json()["status"] == "ok":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the server did not get ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="requests per hostile client")
    args = parser.parse_args()

    print("building payloads ...", flush=True)
    deep = deep_png((5000, 8000))  # 40 MP, 16-bit RGBA: 1.4 MB, 160 MB decoded
    scan_bomb = many_scan_jpeg((6000, 6000), 20_000)  # 1.25 MB, 45 s of decoding before
    boundary = "----RNFormBoundary7MA4YWxk"
    near_boundaries = near_boundary_part_data(boundary, 60_000_000)
    clients: dict[str, Callable[[str], str]] = {
        "1 stalled upload": stalled_upload,
        "1 trickling upload": trickling_upload,
        "2 junk photo + 40 MP garment and mask": lambda url: post(
            url, try_on_parts_with(person_image=corrupt_png(), cloth_image=deep, mask_image=deep)
        ),
        "3 JPEG of 20,000 scans": lambda url: post(url, try_on_parts_with(cloth_image=scan_bomb)),
        "5 hang-up while decoding": lambda url: hang_up_during_decoding(url, deep),
        "6 boundary of 300 characters": lambda url: post(url, try_on_parts_with(), "b" * 300),
        "8 40 MP 16-bit photo and mask": lambda url: post(
            url, try_on_parts_with(person_image=deep, mask_image=deep)
        ),
        "9 60 MB of near-boundaries": lambda url: post(
            url, [("person_image", near_boundaries, "p.jpg", None)], boundary
        ),
    }
    copies = {"1 stalled upload": 5, "9 60 MB of near-boundaries": 5}

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as demo_dir:
        server = start_server(port, demo_dir)
        try:
            wait_ready(url, server)
            idle_kib = rss_kib(server.pid, "VmRSS")
            print(f"server ready, idle RSS {idle_kib / 1024:.0f} MiB", flush=True)
            with HealthPoller(url) as quiet:  # the same polls without the mix: the machine's share
                time.sleep(5)
            answers: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
            started = time.monotonic()
            with HealthPoller(url) as health, ThreadPoolExecutor(max_workers=32) as pool:
                jobs = [
                    (name, pool.submit(client, url))
                    for _ in range(args.rounds)
                    for name, client in clients.items()
                    for _ in range(copies.get(name, 1))
                ]
                for name, job in jobs:
                    answers[name][job.result()] += 1
            mix_s = time.monotonic() - started
            peak_kib = rss_kib(server.pid, "VmHWM")
            legit = httpx.post(
                f"{url}/api/try-on",
                content=(form := multipart(try_on_parts_with()))[0],
                headers={"Content-Type": form[1]},
                timeout=300,
            )
        finally:
            server.terminate()
            server.wait(30)

    print(f"\nmachine: {describe_machine()}")
    print(f"mix: {len(jobs)} hostile requests, {mix_s:.0f} s")
    for name, counter in sorted(answers.items()):
        print(f"  finding {name}: {dict(counter)}")
    print(f"/health before the mix: {quiet.summary()}")
    print(f"/health during the mix: {health.summary()}")
    print(f"server RSS: idle {idle_kib / 1024:.0f} MiB, peak {peak_kib / 1024:.0f} MiB")
    print(f"legitimate try-on afterwards: {legit.status_code}")


if __name__ == "__main__":
    main()
