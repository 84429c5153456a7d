"""`python -m app` as a real child process (signals, the real entry point, its stderr), on tiny
weights and the CPU; the output is collected line by line by a reader thread."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from http_helpers import TINY_SIZE_TEXT

REPO_ROOT = Path(__file__).resolve().parents[2]


class AppProcess:
    def __init__(self, process: subprocess.Popen[str], base_url: str) -> None:
        self.process = process
        self.base_url = base_url
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_until_ready(self, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("python -m app exited:\n" + "\n".join(self.lines))
            try:
                body = httpx.get(f"{self.base_url}/health", timeout=5).json()
                if body["status"] == "ok":
                    return body
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("python -m app did not get ready:\n" + "\n".join(self.lines))

    def health(self) -> httpx.Response:
        return httpx.get(f"{self.base_url}/health", timeout=10)

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait_for_exit(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(10)  # every line written before the exit
        return code

    def output(self) -> str:
        return "\n".join(self.lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def app_process(weights_dir: Path, *flags: str) -> Iterator[AppProcess]:
    """Start `python -m app` on tiny weights (CPU, fp32, 96x128, loopback); kill it if still up."""
    port = free_port()
    command = [
        *(sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)),
        *("--weights-dir", str(weights_dir), "--device", "cpu", "--dtype", "fp32"),
        *("--size", TINY_SIZE_TEXT, *flags),
    ]
    # One intra-op thread: the tiny networks gain nothing from more, and a shared 2-core machine
    # gets slower with spinning OpenMP threads (as tests/conftest.py does in-process).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
    )
    server = AppProcess(process, f"http://127.0.0.1:{port}")
    try:
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
