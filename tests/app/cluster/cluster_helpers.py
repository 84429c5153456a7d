"""The session's cluster, as the tests see it: its URL, its Redis, and what they do to them."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.cluster.headers import SERVED_BY_HEADER

REPO_ROOT = Path(__file__).resolve().parents[3]
DEMO_SCRIPT = REPO_ROOT / "scripts" / "cluster_demo.sh"
START_TIMEOUT_S = 600  # a loaded 2-core machine imports torch in five processes at once
QUEUE_BOUND = 2  # --max-queued-requests: per ingress replica
HOLD = {"num_inference_steps": "100", "guidance_scale": "7.5"}  # the longest try-on there is
# Serve's router sends a request to the ingress replica with fewer requests in flight (at random
# between equals), counted in a cache that may lag this long (Serve's
# RAY_SERVE_QUEUE_LENGTH_CACHE_TIMEOUT_S): a replica still counted busy gets nothing until then, so
# tests that need "the other replica" try for longer than that, not a number of times (once, 8
# tries in a row all went to one replica).
ROUTER_CACHE_S = 10.0
ELSEWHERE_TIMEOUT_S = 3 * ROUTER_CACHE_S


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    url: str
    redis_port: int
    output: list[str] = field(default_factory=list)
    restarted_redis: subprocess.Popen | None = None

    def redis(self) -> Any:
        """A client of the cluster's Redis (imported here: collection must not need redis)."""
        import redis

        return redis.Redis(port=self.redis_port, socket_timeout=5)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def wait_for_health(self, check: Callable[[dict], bool], timeout: float = 120.0) -> dict:
        """Poll /health until `check(body)` holds; return that body."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.health()
            if check(body):
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(f"/health never satisfied the check: {body}")
            time.sleep(0.25)

    def stop_redis(self) -> str:
        """Stop the running Redis (it writes its append-only file first); return its folder."""
        client = self.redis()
        folder = client.config_get("dir")["dir"]
        client.shutdown()
        return folder

    def start_redis(self, folder: str) -> None:
        """Start a Redis like the demo's, on the same port and folder; this fixture stops it."""
        self.restarted_redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--dir", folder, "--appendonly", "yes", "--save", "", "--loglevel", "warning"],
        )  # fmt: skip

    def stop_restarted_redis(self) -> None:
        if self.restarted_redis is not None:
            self.restarted_redis.terminate()
            self.restarted_redis.wait(30)
            self.restarted_redis = None


def answers_until_elsewhere(
    send: Callable[[], httpx.Response], owner: str, timeout: float = ELSEWHERE_TIMEOUT_S
) -> list[httpx.Response]:
    """Every answer of `send()` up to the first one that another ingress replica than `owner`
    served, which is the last; only for requests that may be repeated."""
    deadline = time.monotonic() + timeout
    answers = [send()]
    while answers[-1].headers[SERVED_BY_HEADER] == owner:
        if time.monotonic() > deadline:
            raise AssertionError(f"every request went to {owner} for {timeout:.0f} s")
        time.sleep(0.1)
        answers.append(send())
    return answers


@contextlib.contextmanager
def stream_held_on(owner: str, url: str) -> Iterator[None]:
    """Holds a stream of `url` open on the ingress replica `owner` (streams that land on the
    other replica are closed at once): while it counts as a request in flight there, Serve's
    router sends the next requests to the other replica, which has fewer."""
    deadline = time.monotonic() + ELSEWHERE_TIMEOUT_S
    with contextlib.ExitStack() as held:
        while True:
            stream = held.enter_context(httpx.stream("GET", url, timeout=60))
            if stream.headers[SERVED_BY_HEADER] == owner:
                break
            held.close()
            if time.monotonic() > deadline:
                raise AssertionError(f"no stream went to {owner}")
        yield


def wait_for_replica_running(cluster: Cluster, request_id: str, timeout: float = 60.0) -> dict:
    """The report (with its process id) of the replica running the work of `request_id`."""
    deadline = time.monotonic() + timeout
    client = cluster.redis()
    while time.monotonic() < deadline:
        for key in client.scan_iter("catvton:replica:*"):
            value = client.get(key)
            if value is not None and (report := json.loads(value))["request_id"] == request_id:
                return report
        time.sleep(0.1)
    raise TimeoutError(f"no replica reported running {request_id}")
