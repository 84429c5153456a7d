"""The session's cluster, as the tests see it: its URL, its Redis, and what they do to them."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[3]
DEMO_SCRIPT = REPO_ROOT / "scripts" / "cluster_demo.sh"
START_TIMEOUT_S = 600  # a loaded 2-core machine imports torch in five processes at once
QUEUE_BOUND = 2  # --max-queued-requests: per ingress replica


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
