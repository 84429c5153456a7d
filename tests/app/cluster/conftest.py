"""One real cluster for the whole session: `scripts/cluster_demo.sh` (a Ray head, a redis-server
with persistence, the Serve application in demo mode with 2 CPU try-on replicas and 2 ingress
replicas), started once, on loopback, and stopped at the end with everything it started.

Without redis-server, ray or redis the cluster tests are skipped, said in one line at the end of
the run, except in CI (`CI` set), where that is a failure: .ci/run installs them.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from cluster_helpers import DEMO_SCRIPT, QUEUE_BOUND, START_TIMEOUT_S, Cluster, free_port
from redis_helpers import redis_missing


def cluster_missing() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "ray not installed (pip install -r requirements-cluster.txt)"
    return redis_missing()


MISSING = cluster_missing()
if MISSING is not None and not os.environ.get("CI"):
    # Outside CI a machine without them skips this folder (in CI the imports fail loudly).
    collect_ignore_glob = ["test_*.py"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MISSING is not None:
        terminalreporter.write_line(f"cluster tests (tests/app/cluster) skipped: {MISSING}")


def both_replicas_ready(health: dict) -> bool:
    return len(health["replicas"]) == 2 and all(r["status"] == "ok" for r in health["replicas"])


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    port, redis_port = free_port(), free_port()
    process = subprocess.Popen(
        [str(DEMO_SCRIPT), "--port", str(port), "--replicas", "2", "--redis-port",
         str(redis_port), "--ingress-replicas", "2", "--max-queued-requests", str(QUEUE_BOUND),
         "--max-upload-mb", "1", "--size", "96x128",
         # Every test client is one address: the per-client share (on by default) would answer
         # 429 where these tests fill Serve's queue; the share is tested on its Redis store.
         "--max-active-per-client", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    started = threading.Event()
    running = Cluster(url=f"http://127.0.0.1:{port}", redis_port=redis_port)

    def drain() -> None:  # keep the pipe empty; remember the output for a failure's message
        assert process.stdout is not None
        for line in process.stdout:
            running.output.append(line)
            if line.startswith("serving on http://"):
                started.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not started.wait(1):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = "".join(running.output[-40:])
                raise RuntimeError(f"the demo cluster did not start:\n{tail}")
        running.wait_for_health(both_replicas_ready, timeout=300)
        from app.cluster.registry import HEARTBEAT_S  # here: collection must not need redis

        time.sleep(HEARTBEAT_S)  # every ingress replica has read the reports since
        running.wait_for_health(both_replicas_ready)
        yield running
    finally:
        running.stop_restarted_redis()
        process.send_signal(signal.SIGTERM)  # the script stops the app, Ray and Redis
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        reader.join(10)


@pytest.fixture
def tiny_server(cluster: Cluster) -> str:
    """The single process's HTTP tests, pointed at the cluster (same flags: 1 MiB upload cap)."""
    return cluster.url
