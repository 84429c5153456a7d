"""A bare redis-server for the tests of what the replicas share (job store, result cache, limits).

Which of redis-server and the `redis` package is missing is said in one line with how to install
it: outside CI the Redis cases skip with it, in CI (`CI` set, .ci/run installs both) they fail.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from process_helpers import free_port

START_TIMEOUT_S = 30


def redis_missing() -> str | None:
    """What this machine lacks to run redis-server and talk to it, with how to install it."""
    if shutil.which("redis-server") is None:
        return "redis-server not installed (apt-get install redis-server)"
    if importlib.util.find_spec("redis") is None:
        return "redis not installed (pip install -r requirements-cluster.txt)"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip with `reason` on a developer's machine; fail in CI, which must run everything."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must install it", pytrace=False)
    pytest.skip(reason)


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """redis-server on a free loopback port without persistence; yields its URL (db 0)."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(30)
